"""``make docker-images``: build the dependency image of every ``projects/*/Dockerfile``.

    python -m mlflow_project_store.docker_images       (BASE_IMAGE from the environment)

Each image is named by its project's ``MLproject`` (``docker_env.image``) and built from the
project folder, whose ``.dockerignore`` Docker honours. The base image is ``BASE_IMAGE``; when
that is empty, the official ``python:3.11-slim`` where Docker has it or Docker Hub answers, else
the stand-in that ``make base-image`` builds from Debian packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.project_tools.cli import fail

PROG = "make docker-images"
OFFICIAL_BASE = "python:3.11-slim"
STAND_IN_BASE = "mlflow-store/python:3.11-bookworm"


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


def base_image() -> str:
    chosen = os.environ.get("BASE_IMAGE", "")
    if chosen:
        return chosen
    official = docker("image", "inspect", OFFICIAL_BASE).returncode == 0
    if official or docker("image", "inspect", STAND_IN_BASE).returncode != 0:
        return OFFICIAL_BASE
    return STAND_IN_BASE


def image_of(project: Path) -> str:
    try:
        return yaml.safe_load((project / "MLproject").read_text())["docker_env"]["image"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        fail(PROG, f"{project}/MLproject names no docker_env image", status=1)


def main() -> int:
    if docker("info").returncode != 0:
        fail(
            PROG,
            "no Docker daemon answers (docker info failed): start dockerd or Docker Desktop",
            1,
        )
    base = base_image()
    for dockerfile in sorted(PROJECTS.glob("*/Dockerfile")):
        project, image = dockerfile.parent, image_of(dockerfile.parent)
        print(f"docker build {project.relative_to(PROJECTS.parent)} -> {image} (BASE_IMAGE={base})")
        built = docker(
            "build",
            "--quiet",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            image,
            str(project),
        )
        if built.returncode != 0:
            reason = (built.stderr.strip().splitlines() or ["no output"])[-1]
            fail(PROG, f"building {image} from {dockerfile} failed: {reason}", status=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
