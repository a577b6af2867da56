"""Load: 8 `mlflow run`s at once against one tracking store, PostgreSQL or SQLite behind a
tracking server, and the SQLite file that `make run` uses by default. Every run must end
FINISHED with every metric point it logged (counted against what its params imply).

A tiny training (2 epochs of 576 digits, batch 32) keeps 8 at once within 2 cores; the figures
and the recommendation are in docs/reliability.md; benchmarks/tracking_load.py measures the
server's throughput under concurrent clients, and runs here briefly.
"""

from __future__ import annotations

import threading
import uuid
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from benchmarks.tracking_load import measure
from data_loader import load_mnist
from mlflow_project_store.ready_for_mlflow.servers import S3, TrackingServer
from mnist.tracking import log_datasets
from tests.helpers.load import (
    EXPERIMENT,
    expected_points,
    run_at_once,
    store,
    stored_points,
    write_subset,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]
RUNS = 8
TINY = {"epochs": 2, "batch_size": 32, "learning_rate": 0.003, "val_fraction": 0.1}


@pytest.mark.parametrize("kind", ["postgresql", "sqlite-file"])
def test_eight_runs_at_once_keep_every_point(kind: str, s3: S3, tmp_path: Path) -> None:
    """The team's store (PostgreSQL behind `mlflow server`) and the local one `make run` uses
    (a SQLite file every run writes): 8 tiny trainings at once, every point kept. (SQLite
    behind a server is measured, with the others, by benchmarks/tracking_load.py.)"""
    data = write_subset(tmp_path / "digits", train=640, test=200)
    with store(kind, tmp_path, s3) as uri:
        results = run_at_once(RUNS, uri, TINY | {"data_dir": data})
        failed = [r.stderr[-1500:] for r in results if r.returncode != 0]
        assert not failed, f"{len(failed)} of {RUNS} runs failed; the first:\n{failed[0]}"
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        assert len(runs) == RUNS
        for run in runs:
            assert run.info.status == "FINISHED", run.info
            expected = expected_points(run)
            assert expected["train_loss_step"] >= 3  # the tiny training still logs steps
            assert stored_points(client, run, list(expected)) == expected, run.info.run_id


def test_runs_logging_the_same_digits_at_once_all_record_them(
    tracking_server: TrackingServer,
) -> None:
    """8 runs log the same new dataset at the same moment through a real server (SQLite): the
    SQL store checks, then inserts, so without a retry some of them fail on its unique
    constraint (seen in this module's load test)."""
    client = MlflowClient(tracking_server.url)
    experiment = client.create_experiment(f"same-digits-{uuid.uuid4().hex[:8]}")
    digits = load_mnist(split="test")
    runs = [client.create_run(experiment).info.run_id for _ in range(RUNS)]
    start = threading.Barrier(RUNS)

    def log(run_id: str) -> None:
        with mlflow.start_run(run_id=run_id):
            start.wait(timeout=60)
            log_datasets(digits, digits)

    mlflow.set_tracking_uri(tracking_server.url)
    try:
        with ThreadPoolExecutor(RUNS) as pool:
            list(pool.map(log, runs))
    finally:
        mlflow.set_tracking_uri(None)
    for run_id in runs:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == ["mnist-testing", "mnist-training"]


def test_concurrent_clients_on_a_tracking_server_lose_nothing(tmp_path: Path) -> None:
    """benchmarks/tracking_load.py, briefly: 4 client processes log batches of 10 points for
    3 s at once through a real server (SQLite store), client retries off: no request fails and
    every acknowledged point is stored."""
    row = measure("sqlite", Namespace(clients=4, seconds=3, batch=10, workers=1), tmp_path)
    assert row["errors"] == 0, row["first error"]
    assert row["points acknowledged"] >= 4 * 10, row
    assert row["points stored"] == row["points acknowledged"], row
