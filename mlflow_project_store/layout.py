"""The repository's paths and conventions, each defined once.

A project family ``NAME`` has up to two folders under ``projects/``, one per way of running:
``NAME-conda`` (a ``conda.yaml`` environment: local, uv or conda) and ``NAME-docker``
(``docker_env``, built with ``mlflow run --build-image``), which also holds MLflow's Kubernetes
backend files when the family runs on a cluster (the ``k8s`` variant of ``make new-project``).
The first folder present holds the code as the package ``PACKAGE`` (``NAME`` with dashes as
underscores); the other holds a relative link ``PACKAGE -> ../NAME-conda/PACKAGE``. Every
project holds the relative links ``<shared> -> ../../example/<shared>`` to the shared packages
it uses. MLflow copies a project folder with its links followed, and ``make export`` turns
them into copies, so a project runs wherever it is taken.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# make passes its own folder's projects (PROJECTS_DIR): the tools may be installed from another
# clone of the repository than the one make runs in.
PROJECTS = Path(os.environ.get("PROJECTS_DIR") or ROOT / "projects")
EXAMPLE = ROOT / "example"
TEMPLATES = EXAMPLE / "project"
STATE = ROOT / ".run"  # what make targets write (rendered Kubernetes configs, registry pid)

# Ways of running: the folder suffixes, and the variants make new-project takes.
FOLDER_VARIANTS = ("conda", "docker")
VARIANTS = ("conda", "docker", "k8s")
TEMPLATE_NAMES = ("pytorch", "sklearn")
SHARED_PACKAGES = ("data_loader", "project_tools")
NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

# What MLflow accepts as a parameter type (mlflow/projects/_project_spec.py).
MLFLOW_PARAM_TYPES = ("string", "float", "int", "path", "uri")
# Environment file of each MLproject environment key.
ENV_KEYS = ("conda_env", "python_env", "docker_env")
# The placeholders MLflow's Kubernetes backend fills in a Job template.
K8S_PLACEHOLDERS = (
    "{replaced with MLflow Project name}",
    "{replaced with URI of Docker image created during Project execution}",
    "{replaced with MLflow Project entry point command}",
)
# A Kubernetes config file, and the Job template it names (relative to the project folder).
K8S_CONFIG = re.compile(r"kubernetes(_\w+)?_config\.json")
K8S_FILES = ("kubernetes_config.json", "kubernetes_job_template.yaml")
KUBERNETES_VERSION = "1.33"
# Held-out data a smoke run's model is scored on (tests/helpers/heldout.py scores each).
HELDOUT = ("mnist", "mnist-flat", "diabetes")
# Variables that hold credentials: never in an image, a Dockerfile or a committed file.
CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
# What every project's .dockerignore keeps out of its images (make validate checks each).
DOCKERIGNORED = (".git", ".env", "*.pem", "mlruns", "mlflow.db")


def package_name(name: str) -> str:
    """The code package of project family ``name``: ``my-exp`` -> ``my_exp``."""
    return name.replace("-", "_")


def image_name(name: str) -> str:
    """The dependency image of project family ``name``, built by ``make docker-images``."""
    return f"mlflow-store/{name}-deps:1"


def folder_name(name: str, variant: str) -> str:
    """The folder of ``variant``: ``k8s`` lives in the docker folder, beside its Dockerfile."""
    return f"{name}-{'docker' if variant == 'k8s' else variant}"


def split_folder(folder: str) -> tuple[str, str | None]:
    """``mnist-docker`` -> (``mnist``, ``docker``); a folder without a variant suffix -> None."""
    for variant in FOLDER_VARIANTS:
        if folder.endswith(f"-{variant}"):
            return folder.removesuffix(f"-{variant}"), variant
    return folder, None


# How the tools name a path that is not a regular file (make validate, predict's inputs).
FILE_TYPES = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
