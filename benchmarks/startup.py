"""Start-up: seconds from the command to the first training step, by way of starting.

    python -m benchmarks.startup [--repeats 2] [--skip-uv]

`mlflow run --env-manager local`, `mlflow run --env-manager uv` (its environment built once
beforehand, so warm) and `python -m mnist.train` run directly, each from projects/mnist-conda
into its own copy of an empty, already-created SQLite store. The clock stops when the first
``train_loss_step`` point is in the store (mnist.train logs it at step 10, so each figure
includes the same 10 steps), then the process group is stopped: no run is trained out.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.results import record
from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mlflow_project_store.ready_for_mlflow.servers import VENV_BIN

PROJECT = PROJECTS / "mnist-conda"
PARAMS = {"epochs": 1, "batch_size": 64}
WAYS = {
    "python -m mnist.train": [sys.executable, "-m", "mnist.train", "--epochs=1", "--batch-size=64"],
    "mlflow run --env-manager local": [
        str(VENV_BIN / "mlflow"), "run", ".", "--env-manager", "local",
        *[f"-P{k}={v}" for k, v in PARAMS.items()],
    ],
    "mlflow run --env-manager uv (warm)": [
        str(VENV_BIN / "mlflow"), "run", ".", "--env-manager", "uv",
        *[f"-P{k}={v}" for k, v in PARAMS.items()],
    ],
}  # fmt: skip


def first_step(command: list[str], template: Path, work: Path, timeout: float = 900) -> float:
    """Seconds until the first step point is stored; the process group is then stopped."""
    db = work / f"store-{time.monotonic_ns()}.db"
    shutil.copy(template, db)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                sys.exit(f"startup: error: {command[:4]} exited: {process.stderr.read()[-2000:]}")
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
                try:
                    found = connection.execute(
                        "SELECT 1 FROM metrics WHERE key = 'train_loss_step' LIMIT 1"
                    ).fetchone()
                except sqlite3.OperationalError:  # locked by a writer
                    found = None
            if found:
                return time.perf_counter() - start
            time.sleep(0.05)
        sys.exit(f"startup: error: no step logged within {timeout:.0f} s by {command[:4]}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = OneLineParser(prog="benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=number(int, 1), default=2)
    parser.add_argument("--skip-uv", action="store_true", help="no uv environment here")
    args = parser.parse_args()
    ways = {k: v for k, v in WAYS.items() if not (args.skip_uv and "uv" in k)}
    with tempfile.TemporaryDirectory(prefix="startup-") as folder:
        work = Path(folder)
        template = work / "empty.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # creates the tables
        if not args.skip_uv:  # builds the uv environment once (minutes the first time)
            first_step(WAYS["mlflow run --env-manager uv (warm)"], template, work, timeout=1800)
        seconds = {name: [] for name in ways}
        for _ in range(args.repeats):  # in turns
            for name, command in ways.items():
                seconds[name].append(first_step(command, template, work))
    direct = min(seconds["python -m mnist.train"])
    rows = [
        {
            "start": name,
            "seconds to the first step": round(min(times), 2),
            "ratio to python -m mnist.train": round(min(times) / direct, 2),
        }
        for name, times in seconds.items()
    ]
    notes = f"to the first train_loss_step point (step 10), best of {args.repeats} in turns"
    record("startup", rows, notes, "python -m benchmarks.startup")


if __name__ == "__main__":
    main()
