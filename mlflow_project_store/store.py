"""The tracking store that the make targets use, printed (its password masked) and checked.

    python -m mlflow_project_store.store [--check] [--prog NAME]

The store is ``MLFLOW_TRACKING_URI`` (the Makefile sets it: ``TRACKING_URI=``, else the
environment's, else ``./mlflow.db``). With ``--check``, a tracking server that does not answer
stops here with one line (exit 1), in seconds, instead of MLflow's minutes of retries.
"""

from __future__ import annotations

import os
import sys

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
