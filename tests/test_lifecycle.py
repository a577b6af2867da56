"""A training run's life against real processes: stopped by a signal (KILLED, checkpoint
logged, no process left), resumed into the same run, a tracking server that is down at start
or restarted mid-run, a loss that diverges, and every entry-point parameter checked before any
work (property-based, with hypothesis)."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.projects._project_spec import load_project
from mlflow.tracking import MlflowClient

from elasticnet import train as elasticnet_train
from mnist import train as mnist_train
from ready_for_mlflow.servers import (
    S3,
    free_port,
    launch,
    mlflow_server_command,
    stop,
)
from scaffold.layout import PROJECTS
from tests.helpers.commands import (
    VENV_BIN,
    marked_processes,
    mlflow_run,
    one_line_reason,
    start_mlflow_run,
    wait_until,
)

MNIST_CONDA = PROJECTS / "mnist-conda"
FOREVER = {"epochs": 1_000_000_000, "batch_size": 256, "device": "cpu"}
# From the signal to: no process left, the run KILLED with its checkpoint.
STOP_BOUND_S = 40


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


def start_and_wait_for_steps(
    tracking_uri: str, tmp_path: Path, experiment: str, params: dict, min_step: int = 10
) -> tuple[subprocess.Popen, str, str]:
    """Start `mlflow run`; return it, its mark and run id once a step metric >= min_step exists."""
    mark = uuid.uuid4().hex
    process = start_mlflow_run(
        MNIST_CONDA, tracking_uri, params, tmp_path / "run.log", mark, experiment
    )
    client = MlflowClient(tracking_uri)

    def stepped() -> str | None:
        assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        run = top_level_run(client, experiment)
        if run is None:
            return None
        history = client.get_metric_history(run.info.run_id, "train_loss_step")
        return run.info.run_id if any(m.step >= min_step for m in history) else None

    run_id = wait_until(stepped, 180, "a train_loss_step metric")
    return process, mark, run_id


def assert_stopped_killed(
    client: MlflowClient, process: subprocess.Popen, mark: str, run_id: str, log: Path
) -> None:
    started = time.monotonic()
    wait_until(lambda: not marked_processes(mark), STOP_BOUND_S, "every process of the run ended")
    wait_until(
        lambda: client.get_run(run_id).info.status == "KILLED", STOP_BOUND_S, "the run KILLED"
    )
    assert time.monotonic() - started < STOP_BOUND_S
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
    process, mark, run_id = start_and_wait_for_steps(
        tracking_server.url, tmp_path, experiment, FOREVER
    )
    (os.killpg if to_group else os.kill)(process.pid, signum)
    client = MlflowClient(tracking_server.url)
    assert_stopped_killed(client, process, mark, run_id, tmp_path / "run.log")


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
    process, mark, run_id = start_and_wait_for_steps(
        tracking_server.url, tmp_path, experiment, params, min_step=20
    )
    os.killpg(process.pid, signal.SIGTERM)
    assert_stopped_killed(client, process, mark, run_id, tmp_path / "run.log")
    killed_at = max(m.step for m in client.get_metric_history(run_id, "train_loss_step"))

    # Only resume_from: MLflow passes the MLproject defaults (epochs=5, seed=42, ...), and the
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
    """Through `mlflow run` for a FINISHED run; in-process for a run id that does not exist."""
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
        (["python", "-m", "ready_for_mlflow.promote", "mnist", "1"], "promote"),
        (["python", "-m", "project_tools.tracking", "--prog", "make run"], "make run"),
        (["mlflow", "run", str(MNIST_CONDA), "--env-manager", "local", "-P", "epochs=1"], "mlflow"),
        (
            ["mlflow", "models", "serve", "-m", "models:/mnist@champion", "--env-manager", "local"],
            "mlflow",
        ),
    ],
    ids=["mnist", "elasticnet", "promote", "make-run-check", "mlflow-run", "mlflow-models-serve"],
)
def test_tracking_server_down_at_start_is_one_line_within_30_s(
    command: list[str], prog: str, tmp_path: Path
) -> None:
    """Without the check, MLflow's client retries a refused connection for about 4 minutes.
    The `mlflow` command checks through the request-header plugin of project_tools.tracking."""
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [str(VENV_BIN / command[0]), *command[1:]],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    line = one_line_reason(result, f"{prog}: error:")
    assert f"tracking server {uri} did not answer" in line
    assert result.stderr.strip() == line


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
        process, _, run_id = start_and_wait_for_steps(url, tmp_path, experiment, params)
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


# Every parameter of every project's main entry point, with the values it must refuse. The test
# below fails when an MLproject gains a parameter that is not listed here.
ENTRY_POINTS = {
    "mnist-conda": mnist_train,
    "mnist-docker": mnist_train,
    "mnist-k8s": mnist_train,
    "elasticnet-docker": elasticnet_train,
}
REFUSED = {
    "epochs": ["0", "-1", "2.5", "abc", "inf"],
    "batch_size": ["0", "1e3", ""],
    "learning_rate": ["0", "-1e-3", "nan", "inf", "fast"],
    "data_dir": ["/no/such/folder"],
    "download": ["maybe", "2"],
    "val_fraction": ["0", "1", "-0.1", "nan"],
    "seed": ["-1", "9" * 23, "1.5"],
    "device": ["tpu", "cudafoo", "cuda:abc", "cuda:"],
    "num_workers": ["-1", "33", "1000"],
    "registered_model_name": ["bad/name", "a:b", "x\ty"],
    "resume_from": ["abc", "0" * 31, "G" * 32],
    "alpha": ["-1", "inf", "nan", "abc"],
    "l1_ratio": ["-0.1", "1.5", "nan"],
}
VALID = {"alpha": "1"}


def entry_argv(project: str, overrides: dict[str, str]) -> list[str]:
    """The argv of the project's main entry point, rendered by MLflow's own code."""
    entry = load_project(PROJECTS / project).get_entry_point("main")
    values = {k: VALID.get(k, p.default) for k, p in entry.parameters.items()} | overrides
    command = entry.compute_command(values, storage_dir=None)
    return shlex.split(command)[3:]  # after `python -m package.train`


@pytest.mark.parametrize("project", sorted(ENTRY_POINTS))
def test_every_parameter_refuses_its_bad_values_in_one_line(
    project: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parameters = load_project(PROJECTS / project).get_entry_point("main").parameters
    assert set(parameters) <= set(REFUSED), (
        f"no bad values listed for {set(parameters) - set(REFUSED)}"
    )
    module = ENTRY_POINTS[project]
    for name in parameters:
        for value in REFUSED[name]:
            with pytest.raises(SystemExit) as exit_info:
                module.parse_args(entry_argv(project, {name: value}))
            err = capsys.readouterr().err
            assert exit_info.value.code == 2, (name, value)
            assert err.count("\n") == 1 and repr(value) in err, (name, value, err)
    module.parse_args(entry_argv(project, {}))  # the defaults themselves pass


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
