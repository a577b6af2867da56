"""Load a model by any MLflow model URI and predict digits or table rows.

    python -m mlflow_project_store.predict models:/mnist@champion digits/        # PNG/JPEG folder
    python -m mlflow_project_store.predict runs:/<run id>/model t10k-images-idx3-ubyte.gz
    python -m mlflow_project_store.predict models:/diabetes/3 rows.csv --output out.csv

The model comes from the tracking server in MLFLOW_TRACKING_URI. The input is checked
first, then sent through the model --batch-size at a time (memory stays bounded whatever
its size); predictions are printed as a table and written to a CSV file. Pickled models
are refused unless --allow-pickle is given. Any problem is one line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_project_store.project_tools.cli import OneLineParser, number

from .inputs import Input, InputError, open_input
from .safety import PICKLE_ENV, RISK, UnsafeModelError
from .safety import load_model as load_checked

# Keep stderr for errors: no download progress bars around the one-line messages.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The MNIST models are exported (pt2) on the CPU and cannot move device: on a host with CUDA,
# MLflow would load them on the GPU and fail.
os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
# No pickled code runs in this process unless --allow-pickle says so (see predict.safety).
os.environ[PICKLE_ENV] = "false"

MAX_BATCH = 65536


class PredictError(Exception):
    """A model or server problem, worded for the user."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_uri", help="runs:/<id>/model, models:/<name>/<version>, ...")
    parser.add_argument("input", type=Path, help="digit images (folder/file), IDX file or CSV")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--show", type=number(int, 0), default=20, help="rows to print")
    parser.add_argument(
        "--batch-size",
        type=number(int, 1, MAX_BATCH),
        default=256,
        help="inputs per model call (bounds memory)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help=f"load pickled (cloudpickle, pickle) models too: {RISK}; only for models you trust",
    )
    return parser.parse_args(argv)


def check_output(path: Path) -> None:
    """The CSV can be written where asked: checked before the model is loaded."""
    if path.is_dir():
        raise InputError(f"--output {path}: is a folder, expected a CSV file name")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"--output {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"--output {path}: folder {folder} is not writable")


@contextmanager
def model_errors(model_uri: str, prog: str = "predict") -> Iterator[None]:
    """Around fetching ``model_uri``: first a quick look at the tracking server that a run or
    registry URI needs (one line from ``prog`` if it is down), then MLflow's and the file
    system's errors as one PredictError line."""
    from mlflow.exceptions import MlflowException

    from mlflow_project_store.project_tools.tracking import require_tracking_server

    if model_uri.startswith(("runs:/", "models:/")):
        require_tracking_server(prog)
    try:
        yield
    except MlflowException as exc:
        first_line = exc.message.strip().splitlines()[0]
        raise PredictError(f"cannot load model {model_uri!r}: {first_line}") from None
    except OSError as exc:
        raise PredictError(f"cannot load model {model_uri!r}: {exc}") from None


def load_model(model_uri: str, allow_pickle: bool = False):
    with model_errors(model_uri):
        return load_checked(model_uri, allow_pickle)


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


def predict_all(model, source: Input, batch_size: int, output: Path, show: int):
    """Predict every batch, appending to a temporary CSV that replaces ``output`` at the end.

    Returns (number of rows, the first ``show`` rows).
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would outlive the rename
    count, shown = 0, []
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            for names, data in source.batches(batch_size):
                table = predict(model, source.kind, names, data)
                table.to_csv(stream, index=False, header=count == 0)
                if count < show:
                    shown.append(table.head(show - count))
                count += len(table)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count, (pd.concat(shown) if shown else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_output(args.output)
        source = open_input(args.input)
        model = load_model(args.model_uri, args.allow_pickle)
        count, head = predict_all(model, source, args.batch_size, args.output, args.show)
    except (InputError, PredictError, UnsafeModelError, OSError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    if head is not None:
        print(head.to_string(index=False))
    more = f" ({count - args.show} more rows there)" if count > args.show else ""
    print(f"{count} predictions written to {args.output}{more}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
