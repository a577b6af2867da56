"""A bounded load test of the tracking store: N clients logging metric batches for a fixed time.

    python -m benchmarks.tracking_load [--clients 8] [--seconds 20] [--batch 50]
        [--stores postgresql,sqlite,sqlite-file] [--workers 2]

Each client is its own process with its own run, calling ``log_batch`` with ``--batch`` metric
points (one step of ``--batch`` keys) in a loop until the time is up. Stores: an
`mlflow server` (``--workers``, default 2: one per core here) with a
PostgreSQL or a SQLite store, and the SQLite file itself with no server (what `make run` uses
when no server is set, every process writing it directly). MLflow's client retries are off
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``) so that every refused request is counted once.
Afterwards every run's points are counted in the store against the batches acknowledged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path

from benchmarks.results import record
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mlflow_project_store.ready_for_mlflow.servers import (
    mlflow_server,
    moto_s3,
)
from tests.helpers.servers import postgres, postgres_binaries

STORES = ("postgresql", "sqlite", "sqlite-file")


def client(uri: str, experiment_id: str, seconds: float, batch: int, start_at: float) -> dict:
    """One client: log batches until the time is up; what it sent and what failed."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    tracking = MlflowClient(uri)
    run_id = tracking.create_run(experiment_id).info.run_id
    time.sleep(max(0.0, start_at - time.time()))
    acknowledged, errors, first_error, latencies, step = 0, 0, "", [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = int(time.time() * 1000)
        metrics = [Metric(f"m{k}", float(step), now, step) for k in range(batch)]
        began = time.perf_counter()
        try:
            tracking.log_batch(run_id, metrics=metrics)
            acknowledged += 1
            latencies.append(time.perf_counter() - began)
        except Exception as exc:
            errors += 1
            first_error = first_error or str(exc).splitlines()[0][:200]
        step += 1
    return {
        "run_id": run_id,
        "acknowledged": acknowledged,
        "errors": errors,
        "first_error": first_error,
        "latencies": latencies,
    }


def stored_points(uri: str, run_id: str, batch: int) -> int:
    from mlflow.tracking import MlflowClient

    tracking = MlflowClient(uri)
    return sum(len(tracking.get_metric_history(run_id, f"m{k}")) for k in range(batch))


def measure(kind: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    with ExitStack() as stack:
        if kind == "sqlite-file":
            uri = f"sqlite:///{work / 'direct.db'}"
        else:
            s3 = stack.enter_context(moto_s3(work))
            if kind == "postgresql":
                bin_dir = postgres_binaries()
                if bin_dir is None:
                    return {"store": kind, "note": "no PostgreSQL: apt-get install postgresql"}
                backend = stack.enter_context(postgres(bin_dir))
            else:
                backend = f"sqlite:///{work / 'served.db'}"
            workers = ("--workers", str(args.workers))
            uri = stack.enter_context(mlflow_server(work, backend, s3, kind, workers)).url
        from mlflow.tracking import MlflowClient

        experiment_id = MlflowClient(uri).create_experiment(f"load-{kind}")
        start_at = time.time() + 3  # every client has its run before the clock starts
        jobs = [(uri, experiment_id, args.seconds, args.batch, start_at)] * args.clients
        with get_context("spawn").Pool(args.clients) as pool:
            results = pool.starmap(client, jobs)
        stored = sum(stored_points(uri, r["run_id"], args.batch) for r in results)
    acknowledged = sum(r["acknowledged"] for r in results) * args.batch
    latencies = sorted(x for r in results for x in r["latencies"]) or [0.0]
    errors = sum(r["errors"] for r in results)
    first = next((r["first_error"] for r in results if r["first_error"]), "")
    return {
        "store": kind,
        "clients": args.clients,
        "batches/s": round(sum(r["acknowledged"] for r in results) / args.seconds, 1),
        "points/s": round(acknowledged / args.seconds),
        "p50 ms": round(statistics.median(latencies) * 1000, 1),
        "p99 ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
        "errors": errors,
        "points acknowledged": acknowledged,
        "points stored": stored,
        "first error": first,
    }


def main() -> None:
    parser = OneLineParser(prog="benchmarks.tracking_load", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=number(int, 1), default=8)
    parser.add_argument("--seconds", type=number(float, 0, open_low=True), default=20)
    parser.add_argument("--batch", type=number(int, 1), default=50)
    parser.add_argument("--workers", type=number(int, 1), default=2)
    parser.add_argument("--stores", default=",".join(STORES))
    args = parser.parse_args()
    kinds = [k for k in args.stores.split(",") if k]
    unknown = set(kinds) - set(STORES)
    if unknown:
        parser.error(f"--stores: unknown {sorted(unknown)}; expected some of {STORES}")
    rows = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"tracking-load-{kind}-") as folder:
            rows.append(measure(kind, args, Path(folder)))
    notes = (
        f"{args.clients} client processes, {args.seconds:.0f} s, batches of {args.batch} points, "
        f"server --workers {args.workers}, client retries off."
    )
    command = (
        f"python -m benchmarks.tracking_load --clients {args.clients} --seconds {args.seconds:.0f}"
        f" --batch {args.batch} --workers {args.workers} --stores {args.stores}"
    )
    record("tracking_load", rows, notes, command)


if __name__ == "__main__":
    main()
