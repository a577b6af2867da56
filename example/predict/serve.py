"""Serve a model over REST, refusing pickled models as ``make predict`` does.

    python -m mlflow_project_store.predict.serve MODEL_URI [--port 5003] [--host 127.0.0.1]
        [--allow-pickle]

`mlflow models serve` alone loads whatever the model holds. This fetches the model once, checks
that copy with predict.safety, then becomes `mlflow models serve` of the same copy, with
MLflow's pickle switch on only for a checked skops model or with --allow-pickle. A refused
model, a server that is down or an unknown model is one line and exit 1, before anything
listens. `make serve` runs it (ALLOW_PICKLE=1 there for --allow-pickle). Like `mlflow models
serve`, it leaves the downloaded copy of a run or registry model in the temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow_project_store.project_tools.cli import OneLineParser, fail, number

from .cli import PredictError, model_errors
from .safety import PICKLE_ENV, RISK, UnsafeModelError, checked_copy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="predict.serve", description=__doc__.splitlines()[0])
    parser.add_argument("model_uri", help="runs:/<id>/model, models:/<name>@<alias>, a folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=number(int, 1, 65535), default=5003)
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help=f"serve pickled (cloudpickle, pickle) models too: {RISK}; only for models you trust",
    )
    parser.add_argument("--prog", default="predict.serve", help="what error lines start with")
    parser.add_argument(
        "--allow-hint",
        default="--allow-pickle",
        help="how a refusal names --allow-pickle to the caller (make serve: ALLOW_PICKLE=1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with model_errors(args.model_uri, args.prog):
            local, unpickle = checked_copy(args.model_uri, args.allow_pickle)
    except UnsafeModelError as exc:
        fail(args.prog, exc.line(args.allow_hint), status=1)
    except PredictError as exc:
        fail(args.prog, str(exc), status=1)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "models", "serve", "-m", str(local), "--env-manager", "local"]
    command += ["--host", args.host, "--port", str(args.port)]
    sys.stdout.flush()
    os.execve(mlflow, command, os.environ | {PICKLE_ENV: "true" if unpickle else "false"})


if __name__ == "__main__":
    main()
