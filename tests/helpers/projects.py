"""Projects under projects/, and their smoke runs as each project's smoke.yaml declares: an
exported copy, run from another folder in an environment that holds only what it declares."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mlflow_project_store.docker_images import base_image
from mlflow_project_store.layout import PROJECTS
from tests.helpers.commands import make, only_run
from tests.helpers.components import require_docker
from tests.helpers.heldout import HELDOUT, load_model


def project_dirs(root: Path = PROJECTS) -> list[Path]:
    """Every project folder under ``root`` (a folder with an MLproject file)."""
    return sorted(p.parent for p in root.glob("*/MLproject"))


def smoke_config(project: Path) -> dict:
    path = project / "smoke.yaml"
    assert path.is_file(), f"{project.name} has no smoke.yaml: every project declares its smoke run"
    config = yaml.safe_load(path.read_text())
    assert config["heldout"] in HELDOUT, f"{path}: heldout must be one of {sorted(HELDOUT)}"
    return config


def smoke_params(root: Path = PROJECTS) -> list:
    """One pytest param per project, carrying the markers its smoke.yaml asks for."""
    params = []
    for project in project_dirs(root):
        config = yaml.safe_load((project / "smoke.yaml").read_text())
        marks = [getattr(pytest.mark, name) for name in config.get("markers", [])]
        params.append(pytest.param(project, id=project.name, marks=marks))
    return params


def export(project: Path, dest: Path) -> Path:
    """``make export`` of ``project`` into ``dest``, as a user makes it."""
    result = make("export", PROJECT=str(project), DEST=str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    return dest


def launcher_env(launcher: Path, tracking_uri: str) -> dict[str, str]:
    """This environment, less this repository's: PATH leads to ``launcher`` (a venv holding
    only mlflow and uv), no PYTHONPATH, no virtualenv of ours."""
    keep = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PATH")}
    path = f"{launcher}:/usr/local/bin:/usr/bin:/bin"
    return {**keep, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri}


def run_alone(
    project: Path,
    launcher: Path,
    tracking_uri: str,
    workdir: Path,
    params: dict[str, object],
    run_args: list[str],
    env_manager: str | None = "uv",
    timeout: int = 1500,
) -> subprocess.CompletedProcess[str]:
    """``mlflow run`` of ``project`` (a path or a git URL) by the launcher's mlflow, from
    ``workdir``, into experiment ``tests``; a Docker project first gets its dependency image
    from its own Dockerfile (Docker's layer cache makes that seconds)."""
    command = [str(launcher / "mlflow"), "run", str(project), "--experiment-name", "tests"]
    if "--build-image" in run_args:
        artifacts = workdir / "mlruns"
        artifacts.mkdir(exist_ok=True)
        # MLflow mounts only the run's artifact folder; MLflow 3 writes the logged model
        # beside it, under the experiment's artifact root, so that is mounted too.
        run_args = [*run_args, "-A", f"v={artifacts}:{artifacts}"]
        run_args += ["-A", f"user={os.getuid()}:{os.getgid()}"]
    elif env_manager:
        command += ["--env-manager", env_manager]
    command += run_args
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return subprocess.run(
        command,
        cwd=workdir,
        env=launcher_env(launcher, tracking_uri),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build_dependency_image(project: Path) -> None:
    """The docker_env image, built from ``project``'s own Dockerfile as a user would (on the
    base image `make docker-images` picks); Docker's layer cache makes that seconds."""
    require_docker()
    image = yaml.safe_load((project / "MLproject").read_text())["docker_env"]["image"]
    result = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={base_image()}",
            "-t",
            image,
            str(project),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def assert_smoke_run(project: Path, tracking_uri: str) -> float:
    """The run FINISHED with the params given and the metrics expected; its model scores at
    least ``min_score`` on held-out data. Returns the score."""
    config = smoke_config(project)
    run = only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    for key, value in config["parameters"].items():
        assert run.data.params[key] == str(value), key
    missing = set(config["metrics"]) - set(run.data.metrics)
    assert not missing, f"metrics not logged: {sorted(missing)}"
    if "--build-image" in config.get("run_args", []):
        image = run.data.tags["mlflow.docker.image.uri"]
        assert image.startswith(f"{project.name}"), image
    # A sweep's run points at its best trial's model; any other run logged its own.
    model_uri = run.data.tags.get("best_model_uri", f"runs:/{run.info.run_id}/model")
    model = load_model(model_uri)
    score = HELDOUT[config["heldout"]](model)
    assert score >= config["min_score"], f"held-out {config['heldout']} score {score:.3f}"
    return score
