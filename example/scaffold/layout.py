"""The repository's conventions, each defined once: paths, variants, links, image names.

A project family ``NAME`` has up to three variant folders under ``projects/``:
``NAME-conda`` (a ``conda.yaml`` environment), ``NAME-docker`` (``docker_env``, built with
``mlflow run --build-image``) and ``NAME-k8s`` (``docker_env`` plus MLflow's Kubernetes
backend files). The first variant present, in that order, holds the code as the package
``PACKAGE`` (``NAME`` with dashes as underscores); each other variant holds a relative link
``PACKAGE -> ../NAME-<first>/PACKAGE``. Every project holds the relative links
``<shared> -> ../../example/<shared>`` to the shared packages it uses. MLflow copies a project
folder with its links followed, so the code reaches containers and Kubernetes pods too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = ROOT / "projects"
EXAMPLE = ROOT / "example"
TEMPLATES = EXAMPLE / "project"

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


def package_name(name: str) -> str:
    """The code package of project family ``name``: ``my-exp`` -> ``my_exp``."""
    return name.replace("-", "_")


def image_name(name: str) -> str:
    """The dependency image of project family ``name``, built by ``make docker-images``."""
    return f"mlflow-store/{name}-deps:1"


def folder_name(name: str, variant: str) -> str:
    return f"{name}-{variant}"


def split_folder(folder: str) -> tuple[str, str | None]:
    """``mnist-docker`` -> (``mnist``, ``docker``); a folder without a variant suffix -> None."""
    for variant in VARIANTS:
        if folder.endswith(f"-{variant}"):
            return folder.removesuffix(f"-{variant}"), variant
    return folder, None
