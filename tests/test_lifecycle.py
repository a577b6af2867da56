"""A training run's life against real processes: stopped by a signal (KILLED, checkpoint
logged, no process left, also for a Docker project, the data-parallel launcher and a sweep's
trials), resumed into the same run, a tracking server that is down at start or restarted
mid-run, a loss that diverges, and every entry-point parameter checked before any work
(property-based, with hypothesis)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS, ROOT
from mlflow_project_store.ready_for_mlflow.servers import (
    S3,
    client_env,
    free_port,
    launch,
    mlflow_server_command,
    start,
    stop,
)
from mnist import train as mnist_train
from tests.helpers.commands import (
    VENV_BIN,
    in_project,
    marked_processes,
    mlflow_run,
    mlflow_run_command,
    one_line_reason,
    start_mlflow_run,
    wait_until,
)
from tests.helpers.components import require_docker_image
from tests.helpers.sweeps import SWEEP_PROJECT, pid_alive, stand_in_project, sweep_runs

MNIST_CONDA = PROJECTS / "mnist-conda"
FOREVER = {"epochs": 1_000_000_000, "batch_size": 256, "device": "cpu"}
# From the signal to: no process left, the run KILLED (with its checkpoint where the training
# keeps one). The training itself stops within a step; the Stopper's forced exit is at 30 s.
STOP_BOUND_S = 10
# The label of the containers a test starts (`docker run --label`), valued with its mark.
CONTAINER_LABEL = "lifecycle-mark"
# mnist-conda's training under a shell that stays (tests/projects/under-a-shell).
UNDER_A_SHELL = Path(__file__).parent / "projects" / "under-a-shell"


def top_level_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = [
        run
        for run in client.search_runs([found.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    return runs[0] if len(runs) == 1 else None


def containers(mark: str) -> list[str]:
    """The containers, running or not, labelled with ``mark``."""
    found = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={CONTAINER_LABEL}={mark}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return found.stdout.split()


@contextmanager
def ended(process: subprocess.Popen, mark: str, docker: bool = False) -> Iterator[None]:
    """Whatever happens in the block, ``process`` (an `mlflow run` leading its own group), every
    process marked ``mark`` and, with ``docker``, every container labelled with it end after."""
    try:
        yield
    finally:
        stop(process)
        for pid in marked_processes(mark):
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if docker and (left := containers(mark)):
            subprocess.run(["docker", "rm", "--force", *left], capture_output=True, timeout=60)


def wait_for_steps(tracking_uri: str, process: subprocess.Popen, log: Path, experiment: str) -> str:
    """The id of the run, once it has a step metric (the first is sent at once)."""
    client = MlflowClient(tracking_uri)

    def stepped() -> str | None:
        assert process.poll() is None, log.read_text()[-3000:]
        run = top_level_run(client, experiment)
        if run is None:
            return None
        history = client.get_metric_history(run.info.run_id, "train_loss_step")
        return run.info.run_id if history else None

    return wait_until(stepped, 300, "a train_loss_step metric")


@contextmanager
def training(
    tracking_uri: str,
    tmp_path: Path,
    experiment: str,
    params: dict,
    project: Path = MNIST_CONDA,
    extra_args: list[str] | None = None,
) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """`mlflow run` of ``project``: it, its mark and run id once a step metric exists. It and
    every process it started end with the block."""
    mark = uuid.uuid4().hex
    log = tmp_path / "run.log"
    process = start_mlflow_run(project, tracking_uri, params, log, mark, experiment, extra_args)
    with ended(process, mark):
        yield process, mark, wait_for_steps(tracking_uri, process, log, experiment)


def assert_stopped(client: MlflowClient, mark: str, run_id: str, signalled: float) -> None:
    """Within STOP_BOUND_S of the signal (sent at ``signalled``, monotonic): every process of
    the run ended and the run is KILLED."""

    def stopped() -> bool:
        return not marked_processes(mark) and client.get_run(run_id).info.status == "KILLED"

    left = signalled + STOP_BOUND_S - time.monotonic()
    wait_until(stopped, left, f"every process ended and the run KILLED, {STOP_BOUND_S} s after")


def assert_stopped_killed(
    client: MlflowClient,
    process: subprocess.Popen,
    mark: str,
    run_id: str,
    log: Path,
    signalled: float,
) -> None:
    """:func:`assert_stopped`, the checkpoint logged and the training's own line."""
    assert_stopped(client, mark, run_id, signalled)
    assert process.wait(5) != 0
    names = [a.path for a in client.list_artifacts(run_id, "checkpoint")]
    assert names == ["checkpoint/checkpoint.pt"], log.read_text()[-3000:]
    text = log.read_text()
    assert f"is KILLED with its checkpoint; continue it with -P resume_from={run_id}" in text
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGTERM, False),
        (signal.SIGTERM, True),
        (signal.SIGINT, False),
        (signal.SIGINT, True),
    ],
    ids=["SIGTERM-mlflow-run", "SIGTERM-group", "SIGINT-mlflow-run", "SIGINT-group (Ctrl-C)"],
)
def test_signal_stops_the_run_killed_with_its_checkpoint(
    signum: int, to_group: bool, tracking_server, tmp_path: Path
) -> None:
    experiment = f"signal-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_server.url)
    with training(tracking_server.url, tmp_path, experiment, FOREVER) as (process, mark, run_id):
        signalled = time.monotonic()
        (os.killpg if to_group else os.kill)(process.pid, signum)
        assert_stopped_killed(client, process, mark, run_id, tmp_path / "run.log", signalled)


@pytest.mark.slow
def test_a_training_under_a_shell_stops_with_mlflow_run(tracking_uri: str, tmp_path: Path) -> None:
    """SIGTERM ends `mlflow run` at once, and the shell that stays between it and python is
    left waiting: python notices the `mlflow run` above the shell gone, saves its checkpoint
    and ends its run KILLED, and the shell ends with it; no process is left."""
    client = MlflowClient(tracking_uri)
    params = {"epochs": 20}
    with training(tracking_uri, tmp_path, "shell", params, project=UNDER_A_SHELL) as started:
        process, mark, run_id = started
        assert len(marked_processes(mark)) == 3  # mlflow run, bash, python
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert_stopped_killed(client, process, mark, run_id, tmp_path / "run.log", signalled)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_mlflow_run_stops_the_docker_container(
    signum: int, tracking_server, tmp_path: Path
) -> None:
    """With the store-docker backend: SIGTERM to `mlflow run` alone cancels the run (the docker
    client forwards it to the container); SIGKILL, which no handler sees, ends the docker
    client by its parent-death signal, which forwards SIGTERM too. Either way the training in
    the container stops KILLED with its checkpoint, and the container is gone."""
    project = PROJECTS / "mnist-docker"
    require_docker_image(project)
    mark = uuid.uuid4().hex
    log = tmp_path / "run.log"
    experiment = f"docker-signal-{mark[:8]}"
    # 20 epochs: minutes of training, enough to be signalled mid-run, bounded if left over.
    params = {"epochs": 20, "batch_size": 256, "device": "cpu"}
    docker_args = ["-A", "network=host", "-A", f"label={CONTAINER_LABEL}={mark}"]
    extra = ["--backend", "store-docker", "--build-image", *docker_args]
    command = mlflow_run_command(project, params, experiment=experiment, extra_args=extra)
    env = client_env(tracking_server.url, LIFECYCLE_MARK=mark)
    process = start(command, log, env, cwd=tmp_path)
    client = MlflowClient(tracking_server.url)
    with ended(process, mark, docker=True):
        run_id = wait_for_steps(tracking_server.url, process, log, experiment)
        assert containers(mark), "no container labelled for this run"
        signalled = time.monotonic()
        os.kill(process.pid, signum)
        assert_stopped_killed(client, process, mark, run_id, log, signalled)
        wait_until(lambda: not containers(mark), 10, "the container removed")


@pytest.mark.slow
def test_sigterm_to_mlflow_run_stops_every_rank(tracking_uri: str, tmp_path: Path) -> None:
    """The distributed entry point: the launcher stops torchrun's ranks and ends the run
    KILLED."""
    params = {"epochs": 20, "batch_size": 128, "device": "cpu", "nproc_per_node": 2}
    with training(
        tracking_uri, tmp_path, "ddp-signal", params, extra_args=["-e", "distributed"]
    ) as started:
        process, mark, run_id = started
        assert len(marked_processes(mark)) >= 4  # mlflow run, the launcher, 2 ranks
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert_stopped(MlflowClient(tracking_uri), mark, run_id, signalled)
    text = (tmp_path / "run.log").read_text()
    expected = "mnist.distributed.launch: error: stopped by SIGTERM: the run is KILLED"
    assert expected in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.slow
def test_sigterm_to_mlflow_run_stops_the_sweep_and_its_trials(
    tracking_uri: str, tmp_path: Path
) -> None:
    """The sweep stops its trials (each an `mlflow run` in a process group of its own) and
    marks them and itself KILLED; the stand-in trials wait until stopped (tests/helpers)."""
    folder = stand_in_project(tmp_path)
    params = {"project": folder, "trials": 4, "max_parallel": 2, "trial_params": "behaviour=wait"}
    mark = uuid.uuid4().hex
    log = tmp_path / "run.log"
    process = start_mlflow_run(SWEEP_PROJECT, tracking_uri, params, log, mark, "sweep")
    with ended(process, mark):

        def waiting() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return len(list(folder.glob("pids/*"))) >= 2

        wait_until(waiting, 300, "2 trials waiting")
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        sweep_id = sweep_runs(tracking_uri, "sweep").parent.info.run_id
        assert_stopped(MlflowClient(tracking_uri), mark, sweep_id, signalled)
    text = log.read_text()
    assert "the running trials were stopped and marked KILLED" in text, text[-3000:]
    runs = sweep_runs(tracking_uri, "sweep")
    assert [child.info.status for child in runs.children] == ["KILLED", "KILLED"]
    pids = [int(path.name) for path in folder.glob("pids/*")]
    assert not [pid for pid in pids if pid_alive(pid)], "a trial process outlived the sweep"


@pytest.mark.server
@pytest.mark.slow
def test_resume_continues_the_killed_run_to_the_same_result(
    tracking_server, tmp_path: Path
) -> None:
    """Resumed on the CPU, the run equals an uninterrupted one exactly: the checkpoint holds
    the model, optimizer, schedule, position in the epoch, shuffle order and RNG states, and
    CPU kernels are deterministic for a given thread count. Equality, not a tolerance."""
    params = {"epochs": 2, "batch_size": 256, "seed": 7, "device": "cpu"}
    client = MlflowClient(tracking_server.url)
    whole = tmp_path / "whole"
    whole.mkdir()
    name = f"whole-{uuid.uuid4().hex[:8]}"
    result = mlflow_run(
        MNIST_CONDA, tracking_server.url, params, cwd=whole, experiment=name, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (uninterrupted,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])

    experiment = f"resume-{uuid.uuid4().hex[:8]}"
    with training(tracking_server.url, tmp_path, experiment, params) as started:
        process, mark, run_id = started
        signalled = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        assert_stopped_killed(client, process, mark, run_id, tmp_path / "run.log", signalled)
    killed_at = max(m.step for m in client.get_metric_history(run_id, "train_loss_step"))

    # Only resume_from: MLflow passes the MLproject defaults (epochs, seed, ...), and the
    # run continues with its own parameters.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    result = mlflow_run(
        MNIST_CONDA,
        tracking_server.url,
        {"resume_from": run_id},
        cwd=resumed,
        experiment=experiment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming with the run's own epochs=2" in result.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_at_step"]) >= killed_at
    for key in ("train_loss_step", "val_accuracy", "train_loss"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        expected = [m.step for m in client.get_metric_history(uninterrupted.info.run_id, key)]
        assert steps == expected, key  # numbering continues: no gap, no repeat
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == uninterrupted.data.metrics["test_accuracy"]
    assert run.data.metrics["val_loss"] == uninterrupted.data.metrics["val_loss"]
    # The run that `mlflow run -P resume_from=` made for the launch points at the resumed one.
    found = client.get_experiment_by_name(experiment)
    launches = [
        r
        for r in client.search_runs([found.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == run_id
    ]
    assert len(launches) == 1


@pytest.mark.slow
def test_resume_of_a_run_that_cannot_resume_is_one_line(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through `mlflow run` for a FINISHED run; in-process for a run id that does not exist and
    for a KILLED run whose checkpoint is damaged."""
    assert mnist_train.main(["--epochs", "1", "--batch-size", "512"]) == 0
    (finished,) = MlflowClient(tracking_uri).search_runs(["0"])
    result = mlflow_run(
        MNIST_CONDA, tracking_uri, {"resume_from": finished.info.run_id}, cwd=tmp_path
    )
    line = one_line_reason(result, "mnist.train: error:")
    assert f"run {finished.info.run_id} is FINISHED: only a KILLED run resumes" in line
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        mnist_train.main(["--resume-from", "0" * 32])
    assert exit_info.value.code != 0
    assert f"mnist.train: error: no run {'0' * 32} in" in capsys.readouterr().err

    # A KILLED run whose checkpoint is damaged: one line, and the run is left as it was.
    client = MlflowClient(tracking_uri)
    client.set_terminated(finished.info.run_id, "KILLED")
    damaged = tmp_path / "checkpoint.pt"
    damaged.write_bytes(b"PK\x03\x04 not a checkpoint")
    client.log_artifact(finished.info.run_id, str(damaged), "checkpoint")
    before = client.get_run(finished.info.run_id)
    with pytest.raises(SystemExit) as exit_info:
        mnist_train.main(["--resume-from", finished.info.run_id])
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mnist.train:")]
    assert "cannot be read" in line and "left as it is" in line, line
    after = client.get_run(finished.info.run_id)
    assert (after.info.status, after.data.metrics) == ("KILLED", before.data.metrics)


def test_diverging_loss_fails_the_run_naming_epoch_and_step(
    tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process: the run that train.py started ends FAILED, with no model logged."""
    argv = ["--learning-rate", "1e30", "--epochs", "1", "--batch-size", "256"]
    assert mnist_train.main(argv) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mnist.train:")]
    assert "the training loss became nan at epoch 1, step " in line, line
    assert "lower the learning rate" in line
    (run,) = MlflowClient(tracking_uri).search_runs(["0"])
    assert run.info.status == "FAILED"
    assert "model" not in [
        a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id)
    ]


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        (["python", "-m", "mnist.train", "--epochs=1"], "mnist.train"),
        (["python", "-m", "elasticnet.train", "--alpha=1"], "elasticnet.train"),
        (
            ["python", "-m", "mlflow_project_store.ready_for_mlflow.promote", "mnist", "1"],
            "promote",
        ),
        (["make", "run", "RUN_ARGS=-P epochs=1"], "make run"),
        (["make", "serve", "MODEL=models:/mnist@champion"], "make serve"),
    ],
    ids=["mnist", "elasticnet", "promote", "make-run", "make-serve"],
)
def test_tracking_server_down_at_start_is_one_line_within_30_s(
    command: list[str], prog: str, tmp_path: Path
) -> None:
    """Without the check, MLflow's client retries a refused connection for about 4 minutes.
    The entry points and tools check the server first; the make targets check it before they
    start `mlflow run` or the scoring server (mlflow_project_store.store)."""
    uri = f"http://127.0.0.1:{free_port()}"
    project = {"mnist.train": MNIST_CONDA, "elasticnet.train": PROJECTS / "elasticnet-docker"}
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    if prog in project:
        env = in_project(project[prog], env)
    started = time.monotonic()
    program = command[0] if command[0] == "make" else str(VENV_BIN / command[0])
    result = subprocess.run(
        [program, *command[1:]],
        cwd=ROOT if command[0] == "make" else tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    line = one_line_reason(result, f"{prog}: error:")
    assert f"tracking server {uri} did not answer" in line


@pytest.mark.server
@pytest.mark.slow
def test_tracking_server_restarted_mid_training_loses_no_metric_point(
    s3: S3, tmp_path: Path
) -> None:
    """MLflow's client retries for minutes mid-run: every step point reaches the server."""
    port = free_port()
    store = f"sqlite:///{tmp_path / 'server.db'}"
    command = mlflow_server_command(store, f"s3://{s3.bucket}/restart", port, "--workers", "1")
    env = {**os.environ, **s3.server_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = launch(command, log, f"{url}/health", timeout=90, env=env)
    params = {"epochs": 3, "batch_size": 128, "seed": 3, "device": "cpu"}
    experiment = "restart"
    try:
        with training(url, tmp_path, experiment, params) as (process, _, run_id):
            stop(server)
            time.sleep(5)
            server = launch(command, log, f"{url}/health", timeout=90, env=env)
            assert process.wait(600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        client = MlflowClient(url)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps_per_epoch = math.ceil(int(run.data.params["train_size"]) / params["batch_size"])
        total = params["epochs"] * steps_per_epoch
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train_loss_step"))
        assert steps == list(range(10, total + 1, 10))
        assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [1, 2, 3]
    finally:
        stop(server)


# (type, low, high) of each number; an int's bounds are inclusive, a float's exclusive.
RANGES = {
    "epochs": (int, 1, None),
    "batch_size": (int, 1, None),
    "learning_rate": (float, 0, None),
    "val_fraction": (float, 0, 1),
    "seed": (int, 0, 2**32 - 1),
    "num_workers": (int, 0, mnist_train.MAX_WORKERS),
}
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["epochs", "batch_size", "learning_rate", "val_fraction", "seed", "num_workers"]
    ),
    NUMBERS,
)
def test_mnist_numbers_are_accepted_exactly_within_their_range(name: str, text: str) -> None:
    """Any text: either parse_args accepts a finite value within the documented range, or it
    exits 2 (with one line, checked above); never a traceback, never an out-of-range value."""
    kind, low, high = RANGES[name]
    try:
        value = getattr(mnist_train.parse_args([f"--{name.replace('_', '-')}={text}"]), name)
    except SystemExit as exit_info:
        assert exit_info.code == 2
        return
    assert isinstance(value, kind) and math.isfinite(value)
    assert value >= low if kind is int else value > low
    if high is not None:
        assert value <= high if kind is int else value < high
