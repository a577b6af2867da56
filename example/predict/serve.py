"""Serve a model over REST, refusing pickled models as ``make predict`` does and request
bodies over a size limit.

    python -m mlflow_project_store.predict.serve MODEL_URI [--port 5003] [--host 127.0.0.1]
        [--allow-pickle]

`mlflow models serve` alone loads whatever the model holds and reads a request body of any
size into memory. This fetches the model once, checks that copy with predict.safety, loads it
with MLflow's pickle switch on only for a checked skops model or with --allow-pickle, and
serves it with MLflow's own scoring app (what `mlflow models serve` runs: /ping, /health,
/version, /invocations) on uvicorn, one worker, behind predict.body_limit: a request body over
PREDICT_SERVE_MAX_BODY_MB (default 100 MiB, what MLflow's serving container lets through) is
answered 413 before it is read. A refused model, a server that is down or an unknown model is
one line and exit 1, before anything listens. `make serve` runs it (ALLOW_PICKLE=1 there for
--allow-pickle). Like `mlflow models serve`, it leaves the downloaded copy of a run or registry
model in the temporary folder.
"""

from __future__ import annotations

import argparse

from mlflow_project_store.project_tools.cli import OneLineParser, fail, number

from .body_limit import BodyLimit
from .cli import PredictError, model_errors
from .limits import BODY_ENV, DEFAULT_BODY_MB, limit_bytes
from .safety import RISK, UnsafeModelError, load_model


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
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from mlflow_project_store.mlflow_version import version_problem

    # MLflow documents `mlflow models serve`, not the function that makes its app.
    problem = version_problem("predict.serve", "mlflow.pyfunc.scoring_server.init")
    if problem:
        fail(args.prog, problem, status=1)
    try:
        limit = limit_bytes(BODY_ENV, DEFAULT_BODY_MB)
    except ValueError as exc:
        fail(args.prog, str(exc))
    try:
        with model_errors(args.model_uri, args.prog):
            model = load_model(args.model_uri, args.allow_pickle)
    except UnsafeModelError as exc:
        fail(args.prog, exc.line(args.allow_hint), status=1)
    except PredictError as exc:
        fail(args.prog, str(exc), status=1)
    app = BodyLimit(scoring_server.init(model), limit)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
