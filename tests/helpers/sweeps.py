"""Sweeps (projects/mnist-sweep) in tests: a stand-in trial project, a stand-in cluster, and
reading a sweep's runs back.

The stand-in project (tests/projects/stand-in-trial) is a real MLflow project whose trial takes
a second: it logs a metric computed from its learning rate, or fails, or waits, as its
``behaviour`` parameter says. It exercises what the sweep does with trials (failures, Ctrl-C)
without training anything.

The stand-in cluster replaces only what needs a cluster: MLflow's Kubernetes backend renders
and submits each trial's Job with its own code, the "cluster" keeps the Job, logs the pod's
metric to the trial's run and reports the Job complete. The image build and push are replaced
too (no Docker needed), and recorded.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS
from tests.helpers.cluster import container_of
from tests.helpers.commands import VENV_BIN, mlflow_run_command, mlflow_run_env

SWEEP_PROJECT = PROJECTS / "mnist-sweep"
PARENT_TAG = "mlflow.parentRunId"
FAKE_DIGEST = "sha256:" + "cd" * 32

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


def container_env(job: dict) -> dict[str, str | None]:
    """The literal env values of a Job's container (Secret refs as None)."""
    return {item["name"]: item.get("value") for item in container_of(job)["env"]}


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


@dataclass
class StandInCluster:
    """What the sweep sent a Kubernetes cluster and Docker: Jobs, image builds and pushes."""

    tracking_uri: str
    jobs: list[dict] = field(default_factory=list)
    builds: list[dict] = field(default_factory=list)
    pushes: list[str] = field(default_factory=list)

    def build_docker_image(self, work_dir, repository_uri, base_image, run_id, build_image, **_):
        from mlflow.projects.docker import _get_docker_image_uri

        self.builds.append({"work_dir": work_dir, "base_image": base_image, "build": build_image})
        tag = _get_docker_image_uri(repository_uri, work_dir) if build_image else base_image
        return SimpleNamespace(tags=[tag], id="sha256:" + "ef" * 32)

    def push_image_to_registry(self, tag: str) -> str:
        self.pushes.append(tag)
        return FAKE_DIGEST

    def batch_api(self) -> SimpleNamespace:
        """A BatchV1Api whose Jobs complete at once, the pod having logged its metric."""

        def create_namespaced_job(namespace, body, pretty=None):
            self.jobs.append(body)
            run_id = container_env(body)["MLFLOW_RUN_ID"]
            client = MlflowClient(self.tracking_uri)
            learning_rate = float(client.get_run(run_id).data.params["learning_rate"])
            client.log_metric(run_id, "val_accuracy", stand_in_score(learning_rate))

        def read_namespaced_job_status(name, namespace, pretty=None):
            complete = SimpleNamespace(status="True", type="Complete", message="done")
            return SimpleNamespace(status=SimpleNamespace(start_time=1, conditions=[complete]))

        return SimpleNamespace(
            create_namespaced_job=create_namespaced_job,
            read_namespaced_job_status=read_namespaced_job_status,
        )

    @contextmanager
    def installed(self) -> Iterator[StandInCluster]:
        patches = [
            mock.patch("mlflow.projects.docker.build_docker_image", self.build_docker_image),
            mock.patch("mlflow.projects.docker.validate_docker_installation", lambda: None),
            mock.patch(
                "mlflow.projects.kubernetes.push_image_to_registry", self.push_image_to_registry
            ),
            mock.patch("kubernetes.config.load_kube_config", lambda context=None: None),
            mock.patch("kubernetes.client.BatchV1Api", self.batch_api),
        ]
        with ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            yield self
