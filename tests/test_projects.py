"""Smoke tests: `mlflow run` every project under projects/ with its own tiny configuration.

Projects are discovered, not listed: a new folder with an MLproject and a smoke.yaml is
tested without editing this file.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow.pyfunc
import pytest
import yaml

from conftest import PROJECTS_DIR, ROOT, mlflow_run, only_run, project_dirs, require_docker_image
from heldout import HELDOUT

MNIST_CONDA = PROJECTS_DIR / "mnist-conda"


def smoke_config(project: Path) -> dict:
    path = project / "smoke.yaml"
    assert path.is_file(), f"{project.name} has no smoke.yaml: every project declares its smoke run"
    config = yaml.safe_load(path.read_text())
    assert config["heldout"] in HELDOUT, f"{path}: heldout must be one of {sorted(HELDOUT)}"
    return config


def smoke_params() -> list:
    """One pytest param per project, carrying the markers its smoke.yaml asks for."""
    params = []
    for project in project_dirs():
        markers = yaml.safe_load((project / "smoke.yaml").read_text()).get("markers", [])
        marks = [getattr(pytest.mark, name) for name in markers]
        params.append(pytest.param(project, id=project.name, marks=marks))
    return params


def assert_smoke_run(project: Path, tracking_uri: str, config: dict) -> None:
    """The run FINISHED with the params given and the metrics expected; its model predicts."""
    run = only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    for key, value in config["parameters"].items():
        assert run.data.params[key] == str(value), key
    missing = set(config["metrics"]) - set(run.data.metrics)
    assert not missing, f"metrics not logged: {sorted(missing)}"
    if "--build-image" in config.get("run_args", []):
        image = run.data.tags["mlflow.docker.image.uri"]
        assert image.startswith(f"{project.name}"), image
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    score = HELDOUT[config["heldout"]](model)
    assert score >= config["min_score"], f"held-out {config['heldout']} score {score:.3f}"


def test_projects_are_found() -> None:
    assert MNIST_CONDA in project_dirs()


@pytest.mark.parametrize("project", smoke_params())
def test_smoke_run(project: Path, tracking_uri: str, tmp_path: Path) -> None:
    """`mlflow run` the project as its smoke.yaml says (Docker projects: --build-image)."""
    config = smoke_config(project)
    run_args = config.get("run_args", [])
    if "--build-image" in run_args:
        require_docker_image(project)
        # MLflow mounts only the run's artifact folder; MLflow 3 writes the logged model
        # beside it, under the experiment's artifact root, so that is mounted too.
        artifacts = tmp_path / "mlruns"
        run_args = [*run_args, "-A", f"v={artifacts}:{artifacts}"]
    result = mlflow_run(
        project,
        tracking_uri,
        config["parameters"],
        env_manager=config.get("env_manager", "local"),
        extra_args=run_args,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(project, tracking_uri, config)


@pytest.mark.uv
@pytest.mark.slow
def test_mnist_conda_through_uv(tracking_uri: str, tmp_path: Path) -> None:
    """MLflow converts conda.yaml (python + pip list) into a uv venv: the list is complete."""
    config = smoke_config(MNIST_CONDA)
    result = mlflow_run(
        MNIST_CONDA, tracking_uri, config["parameters"], env_manager="uv", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(MNIST_CONDA, tracking_uri, config)


@pytest.mark.conda
@pytest.mark.slow
def test_mnist_conda_through_conda(tracking_uri: str, tmp_path: Path) -> None:
    """The conda path itself. Skipped without conda, also in CI: no conda channel is
    reachable there, so the uv test above is what proves conda.yaml's list in CI."""
    if shutil.which("conda") is None:
        pytest.skip("conda is not on PATH")
    config = smoke_config(MNIST_CONDA)
    result = mlflow_run(
        MNIST_CONDA, tracking_uri, config["parameters"], env_manager="conda", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(MNIST_CONDA, tracking_uri, config)


def test_project_symlinks_resolve() -> None:
    """Shared code reaches projects through relative links: each must resolve inside the repo."""
    links = [p for p in PROJECTS_DIR.rglob("*") if p.is_symlink()]
    assert links, "no project links to the shared data_loader"
    for link in links:
        target = link.resolve()
        assert target.exists(), f"{link} -> {link.readlink()} does not resolve"
        assert not link.readlink().is_absolute(), f"{link} must be a relative link"
        assert ROOT in target.parents, f"{link} points outside the repository"


@pytest.mark.parametrize("project", project_dirs(), ids=lambda p: p.name)
def test_project_reaches_shared_data_loader(project: Path) -> None:
    link = project / "data_loader"
    if link.exists():
        assert link.resolve() == ROOT / "example" / "data_loader"


def test_new_project_from_template(tracking_uri: str, tmp_path: Path) -> None:
    """`make new-project` copies example/project; the copy runs with `mlflow run` and passes
    the same checks as every project (it is removed afterwards)."""
    name = f"template-check-{uuid.uuid4().hex[:8]}"
    project = PROJECTS_DIR / name
    try:
        made = subprocess.run(
            ["make", "--no-print-directory", "new-project", f"NAME={name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        assert f"name: {name}" in (project / "MLproject").read_text()
        assert (project / "data_loader").resolve() == ROOT / "example" / "data_loader"
        config = smoke_config(project)
        result = mlflow_run(project, tracking_uri, config["parameters"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert_smoke_run(project, tracking_uri, config)
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_new_project_rejects_a_bad_name() -> None:
    made = subprocess.run(
        ["make", "--no-print-directory", "new-project", "NAME=My Project"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode != 0
    assert "make new-project: NAME 'My Project' must be lowercase" in made.stderr
