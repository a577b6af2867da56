"""Train the MNIST digit classifier and record it in MLflow.

Run through MLflow (``mlflow run projects/mnist-conda -P epochs=3``) or directly
(``python train.py --epochs 3``). Parameters are checked before anything heavy is
imported, so a typo fails in a second with one line that names the bad value.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from data_loader import MNISTDataset

BUNDLED = "bundled"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def checked(kind: Callable[[str], float], minimum: float, inclusive: bool, what: str):
    """An argparse type that converts with ``kind`` and enforces a lower bound."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = value >= minimum if inclusive else value > minimum
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return convert


def data_dir(text: str) -> str:
    if text != BUNDLED and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(
            f"no such folder {text!r}: expected a folder with the MNIST IDX files, "
            f"or {BUNDLED!r} for the bundled sample"
        )
    return text


def device_name(text: str) -> str:
    if text not in ("auto", "cpu", "mps") and not text.startswith("cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="train.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--epochs", type=checked(int, 1, True, "an integer >= 1"), default=5)
    add("--batch-size", type=checked(int, 1, True, "an integer >= 1"), default=64)
    add("--learning-rate", type=checked(float, 0, False, "a number > 0"), default=1e-3)
    add(
        "--data-dir",
        type=data_dir,
        default=BUNDLED,
        help="folder with the MNIST IDX files (flat or torchvision layout), or 'bundled'",
    )
    add(
        "--download",
        type=boolean,
        default=False,
        help="download the full MNIST set into --data-dir with torchvision when missing",
    )
    add("--val-fraction", type=checked(float, 0, False, "a number between 0 and 1"), default=0.1)
    add("--seed", type=checked(int, 0, True, "an integer >= 0"), default=42)
    add("--device", type=device_name, default="auto", help="auto picks CUDA when present")
    add("--num-workers", type=checked(int, 0, True, "an integer >= 0"), default=0)
    add("--registered-model-name", default="", help="register the model under this name")
    args = parser.parse_args(argv)
    if args.val_fraction >= 1:
        parser.error(
            f"argument --val-fraction: expected a number between 0 and 1, got {args.val_fraction!r}"
        )
    return args


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available: use auto or cpu"
        )
    return device


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    on_step: Callable[[float], None],
) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    from torch.nn import functional as F

    from model import random_shift

    model.train()
    total, count = 0.0, 0
    for images, labels in loader:
        images = random_shift(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step_loss = loss.item()
        total += step_loss * len(labels)
        count += len(labels)
        on_step(step_loss)
    return total / count


def evaluate(
    model: torch.nn.Module, loader: DataLoader, device: torch.device
) -> tuple[float, float]:
    """Return (mean loss, accuracy) of ``model`` on ``loader``."""
    import torch
    from torch.nn import functional as F

    model.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
            count += len(labels)
    return loss / count, correct / count


LOG_EVERY_STEPS = 10


def log_new_params(params: dict[str, object]) -> None:
    """Log the params that ``mlflow run`` has not logged already (it logs the -P values)."""
    import mlflow

    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged and v != ""})


def log_datasets(train_full: MNISTDataset, test: MNISTDataset) -> None:
    import warnings

    import mlflow

    for dataset, context in ((train_full, "training"), (test, "testing")):
        with warnings.catch_warnings():
            # MLflow registers its local-file dataset source twice and warns that a local path
            # "can be interpreted in multiple ways"; both interpretations are the same class.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            mlflow.log_input(
                mlflow.data.from_numpy(
                    features=dataset.images.numpy(),
                    targets=dataset.labels.numpy(),
                    source=str(dataset.source),
                    name=f"mnist-{context}",
                ),
                context=context,
            )


def log_model(model: torch.nn.Module, example: torch.Tensor, registered_name: str) -> str:
    """Log the model (pt2 format, tensor signature) and register it when a name is given."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1, 28, 28))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 10))]),
    )
    info = mlflow.pytorch.log_model(
        model.cpu().eval(),
        name="model",
        signature=signature,
        input_example=example.numpy(),
        # The flavor's pinned defaults (torch, ...): skips a 10 s import-tracing subprocess.
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
    )
    if registered_name:
        try:
            version = mlflow.register_model(info.model_uri, registered_name)
        except mlflow.exceptions.MlflowException as exc:
            print(
                f"train.py: error: the model is logged at {info.model_uri} but registering it "
                f"as {registered_name!r} failed ({exc.message}); retry with "
                f"mlflow.register_model({info.model_uri!r}, {registered_name!r})",
                file=sys.stderr,
            )
            raise SystemExit(1) from exc
        print(f"Registered model {registered_name!r} version {version.version}")
    return info.model_uri


def prepare(args: argparse.Namespace):
    """Load the data and pick the device; raises the loader's errors on bad input."""
    from data_loader import load_mnist

    root = None if args.data_dir == BUNDLED else args.data_dir
    train_full = load_mnist(root, "train", download=args.download)
    test = load_mnist(root, "test", download=args.download)
    return train_full, test, pick_device(args.device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import mlflow
    import torch
    from tqdm import tqdm

    from data_loader import (
        IDXFormatError,
        MNISTDownloadError,
        MNISTNotFoundError,
        make_loader,
        split_train_val,
    )
    from model import DigitNet

    try:
        train_full, test, device = prepare(args)
    except (IDXFormatError, MNISTNotFoundError, MNISTDownloadError, ValueError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    train_set, val_set = split_train_val(train_full, args.val_fraction, args.seed)
    loader_options = {"num_workers": args.num_workers, "pin_memory": device.type == "cuda"}
    train_loader = make_loader(
        train_set, args.batch_size, shuffle=True, seed=args.seed, **loader_options
    )
    val_loader = make_loader(val_set, 1000, **loader_options)
    test_loader = make_loader(test, 1000, **loader_options)

    model = DigitNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=args.learning_rate,
        total_steps=args.epochs * len(train_loader),
        pct_start=0.25,
    )

    with mlflow.start_run() as run:
        params = {k: v for k, v in vars(args).items()}
        params.update(
            device_used=str(device),
            train_size=len(train_set),
            val_size=len(val_set),
            test_size=len(test),
            optimizer="AdamW",
            lr_schedule="OneCycleLR",
            model_class="DigitNet",
        )
        log_new_params(params)
        log_datasets(train_full, test)

        step = 0

        def on_step(loss: float) -> None:
            nonlocal step
            step += 1
            progress.set_postfix(loss=f"{loss:.3f}")
            if step % LOG_EVERY_STEPS == 0:
                mlflow.log_metric("train_loss_step", loss, step=step)

        for epoch in range(1, args.epochs + 1):
            progress = tqdm(
                train_loader, desc=f"epoch {epoch}/{args.epochs}", unit="batch", disable=None
            )
            train_loss = train_epoch(model, progress, optimizer, scheduler, device, on_step)
            val_loss, val_accuracy = evaluate(model, val_loader, device)
            mlflow.log_metrics(
                {"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy},
                step=epoch,
            )
            progress.write(
                f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val accuracy {val_accuracy:.2%}"
            )

        test_loss, test_accuracy = evaluate(model, test_loader, device)
        mlflow.log_metrics({"test_loss": test_loss, "test_accuracy": test_accuracy})
        model_uri = log_model(model, test.images[:4], args.registered_model_name)

    print(f"Test accuracy: {test_accuracy:.2%} on {len(test)} held-out digits")
    print(f"Run id: {run.info.run_id}  model: {model_uri}")
    print(f"Tracking store: {mlflow.get_tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
