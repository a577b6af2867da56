"""Load: 8 `mlflow run`s at once against one tracking store, PostgreSQL or SQLite behind a
tracking server, and the SQLite file that `make run` uses by default. Every run must end
FINISHED with every metric point it logged (counted against what its params imply).

A tiny training (2 epochs of 576 digits, batch 32) keeps 8 at once within 2 cores; the figures
and the recommendation are in docs/reliability.md; benchmarks/tracking_load.py measures the
server's throughput under concurrent clients.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ready_for_mlflow.servers import S3
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


@pytest.mark.parametrize("kind", ["postgresql", "sqlite", "sqlite-file"])
def test_eight_runs_at_once_keep_every_point(kind: str, s3: S3, tmp_path: Path) -> None:
    data = write_subset(tmp_path / "digits", train=640, test=200)
    with store(kind, tmp_path, s3) as uri:
        results = run_at_once(RUNS, uri, TINY | {"data_dir": data}, tmp_path)
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
