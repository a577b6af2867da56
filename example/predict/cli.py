"""Load a model by any MLflow model URI and predict digits or table rows.

    python -m predict models:/mnist@champion digits/        # PNG/JPEG folder
    python -m predict runs:/<run id>/model t10k-images-idx3-ubyte.gz
    python -m predict models:/diabetes/3 rows.csv --output out.csv

The model comes from the tracking server in MLFLOW_TRACKING_URI. Predictions are printed as
a table and written to a CSV file. Any problem is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from project_tools.cli import OneLineParser, number

from .inputs import InputError, read_input

# Keep stderr for errors: no download progress bars around the one-line messages.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The MNIST models are exported (pt2) on the CPU and cannot move device: on a host with CUDA,
# MLflow would load them on the GPU and fail.
os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")


class PredictError(Exception):
    """A model or server problem, worded for the user."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_uri", help="runs:/<id>/model, models:/<name>/<version>, ...")
    parser.add_argument("input", type=Path, help="digit images (folder/file), IDX file or CSV")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--show", type=number(int, 0), default=20, help="rows to print")
    return parser.parse_args(argv)


def check_server(model_uri: str) -> None:
    """Fail in seconds when the tracking server is down (MLflow itself retries for minutes)."""
    import mlflow

    tracking_uri = mlflow.get_tracking_uri()
    if not model_uri.startswith(("runs:/", "models:/")) or not tracking_uri.startswith("http"):
        return
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # it answers; MLflow reports what is wrong
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PredictError(
            f"tracking server {tracking_uri} is unreachable ({reason}); start it or set "
            f"MLFLOW_TRACKING_URI"
        ) from None


def load_model(model_uri: str):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    check_server(model_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        first_line = exc.message.strip().splitlines()[0]
        raise PredictError(f"cannot load model {model_uri!r}: {first_line}") from None
    except OSError as exc:
        raise PredictError(f"cannot load model {model_uri!r}: {exc}") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def digits_table(names: list[str], logits: np.ndarray) -> pd.DataFrame:
    if logits.ndim != 2 or logits.shape[1] != 10:
        raise PredictError(f"expected the model to return (N, 10) logits, got {logits.shape}")
    probabilities = softmax(logits)
    return pd.DataFrame(
        {
            "input": names,
            "digit": logits.argmax(axis=1),
            "confidence": probabilities.max(axis=1).round(4),
        }
    )


def check_columns(model, rows: pd.DataFrame) -> None:
    """Name the columns a table lacks, before MLflow's schema check prints the whole table."""
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return
    missing = [name for name in schema.input_names() if name not in rows.columns]
    if missing:
        raise PredictError(
            f"the model rejected the rows input: missing column(s) {', '.join(missing)}; "
            f"it expects {', '.join(map(str, schema.input_names()))}"
        )


def predict(model, kind: str, names: list[str] | None, data) -> pd.DataFrame:
    from mlflow.exceptions import MlflowException

    if kind == "rows":
        check_columns(model, data)
    try:
        output = model.predict(data)
    except (MlflowException, ValueError, TypeError, RuntimeError) as exc:
        reason = " ".join(str(getattr(exc, "message", exc)).split())[:300]
        raise PredictError(f"the model rejected the {kind} input: {reason}") from None
    output = np.asarray(output)
    if kind == "digits":
        return digits_table(names, output)
    table = data.copy()
    if output.ndim == 2 and output.shape[1] > 1:
        for column in range(output.shape[1]):
            table[f"prediction_{column}"] = output[:, column]
    else:
        table["prediction"] = output.reshape(len(table))
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        kind, names, data = read_input(args.input)
        model = load_model(args.model_uri)
        table = predict(model, kind, names, data)
        table.to_csv(args.output, index=False)
    except (InputError, PredictError, OSError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    print(table.head(args.show).to_string(index=False))
    more = f" ({len(table) - args.show} more rows there)" if len(table) > args.show else ""
    print(f"{len(table)} predictions written to {args.output}{more}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
