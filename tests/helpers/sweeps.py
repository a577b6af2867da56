"""Sweeps (projects/mnist-sweep) in tests: a stand-in trial project, and reading a sweep's runs
back.

The stand-in project (tests/projects/stand-in-trial) is a real MLflow project whose trial takes
a second: it logs a metric computed from its learning rate, or fails, or waits, as its
``behaviour`` parameter says. It exercises what the sweep does with trials (failures, Ctrl-C)
without training anything.

(The sweep's Kubernetes trials run on the stand-in cluster of tests/helpers/cluster.py.)
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS
from tests.helpers.commands import VENV_BIN, mlflow_run_command, mlflow_run_env

SWEEP_PROJECT = PROJECTS / "mnist-sweep"
PARENT_TAG = "mlflow.parentRunId"

STAND_INS = Path(__file__).parents[1] / "projects"


def stand_in_score(learning_rate: float) -> float:
    """The stand-in trial's val_accuracy for ``learning_rate`` (the formula in trial.py)."""
    return 1 - abs(math.log10(learning_rate) - math.log10(3e-3)) / 10


def stand_in_project(workdir: Path, variant: str = "") -> Path:
    """A copy in ``workdir`` of ``tests/projects/stand-in-trial[-variant]``: ``uv`` (its
    conda.yaml), ``docker`` (on the scikit-learn dependency image); the trial writes into
    its own folder (pids, a failure marker), so each test gets a copy."""
    name = f"stand-in-trial-{variant}" if variant else "stand-in-trial"
    return Path(shutil.copytree(STAND_INS / name, workdir / name, symlinks=False))


def sweep_command(
    experiment: str, params: dict[str, object], env_manager: str = "local"
) -> list[str]:
    """``mlflow run`` of projects/mnist-sweep, as a user runs it."""
    return mlflow_run_command(SWEEP_PROJECT, params, env_manager, experiment)


def sweep_env(tracking_uri: str) -> dict[str, str]:
    """This environment as the sweep's: the tracking store, the venv's `mlflow` on PATH, and
    one thread per trial (trials run side by side on few cores)."""
    return mlflow_run_env(tracking_uri) | {"OMP_NUM_THREADS": "1"}


def run_sweep(
    tracking_uri: str, experiment: str, params: dict[str, object], cwd: Path, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """The sweep from ``cwd`` (where a local store puts its artifacts, under ``mlruns``)."""
    return subprocess.run(
        sweep_command(experiment, params),
        env=sweep_env(tracking_uri),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sweep_here(
    params: dict[str, object], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> int | str | None:
    """The sweep's ``main`` in this process, in experiment ``sweep`` with ``workdir`` as its
    folder; return its exit status. The trials are `mlflow run` processes all the same; what
    is saved is starting `mlflow run` and the sweep themselves (seconds each)."""
    from mnist_sweep import search, sweep

    monkeypatch.chdir(workdir)  # a local store's artifacts go under ./mlruns
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")  # `mlflow run`
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweep")
    monkeypatch.setattr(search, "POLL_SECONDS", 0.2)
    try:
        return sweep.main([f"--{key.replace('_', '-')}={value}" for key, value in params.items()])
    except SystemExit as exc:  # an error, as one line on stderr
        return exc.code


@contextmanager
def interrupted_sweep(
    tracking_uri: str, experiment: str, params: dict[str, object], folder: Path
) -> Iterator[subprocess.Popen]:
    """A sweep started in its own process group; yields it once ``params['trials']`` trials
    wait (their pids in ``folder/pids``), then Ctrl-C's it as a terminal does (SIGINT to the
    whole group) and waits for it."""
    process = subprocess.Popen(
        sweep_command(experiment, params),
        env=sweep_env(tracking_uri),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: len(list((folder / "pids").glob("*"))) >= params["max_parallel"], 120)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def sweep_error(stderr: str) -> str:
    """The one line the sweep refused or failed with (``mnist_sweep.sweep: error: ...``) in
    ``stderr``, the output of a sweep among MLflow's log lines; asserts that it is one line,
    the only one, with no traceback."""
    from mnist_sweep.sweep import PROG

    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not done within {timeout} s"
        time.sleep(0.5)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, dead but not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True)
class SweepRuns:
    parent: Run
    children: list[Run]


def sweep_runs(tracking_uri: str, experiment: str) -> SweepRuns:
    """The sweep's run and its trials' runs (the runs tagged with it as their parent)."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1, [run.info.run_name for run in parents]
    children = [run for run in runs if run.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "a run that is neither the sweep nor its trial"
    return SweepRuns(parents[0], children)
