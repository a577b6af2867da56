"""Train the MNIST digit classifier and record it in MLflow.

Run through MLflow (``mlflow run projects/mnist-conda -P epochs=3``) or directly from the
project folder (``python -m mnist.train --epochs 3``); the defaults are the MLproject's.
Parameters are checked before anything heavy is imported, so a typo fails in a second with one
line that names the bad value.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from project_tools.cli import OneLineParser, boolean, fail, folder, model_name, number, seed
from project_tools.docker_guard import require_kept_artifacts
from project_tools.lifecycle import Stopper
from project_tools.tracking import record_source, require_tracking_server, shown_store

BUNDLED = "bundled"
PROG = "mnist.train"
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_WORKERS = 32
RUN_ID = re.compile(r"[0-9a-f]{32}")
# What a resumed run takes from its checkpoint rather than from the command line: the
# parameters that define the training. device, num_workers and registered_model_name may change.
TRAINING_PARAMS = ("epochs", "batch_size", "learning_rate", "data_dir", "val_fraction", "seed")


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
    """An argparse type: a device name that this machine has (auto and cpu always are)."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    if text not in ("auto", "cpu"):
        from .recipe import pick_device  # imports torch: only for a GPU asked for by name

        try:
            pick_device(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def run_id(text: str) -> str:
    if text and not RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected an MLflow run id (32 hex digits), got {text!r}")
    return text


def add_recipe_arguments(
    parser: argparse.ArgumentParser,
    device: Callable[[str], str] = device_name,
    batch_help: str = "images per training step",
) -> None:
    """The recipe's parameters with their rules; the defaults are the MLproject's.

    mnist.distributed.train trains the same recipe data-parallel: it adds these with its own
    device rule and batch help, and takes the defaults of its own entry point.
    """
    add = parser.add_argument
    add("--epochs", type=number(int, 1))
    add("--batch-size", type=number(int, 1), help=batch_help)
    add("--learning-rate", type=number(float, 0, open_low=True))
    add(
        "--data-dir",
        type=data_dir,
        help="folder with the MNIST IDX files (flat or torchvision layout), or 'bundled'",
    )
    add(
        "--download",
        type=boolean,
        help="download the full MNIST set into --data-dir with torchvision when missing",
    )
    add("--val-fraction", type=number(float, 0, 1, open_low=True, open_high=True))
    add("--seed", type=seed)
    add("--device", type=device, help="auto picks CUDA when present")
    add("--num-workers", type=number(int, 0, MAX_WORKERS))
    add("--registered-model-name", type=model_name, help="register the model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add_recipe_arguments(parser)
    parser.add_argument(
        "--resume-from",
        type=run_id,
        help="continue this KILLED run from its logged checkpoint, with its own parameters",
    )
    parser.use_mlproject_defaults(__file__, "main")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace):
    """Load the data and pick the device; raises the loader's errors on bad input."""
    from data_loader import load_mnist

    from .recipe import pick_device

    root = None if args.data_dir == BUNDLED else args.data_dir
    train_full = load_mnist(root, "train", download=args.download)
    test = load_mnist(root, "test", download=args.download)
    return train_full, test, pick_device(args.device)


def resume_point(args: argparse.Namespace) -> dict | None:
    """The checkpoint of ``args.resume_from``, its training parameters applied to ``args``.

    Exits with one line when the run cannot be resumed.
    """
    if not args.resume_from:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    from .tracking import load_checkpoint

    try:
        run = mlflow.get_run(args.resume_from)
    except MlflowException:
        fail(PROG, f"no run {args.resume_from} in {shown_store()} to resume")
    if run.info.status != "KILLED":
        fail(PROG, f"run {args.resume_from} is {run.info.status}: only a KILLED run resumes")
    try:
        checkpoint = load_checkpoint(args.resume_from)
    except (MlflowException, OSError) as exc:
        fail(PROG, f"run {args.resume_from} has no checkpoint to resume from ({exc})")
    except Exception as exc:  # torch.load's errors on a damaged file vary with the damage
        fail(
            PROG,
            f"the checkpoint of run {args.resume_from} cannot be read ({type(exc).__name__}): "
            "it is damaged; the run is left as it is",
        )
    missing = [key for key in TRAINING_PARAMS if key not in checkpoint.get("args", {})]
    if missing or "data_digest" not in checkpoint:
        fail(PROG, f"the checkpoint of run {args.resume_from} is not one that mnist.train wrote")
    changed = [
        f"{key}={checkpoint['args'][key]}"
        for key in TRAINING_PARAMS
        if checkpoint["args"][key] != getattr(args, key)
    ]
    if changed:
        print(f"{PROG}: resuming with the run's own {', '.join(changed)}", file=sys.stderr)
    for key in TRAINING_PARAMS:
        setattr(args, key, checkpoint["args"][key])
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_kept_artifacts(PROG)  # a model that a container would lose: stop here
    with Stopper(PROG) as stopper:
        return train(args, stopper)


def train(args: argparse.Namespace, stopper: Stopper) -> int:
    """Train and record one run; stop KILLED with a checkpoint when ``stopper`` asks."""
    require_tracking_server(PROG)
    resume = resume_point(args)

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

    from .recipe import EpochResult, NonFiniteLoss, Stopped, evaluate, fit
    from .tracking import (
        CHECKPOINT,
        TrackingError,
        dataset_digest,
        log_datasets,
        log_epoch_metrics,
        log_model,
        log_new_params,
        log_step_loss,
        metrics_sent_at_exit,
        save_checkpoint,
    )

    try:
        train_full, test, device = prepare(args)
    except (IDXFormatError, MNISTNotFoundError, MNISTDownloadError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    digest = dataset_digest(train_full)
    if resume is not None and resume["data_digest"] != digest:
        fail(PROG, f"the training data differ from those of run {args.resume_from}")

    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True  # same seed, same metrics on CUDA too
    torch.backends.cudnn.benchmark = False
    train_set, val_set = split_train_val(train_full, args.val_fraction, args.seed)
    options = {"num_workers": args.num_workers, "pin_memory": device.type == "cuda"}
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed, **options)
    val_loader = make_loader(val_set, 1000, **options)
    test_loader = make_loader(test, 1000, **options)

    def on_epoch(result: EpochResult) -> None:
        metrics = result._asdict()
        log_epoch_metrics(metrics.pop("epoch"), metrics)
        print(
            f"epoch {result.epoch}: train loss {result.train_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, val accuracy {result.val_accuracy:.2%}"
        )

    with mlflow.start_run(run_id=args.resume_from or None) as run:
        run_id = run.info.run_id
        if resume is None:
            log_new_params(
                vars(args)
                | {
                    "device_used": str(device),
                    "train_size": len(train_set),
                    "val_size": len(val_set),
                    "test_size": len(test),
                    "recipe": "DigitNet, AdamW, OneCycleLR, label smoothing 0.1, random affine",
                }
            )
            log_datasets(train_full, test)
            record_source()
        else:
            mlflow.set_tag("resumed_at_step", resume["step"])
            link_launcher_run(run_id)
        try:
            with metrics_sent_at_exit():
                model = fit(
                    train_loader,
                    val_loader,
                    args.epochs,
                    args.learning_rate,
                    device,
                    log_step_loss,
                    on_epoch,
                    resume=resume,
                    should_stop=lambda: stopper.requested,
                )
        except NonFiniteLoss as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            mlflow.end_run("FAILED")
            return 1
        except Stopped as stop:
            checkpoint = stop.checkpoint | {
                "args": {key: getattr(args, key) for key in TRAINING_PARAMS},
                "data_digest": digest,
            }
            path = save_checkpoint(checkpoint, run_id)
            stopper.note = f"the checkpoint is kept at {path}"
            mlflow.log_artifact(str(path), Path(CHECKPOINT).parent.as_posix())
            mlflow.end_run("KILLED")
            print(
                f"{PROG}: stopped on {stopper.reason} at epoch {checkpoint['epoch']}, "
                f"step {checkpoint['step']}; run {run_id} is KILLED with its checkpoint; "
                f"continue it with -P resume_from={run_id}",
                file=sys.stderr,
            )
            stopper.end_launcher()
            return stopper.exit_status
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
    print(f"Tracking store: {shown_store()}")
    return 0


def link_launcher_run(resumed: str) -> None:
    """``mlflow run -P resume_from=X`` made a run of its own before this process started:
    nest it under X in the UI and say where the training went."""
    import mlflow

    launcher = os.environ.get("MLFLOW_RUN_ID")
    if not launcher or launcher == resumed:
        return
    client = mlflow.MlflowClient()
    client.set_tag(launcher, "mlflow.parentRunId", resumed)
    client.set_tag(
        launcher,
        "mlflow.note.content",
        f"This launch resumed run {resumed}: its metrics, checkpoint and model are there.",
    )


if __name__ == "__main__":
    sys.exit(main())
