"""Train the MNIST digit classifier and record it in MLflow.

Run through MLflow (``mlflow run projects/mnist-conda -P epochs=3``) or directly from the
project folder (``python -m mnist.train --epochs 3``). Parameters are checked before anything
heavy is imported, so a typo fails in a second with one line that names the bad value.
"""

from __future__ import annotations

import argparse
import re
import sys

from project_tools.cli import OneLineParser, boolean, folder, model_name, number

BUNDLED = "bundled"
PROG = "mnist.train"
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_WORKERS = 32


def data_dir(text: str) -> str:
    if text == BUNDLED:
        return text
    try:
        return str(folder(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"no such folder {text!r}: expected a folder with the MNIST IDX files, "
            f"or {BUNDLED!r} for the bundled sample"
        ) from None


def device_name(text: str) -> str:
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--epochs", type=number(int, 1), default=5)
    add("--batch-size", type=number(int, 1), default=64)
    add("--learning-rate", type=number(float, 0, open_low=True), default=1e-3)
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
    add("--val-fraction", type=number(float, 0, 1, open_low=True, open_high=True), default=0.1)
    add("--seed", type=number(int, 0, 2**32 - 1), default=42)
    add("--device", type=device_name, default="auto", help="auto picks CUDA when present")
    add("--num-workers", type=number(int, 0, MAX_WORKERS), default=0)
    add("--registered-model-name", type=model_name, default="", help="register the model")
    return parser.parse_args(argv)


LOG_EVERY_STEPS = 10


def prepare(args: argparse.Namespace):
    """Load the data and pick the device; raises the loader's errors on bad input."""
    from data_loader import load_mnist

    from .recipe import pick_device

    root = None if args.data_dir == BUNDLED else args.data_dir
    train_full = load_mnist(root, "train", download=args.download)
    test = load_mnist(root, "test", download=args.download)
    return train_full, test, pick_device(args.device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import mlflow
    import torch

    from data_loader import (
        IDXFormatError,
        MNISTDownloadError,
        MNISTNotFoundError,
        make_loader,
        split_train_val,
    )
    from project_tools.registry import RegistryError, register_candidate

    from .recipe import EpochResult, evaluate, fit
    from .tracking import TrackingError, log_datasets, log_model, log_new_params

    try:
        train_full, test, device = prepare(args)
    except (IDXFormatError, MNISTNotFoundError, MNISTDownloadError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True  # same seed, same metrics on CUDA too
    torch.backends.cudnn.benchmark = False
    train_set, val_set = split_train_val(train_full, args.val_fraction, args.seed)
    options = {"num_workers": args.num_workers, "pin_memory": device.type == "cuda"}
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed, **options)
    val_loader = make_loader(val_set, 1000, **options)
    test_loader = make_loader(test, 1000, **options)

    def on_step(step: int, loss: float) -> None:
        if step % LOG_EVERY_STEPS == 0:
            mlflow.log_metric("train_loss_step", loss, step=step)

    def on_epoch(result: EpochResult) -> None:
        metrics = result._asdict()
        mlflow.log_metrics(metrics, step=metrics.pop("epoch"))
        print(
            f"epoch {result.epoch}: train loss {result.train_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, val accuracy {result.val_accuracy:.2%}"
        )

    with mlflow.start_run() as run:
        log_new_params(
            vars(args)
            | {
                "device_used": str(device),
                "train_size": len(train_set),
                "val_size": len(val_set),
                "test_size": len(test),
                "recipe": "DigitNet, AdamW, OneCycleLR, label smoothing 0.1, random shift",
            }
        )
        log_datasets(train_full, test)
        model = fit(
            train_loader, val_loader, args.epochs, args.learning_rate, device, on_step, on_epoch
        )
        test_loss, test_accuracy = evaluate(model, test_loader, device)
        test_metrics = {"test_loss": test_loss, "test_accuracy": test_accuracy}
        mlflow.log_metrics(test_metrics)
        try:
            model_uri = log_model(model, test.images[:4])
            if args.registered_model_name:
                register_candidate(
                    model_uri, args.registered_model_name, test_metrics, "test_accuracy", True
                )
        except (TrackingError, RegistryError) as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            mlflow.end_run("FAILED")
            return 1

    print(f"Test accuracy: {test_accuracy:.2%} on {len(test)} held-out digits")
    print(f"Run id: {run.info.run_id}  model: {model_uri}")
    print(f"Tracking store: {mlflow.get_tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
