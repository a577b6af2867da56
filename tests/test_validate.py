"""`make validate`: the shipped projects pass, and each kind of broken file is named.

The broken cases run ``python -m scaffold.validate`` on a copy of ``projects/`` and
``example/`` (links kept as links, so they resolve inside the copy), one file broken per case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scaffold.layout import PROJECTS, ROOT
from tests.helpers.commands import make

COPY_IGNORE = shutil.ignore_patterns("__pycache__", "mlruns", "mlflow.db")


def table(stdout: str) -> dict[str, list[str]]:
    """project -> [variant, status, problems] from validate's stdout table."""
    rows = [line.split() for line in stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[1:] for row in rows}


def test_make_validate_passes_on_the_repository() -> None:
    result = make("validate")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table(result.stdout)
    projects = sorted(path.parent.name for path in PROJECTS.glob("*/MLproject"))
    assert sorted(rows) == projects, result.stdout
    assert all(row[1:] == ["ok", "0"] for row in rows.values()), result.stdout
    assert result.stderr == ""


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    for folder in ("projects", "example"):
        shutil.copytree(ROOT / folder, tmp_path / folder, symlinks=True, ignore=COPY_IGNORE)
    return tmp_path


def validate(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scaffold.validate", "--projects-dir", str(repo / "projects")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: no {old!r} to replace"
    path.write_text(text.replace(old, new, 1))


def relink(link: Path, target: str) -> None:
    link.unlink()
    os.symlink(target, link)


def test_the_copy_itself_passes(repo_copy: Path) -> None:
    result = validate(repo_copy)
    assert result.returncode == 0, result.stderr[-3000:]


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "mlproject-does-not-load": (
        lambda p: replace(p / "mnist-conda/MLproject", "entry_points:", "entry_points: ["),
        "validate: mnist-conda/MLproject: does not load: ",
    ),
    "missing-module": (
        lambda p: replace(p / "mnist-docker/MLproject", "-m mnist.train", "-m mnist.trainer"),
        "validate: mnist-docker/MLproject: entry point 'main' runs `python -m mnist.trainer`: "
        "expected mnist/trainer.py (or mnist/trainer/__main__.py) in the project folder",
    ),
    "integer-type": (
        lambda p: replace(p / "mnist-conda/MLproject", "{type: int,", "{type: integer,"),
        "validate: mnist-conda/MLproject: parameter 'epochs' of entry point 'main' has type "
        "'integer': expected one of string, float, int, path, uri",
    ),
    "conda-without-mlflow": (
        lambda p: replace(p / "mnist-conda/conda.yaml", "- mlflow==", "- mlflow-skinny=="),
        "validate: mnist-conda/conda.yaml: mlflow is not pinned in its pip list: "
        "expected mlflow==<version>",
    ),
    "dockerfile-without-base-image": (
        lambda p: replace(
            p / "elasticnet-docker/Dockerfile",
            "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}",
            "FROM python:3.11-slim",
        ),
        "validate: elasticnet-docker/Dockerfile: does not take BASE_IMAGE (first FROM is "
        "'python:3.11-slim'): expected ARG BASE_IMAGE=python:3.11-slim, then FROM ${BASE_IMAGE}",
    ),
    "dockerfile-with-credential": (
        lambda p: replace(
            p / "mnist-docker/Dockerfile",
            "ENV VIRTUAL_ENV",
            "ENV AWS_SECRET_ACCESS_KEY=placeholder\nENV VIRTUAL_ENV",
        ),
        "validate: mnist-docker/Dockerfile: ENV sets AWS_SECRET_ACCESS_KEY: credentials reach "
        "a container at run time, never through the image",
    ),
    "template-without-placeholder": (
        lambda p: replace(
            p / "mnist-k8s/kubernetes_job_template.yaml",
            '["{replaced with MLflow Project entry point command}"]',
            '["python"]',
        ),
        "validate: mnist-k8s/kubernetes_job_template.yaml: lacks MLflow's placeholder "
        '"{replaced with MLflow Project entry point command}": expected it where MLflow fills it',
    ),
    "template-fails-schema": (
        lambda p: replace(
            p / "mnist-k8s/kubernetes_job_template.yaml", "backoffLimit: 0", 'backoffLimit: "none"'
        ),
        "validate: mnist-k8s/kubernetes_job_template.yaml: the Job that MLflow renders fails "
        "Kubernetes 1.33 validation at spec.backoffLimit: 'none' is not of type",
    ),
    "dangling-link": (
        lambda p: relink(p / "elasticnet-docker/data_loader", "../../example/no_such_loader"),
        "validate: elasticnet-docker/data_loader: dangling link -> ../../example/no_such_loader: "
        "nothing there",
    ),
    "unknown-heldout": (
        lambda p: replace(
            p / "elasticnet-docker/smoke.yaml", "heldout: diabetes", "heldout: cifar"
        ),
        "validate: elasticnet-docker/smoke.yaml: heldout 'cifar' is not one of "
        "mnist, mnist-flat, diabetes",
    ),
    "readme-wrong-default": (
        lambda p: replace(
            p / "mnist-conda/README.md", "| `seed` | int | `42` |", "| seed | int | 7 |"
        ),
        "validate: mnist-conda/README.md: parameter 'seed' has default '7': expected '42' "
        "(MLproject)",
    ),
    "folder-without-mlproject": (
        lambda p: (p / "notes").mkdir(),
        "validate: notes/MLproject: missing: every folder under projects/ is an MLflow project",
    ),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_broken_file_is_named(repo_copy: Path, case: str) -> None:
    breaks, expected = BREAKS[case]
    breaks(repo_copy / "projects")
    result = validate(repo_copy)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.splitlines()
    assert any(line.startswith(expected) for line in lines), result.stderr[-3000:]
    assert all(line.startswith("validate: ") for line in lines), result.stderr[-3000:]
    project = expected.removeprefix("validate: ").split("/")[0]
    assert table(result.stdout)[project][1] == "FAIL", result.stdout
