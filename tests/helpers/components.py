"""Components a test needs (Docker, a registry, PostgreSQL, ...): skip on a laptop, fail in CI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

# Set by .ci/run: a test whose component is missing fails instead of skipping.
REQUIRE_ALL = os.environ.get("MLFLOW_STORE_REQUIRE_ALL") == "1"


def require(component: str, available: bool, how: str) -> None:
    """Skip (on a laptop) or fail (in CI) when ``component`` is not available."""
    if available:
        return
    message = f"{component} is not available: {how}"
    if REQUIRE_ALL:
        pytest.fail(message + " (MLFLOW_STORE_REQUIRE_ALL=1)")
    pytest.skip(message)


def docker_answers() -> bool:
    """True when a Docker daemon answers (``docker info``)."""
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def require_docker() -> None:
    require("Docker engine", docker_answers(), "install docker.io and start dockerd")


def docker_image(project: Path) -> str:
    """The project's docker_env image."""
    return yaml.safe_load((project / "MLproject").read_text())["docker_env"]["image"]


def require_docker_image(project: Path) -> str:
    """The project's docker_env image, which `make docker-images` builds."""
    require_docker()
    image = docker_image(project)
    present = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, check=False
    )
    require(f"image {image}", present.returncode == 0, "run make docker-images")
    return image


def require_chromium() -> str:
    """The system Chromium that Playwright drives (.ci/setup.d/30-chromium.sh installs it)."""
    from mlflow_project_store.ready_for_mlflow.screenshots import chromium

    found = chromium()
    require("Chromium", found is not None, "apt-get install chromium")
    return found or ""


def remove_images(repository: str) -> None:
    """Remove every local image of ``repository`` (whatever its tags), made by a test."""
    listed = subprocess.run(
        ["docker", "image", "ls", "--quiet", repository], capture_output=True, text=True
    )
    if ids := sorted(set(listed.stdout.split())):
        subprocess.run(["docker", "rmi", "--force", *ids], capture_output=True, check=False)
