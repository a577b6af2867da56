"""Projects under projects/ and their smoke runs, as each project's smoke.yaml declares."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from scaffold.layout import PROJECTS
from tests.helpers.commands import mlflow_run, only_run
from tests.helpers.components import require_docker_image
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
    """One pytest param per project, carrying the markers its smoke.yaml asks for; a project
    whose smoke.yaml names the test that runs it (``covered_by``) is left to that test."""
    params = []
    for project in project_dirs(root):
        config = yaml.safe_load((project / "smoke.yaml").read_text())
        if "covered_by" in config:
            continue
        markers = config.get("markers", [])
        marks = [getattr(pytest.mark, name) for name in markers]
        params.append(pytest.param(project, id=project.name, marks=marks))
    return params


def smoke_run(
    project: Path, tracking_uri: str, workdir: Path, env_manager: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`mlflow run` the project from ``workdir`` as its smoke.yaml says."""
    config = smoke_config(project)
    run_args = config.get("run_args", [])
    if "--build-image" in run_args:
        require_docker_image(project)
        # MLflow mounts only the run's artifact folder; MLflow 3 writes the logged model
        # beside it, under the experiment's artifact root, so that is mounted too.
        artifacts = workdir / "mlruns"
        run_args = [
            *run_args,
            "-A",
            f"v={artifacts}:{artifacts}",
            "-A",
            f"user={os.getuid()}:{os.getgid()}",
        ]
    return mlflow_run(
        project,
        tracking_uri,
        config["parameters"],
        env_manager=env_manager or config.get("env_manager", "local"),
        extra_args=run_args,
        cwd=workdir,
    )


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
