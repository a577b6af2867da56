"""Many `make run`s at once against one store, and the metric points each run must hold."""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from data_loader.idx import read_idx, write_idx
from mlflow_project_store.layout import PROJECTS, ROOT
from mlflow_project_store.ready_for_mlflow.servers import (
    S3,
    client_env,
    mlflow_server,
)
from mnist.tracking import LOG_EVERY_STEPS
from tests.helpers.commands import make_command
from tests.helpers.components import require
from tests.helpers.servers import postgres, postgres_binaries

MNIST_CONDA = PROJECTS / "mnist-conda"
SAMPLE = ROOT / "example" / "data_loader" / "mnist_sample"
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy")
FINAL_METRICS = ("test_loss", "test_accuracy")
EXPERIMENT = "load"


def write_subset(folder: Path, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` bundled digits as a flat folder of IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            array = read_idx(SAMPLE / f"{prefix}-{kind}-ubyte.gz", ndim)[:count]
            write_idx(folder / f"{prefix}-{kind}-ubyte", array)
    return folder


@contextmanager
def store(kind: str, workdir: Path, s3: S3) -> Iterator[str]:
    """A tracking URI: ``postgresql`` or ``sqlite`` behind one `mlflow server`, or the
    ``sqlite-file`` that `make run` uses when no server is set (every run writes it directly)."""
    if kind == "sqlite-file":
        yield f"sqlite:///{workdir / 'mlflow.db'}"
        return
    if kind == "sqlite":
        with mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}", s3, kind) as server:
            yield server.url
        return
    bin_dir = postgres_binaries()
    require("PostgreSQL", bin_dir is not None, "apt-get install postgresql")
    with postgres(bin_dir) as uri, mlflow_server(workdir, uri, s3, kind) as server:
        yield server.url


def run_at_once(
    count: int, tracking_uri: str, params: dict[str, object], timeout: int = 900
) -> list[subprocess.CompletedProcess[str]]:
    """``count`` `make run`s of mnist-conda started together into the new experiment
    ``EXPERIMENT`` (``MLFLOW_EXPERIMENT_NAME``), one torch thread each (so that they share the
    cores instead of fighting over them); their results in start order. Nothing is created
    first: the runs race to create the experiment as a user's would."""
    env = client_env(tracking_uri, OMP_NUM_THREADS="1", MLFLOW_EXPERIMENT_NAME=EXPERIMENT)
    if not tracking_uri.startswith("http"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    run_args = " ".join(f"-P {name}={value}" for name, value in params.items())
    command = make_command("run", f"TRACKING_URI={tracking_uri}", f"RUN_ARGS={run_args}")

    def one(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def expected_points(run: Run) -> dict[str, int]:
    """The points of each metric that mnist.train logs for this run's params."""
    params = run.data.params
    epochs = int(params["epochs"])
    steps = epochs * math.ceil(int(params["train_size"]) / int(params["batch_size"]))
    points = {"train_loss_step": steps // LOG_EVERY_STEPS}
    points |= dict.fromkeys(EPOCH_METRICS, epochs) | dict.fromkeys(FINAL_METRICS, 1)
    return points


def stored_points(client: MlflowClient, run: Run, keys: list[str]) -> dict[str, int]:
    return {key: len(client.get_metric_history(run.info.run_id, key)) for key in keys}
