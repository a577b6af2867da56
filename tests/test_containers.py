"""The container path: dependency-only Dockerfiles, pins that agree, no secret in any image or
committed file, and `make run-docker` failing fast without a Docker engine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from scaffold.layout import PROJECTS, ROOT
from tests.helpers.commands import make, one_line_reason
from tests.helpers.components import docker_image, require_docker_image
from tests.helpers.projects import project_dirs

AWS_KEY_ID = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}")
AWS_SECRET = re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}", re.IGNORECASE)
PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==([^\s\\]+)", re.MULTILINE)
DOCKER_PROJECTS = [
    p for p in project_dirs() if "docker_env" in yaml.safe_load((p / "MLproject").read_text())
]


def pins(text: str) -> dict[str, str]:
    return {name.split("[")[0].lower(): version for name, version in PIN.findall(text)}


def dockerfile_of(project: Path) -> Path:
    """The Dockerfile that builds the project's docker_env image (mnist-k8s shares one)."""
    image = docker_image(project)
    owners = [
        p for p in DOCKER_PROJECTS if (p / "Dockerfile").exists() and docker_image(p) == image
    ]
    assert owners, f"no projects/*/Dockerfile builds {image}"
    return owners[0] / "Dockerfile"


@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_dockerfile_holds_dependencies_only(project: Path) -> None:
    text = dockerfile_of(project).read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "FROM ${BASE_IMAGE}" in text
    assert not re.search(r"^\s*(COPY|ADD)\b", text, re.MULTILINE), "code arrives by --build-image"
    assert not re.search(r"^\s*ENV\s+AWS_", text, re.MULTILINE), "credentials arrive at run time"


@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_container_pins_agree_with_the_repository(project: Path) -> None:
    repository = pins((ROOT / "requirements.txt").read_text())
    image = pins(dockerfile_of(project).read_text())
    assert image, "the Dockerfile pins nothing"
    for name, version in image.items():
        assert repository.get(name, version) == version, f"{name}=={version} vs requirements.txt"


def test_conda_env_pins_agree_with_the_repository() -> None:
    repository = pins((ROOT / "requirements.txt").read_text())
    for conda in PROJECTS.glob("*/conda.yaml"):
        for name, version in pins(conda.read_text()).items():
            assert repository.get(name, version) == version, f"{conda}: {name}=={version}"


def test_no_secret_in_the_repository() -> None:
    """Tracked files and untracked ones that git does not ignore (.env is ignored)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        path = ROOT / name
        if path.is_file() and not path.is_symlink() and path.suffix not in (".gz", ".png"):
            text = path.read_text(errors="ignore")
            assert not AWS_KEY_ID.search(text), f"{name} holds an AWS access key id"
            assert not AWS_SECRET.search(text), f"{name} holds an AWS secret key"


@pytest.mark.docker
@pytest.mark.parametrize("project", DOCKER_PROJECTS, ids=lambda p: p.name)
def test_no_secret_in_image_history_or_environment(project: Path) -> None:
    image = require_docker_image(project)
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    environment = subprocess.run(
        [
            "docker",
            "image",
            "inspect",
            "--format",
            "{{range .Config.Env}}{{println .}}{{end}}",
            image,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for text in (history, environment):
        assert not AWS_KEY_ID.search(text) and not AWS_SECRET.search(text)
    assert not [line for line in environment.splitlines() if line.startswith("AWS_")]


def test_run_docker_without_daemon_fails_fast(tmp_path: Path) -> None:
    result = make("run-docker", DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert "no Docker daemon answers" in one_line_reason(result, "make run-docker:")
