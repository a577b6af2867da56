"""Shared fixtures and helpers: running `mlflow run` against a throwaway tracking store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
PROJECTS_DIR = ROOT / "projects"
VENV_BIN = Path(sys.executable).parent
# Set by .ci/run: a test whose component is missing fails instead of skipping.
REQUIRE_ALL = os.environ.get("MLFLOW_STORE_REQUIRE_ALL") == "1"
pytest_plugins = ["conftest_servers"]  # S3 endpoint, tracking server, trained-model fixtures


def require(component: str, available: bool, how: str) -> None:
    """Skip (on a laptop) or fail (in CI) when ``component`` is not available."""
    if available:
        return
    message = f"{component} is not available: {how}"
    if REQUIRE_ALL:
        pytest.fail(message + " (MLFLOW_STORE_REQUIRE_ALL=1)")
    pytest.skip(message)


def assert_one_line_error(
    parse_args: Callable[[list[str]], object], argv: list[str], message: str, stderr_of
) -> None:
    """``parse_args(argv)`` exits 2 with exactly one stderr line that contains ``message``."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    stderr = stderr_of()
    assert stderr.count("\n") == 1 and message in stderr, stderr


def docker_answers() -> bool:
    """True when a Docker daemon answers (``docker info``)."""
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def require_docker() -> None:
    require("Docker engine", docker_answers(), "install docker.io and start dockerd")


def require_docker_image(project: Path) -> str:
    """The project's docker_env image, which `make docker-images` builds."""
    require_docker()
    image = yaml.safe_load((project / "MLproject").read_text())["docker_env"]["image"]
    present = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, check=False
    )
    require(f"image {image}", present.returncode == 0, "run make docker-images")
    return image


def project_dirs() -> list[Path]:
    """Every project folder under projects/ (a folder with an MLproject file)."""
    return sorted(p.parent for p in PROJECTS_DIR.glob("*/MLproject"))


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store, also this process's tracking URI for the test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def mlflow_run(
    project: Path,
    tracking_uri: str,
    params: dict[str, object] | None = None,
    env_manager: str = "local",
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
    timeout: int = 1200,
    experiment: str = "tests",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``mlflow run`` on ``project`` as a user would, in ``experiment``.

    ``env`` replaces the whole client environment (the tracking URI and PATH are still set).
    """
    command = [
        str(VENV_BIN / "mlflow"),
        "run",
        str(project),
        "--env-manager",
        env_manager,
        "--experiment-name",
        experiment,
        *(extra_args or []),
    ]
    for key, value in (params or {}).items():
        command += ["-P", f"{key}={value}"]
    base = os.environ if env is None else env
    env = {
        **base,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
    }
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def only_run(tracking_uri: str) -> Run:
    """The single run that a test's `mlflow run` recorded in experiment ``tests``."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tests")
    assert experiment is not None, "mlflow run created no experiment 'tests'"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0]
