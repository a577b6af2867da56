"""What train.py records in MLflow: params, datasets, the model and its registration."""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.time import get_current_time_millis

from data_loader import MNISTDataset

SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1, 28, 28))]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 10))]),
)


# The step loss is logged every LOG_EVERY_STEPS steps. Metric points are sent together, at
# most every SEND_EVERY_SECONDS (the first at once, the rest when training ends).
LOG_EVERY_STEPS = 10
SEND_EVERY_SECONDS = 5.0
_unsent: list[Metric] = []
_last_sent = -math.inf


class TrackingError(Exception):
    """Recording failed after training; the message says where the model is kept."""


def log_new_params(params: dict[str, object]) -> None:
    """Log the params that ``mlflow run`` has not logged already (it logs the -P values)."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged and v != ""})


def log_step_loss(step: int, loss: float) -> None:
    """Every ``LOG_EVERY_STEPS`` steps, log the step loss."""
    if step % LOG_EVERY_STEPS == 0:
        _keep([Metric("train_loss_step", loss, get_current_time_millis(), step)])


def log_epoch_metrics(epoch: int, metrics: dict[str, float]) -> None:
    now = get_current_time_millis()
    _keep([Metric(key, value, now, epoch) for key, value in metrics.items()])


def _keep(metrics: Sequence[Metric]) -> None:
    """Keep ``metrics`` to send; send what is kept if nothing was sent for a while."""
    _unsent.extend(metrics)
    if time.monotonic() - _last_sent >= SEND_EVERY_SECONDS:
        _send()


def _send() -> None:
    """Send the kept metric points to the active run in one request.

    A few batched requests (one every few seconds), sent synchronously with the
    client's usual retries: a restarted server delays training, it loses no point. MLflow's
    asynchronous queue (``synchronous=False``) measured slower here: with its threads started,
    the CPU training ran about 15% slower, even with nothing queued (a probe described in
    docs/performance.md; `python -m benchmarks.tracking_overhead` measures the result).
    """
    global _last_sent
    batch = _unsent.copy()
    _unsent.clear()
    if batch:
        MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=batch)
    _last_sent = time.monotonic()


@contextmanager
def metrics_sent_at_exit() -> Iterator[None]:
    """Train inside: the first step loss is sent at once, and what is unsent is sent on
    leaving, however training ends (a stopped run keeps every point up to its last step)."""
    global _last_sent
    _last_sent = -math.inf
    try:
        yield
    finally:
        _send()


def log_datasets(train_full: MNISTDataset, test: MNISTDataset) -> None:
    for dataset, context in ((train_full, "training"), (test, "testing")):
        with warnings.catch_warnings():
            # MLflow registers its local-file dataset source twice and warns that a local path
            # "can be interpreted in multiple ways"; both interpretations are the same class.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            source = mlflow.data.from_numpy(
                features=dataset.images.numpy(),
                targets=dataset.labels.numpy(),
                source=str(dataset.source),
                name=f"mnist-{context}",
            )
        log_input_once_stored(source, context)


def log_input_once_stored(source: mlflow.data.Dataset, context: str, tries: int = 3) -> None:
    """Log a dataset input, retrying when a concurrent run stored the same dataset first.

    The SQL store checks for the dataset and then inserts it; two runs logging the same digits
    at the same moment (a sweep, parallel jobs) can both miss it, and the slower insert fails
    on the unique constraint. On retry the dataset exists and only the link is inserted.
    """
    for attempt in range(tries):
        try:
            mlflow.log_input(source, context=context)
            return
        except MlflowException as exc:
            if "unique constraint" not in str(exc).lower() or attempt == tries - 1:
                raise


def log_model(model: torch.nn.Module, example: torch.Tensor) -> str:
    """Log the model (pt2 format, tensor signature); return its URI.

    If logging fails (an unreachable server or artifact store), the trained model is saved
    locally first and the error says where, and how to upload it.
    """
    model = model.cpu().eval()
    # The pt2 export is made on the CPU so that it loads anywhere; MLflow's check of the input
    # example would otherwise load it on CUDA where CUDA is present, and fail.
    os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
    options = {
        "signature": SIGNATURE,
        "input_example": example.numpy(),
        # The flavor's pinned defaults (torch, ...): skips a 10 s import-tracing subprocess.
        "pip_requirements": mlflow.pytorch.get_default_pip_requirements(),
    }
    with warnings.catch_warnings():
        # torch's pt2 writer warns about weights that share a storage, which matters only off
        # the CPU; these are on it (above), so the line would only alarm the reader.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        try:
            return mlflow.pytorch.log_model(model, name="model", **options).model_uri
        except Exception as exc:
            run_id = mlflow.active_run().info.run_id
            kept = Path(tempfile.gettempdir()) / "mnist-models" / run_id / "model"
            if not kept.exists():
                mlflow.pytorch.save_model(model, kept, **options)
            raise TrackingError(
                f"logging the model failed ({exc}); the trained model is kept at {kept}; "
                f"upload it with: mlflow artifacts log-artifacts --run-id {run_id} --local-dir "
                f"{kept} --artifact-path model"
            ) from exc


CHECKPOINT = "checkpoint/checkpoint.pt"


def dataset_digest(dataset: MNISTDataset) -> str:
    """MLflow's digest of ``dataset`` as :func:`log_datasets` records it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source")
        return mlflow.data.from_numpy(
            features=dataset.images.numpy(), targets=dataset.labels.numpy()
        ).digest


def save_checkpoint(checkpoint: dict, run_id: str) -> Path:
    """Write ``checkpoint`` to a local file (kept there if logging it fails); return the path."""
    path = Path(tempfile.gettempdir()) / "mnist-checkpoints" / run_id / Path(CHECKPOINT).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def load_checkpoint(run_id: str) -> dict:
    """The checkpoint logged in run ``run_id``; tensors and plain values only (no pickled code)."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT)
    return torch.load(path, map_location="cpu", weights_only=True)
