"""The tracking store that the make targets use, printed (its password masked) and checked.

    python -m mlflow_project_store.store [--check] [--prog NAME]

The store is ``MLFLOW_TRACKING_URI`` (the Makefile sets it: ``TRACKING_URI=``, else the
environment's, else ``./mlflow.db``). With ``--check``, a tracking server that does not answer
stops here with one line (exit 1), in seconds, instead of MLflow's minutes of retries; and the
experiment ``MLFLOW_EXPERIMENT_NAME`` names is created here, once, when it does not exist yet.
`mlflow run` started several times at once into a new experiment races to create it, and the
losers fail with RESOURCE_ALREADY_EXISTS (docs/upstream.md); here a lost race is harmless. A new
SQLite file gets its tables here too, one process at a time: MLflow creates them in every
process that opens the new file, and processes doing so at once fail (``duplicate column``).
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from mlflow_project_store.project_tools.cli import OneLineParser
from mlflow_project_store.project_tools.redaction import redact
from mlflow_project_store.project_tools.tracking import require_tracking_server

DEFAULT_STORE = "sqlite:///mlflow.db"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="store", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check that a server answers")
    parser.add_argument("--prog", default="store", help="the command that the lines name")
    args = parser.parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    print(f"Tracking store: {redact(uri)}", flush=True)
    if args.check:
        require_tracking_server(args.prog, uri)
        database = sqlite_file(uri)
        with one_at_a_time(database.parent) if database else nullcontext():
            if database and (not database.exists() or database.stat().st_size == 0):
                create_tables(uri)
            if name := os.environ.get("MLFLOW_EXPERIMENT_NAME"):
                ensure_experiment(name, uri)
    return 0


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (its folder created), or None for another store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def one_at_a_time(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the folder itself: no lock file is left)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def create_tables(uri: str) -> None:
    """MLflow creates a new store's tables when it first opens it."""
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments(max_results=1)


def ensure_experiment(name: str, uri: str) -> None:
    """Create the experiment ``name`` unless it exists; another process creating it at the
    same moment is not an error."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is not None:
        return
    try:
        client.create_experiment(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


if __name__ == "__main__":
    sys.exit(main())
