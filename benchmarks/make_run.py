"""`make run` end to end on a warm .venv: the command's wall time beside the run's own.

    python -m benchmarks.make_run [--epochs N]

`make run` (default parameters unless ``--epochs``) into a throwaway SQLite store. The run's
own duration (its start to end time in the store) is what training and recording took; the
rest is make, `mlflow run` and Python starting.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.results import record
from mlflow_project_store.layout import ROOT
from mlflow_project_store.project_tools.cli import OneLineParser, number


def main() -> None:
    parser = OneLineParser(prog="benchmarks.make_run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=number(int, 0), default=0, help="0: the default parameters"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="make-run-") as folder:
        store = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        command = ["make", "--no-print-directory", "run", f"TRACKING_URI={store}"]
        if args.epochs:
            command.append(f"RUN_ARGS=-P epochs={args.epochs}")
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"make_run: error: make run failed: {done.stderr[-2000:]}")
        (run,) = MlflowClient(store).search_runs(["0"])
    inside = (run.info.end_time - run.info.start_time) / 1000
    accuracy = run.data.metrics.get("test_accuracy")
    rows = [
        {
            "command": "make run" + (f" RUN_ARGS='-P epochs={args.epochs}'" if args.epochs else ""),
            "wall (s)": round(wall, 1),
            "the run itself (s)": round(inside, 1),
            "start-up and wrap-up (s)": round(wall - inside, 1),
            "test accuracy": accuracy,
        }
    ]
    record("make_run", rows, "warm .venv; throwaway SQLite store", "python -m benchmarks.make_run")


if __name__ == "__main__":
    main()
