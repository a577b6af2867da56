"""One rank of the data-parallel MNIST training; torchrun starts one such process per rank.

``python -m mnist.distributed.launch`` checks the parameters and starts torchrun, which runs this
module with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. Rank 0
alone records the MLflow run (the one MLFLOW_RUN_ID names under `mlflow run`): params, metrics
averaged over ranks, datasets and the model. The other ranks never touch MLflow.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from project_tools.cli import OneLineParser

from .. import train as mnist_train
from ..train import BUNDLED

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from data_loader import MNISTDataset

    from ..recipe import EpochResult
    from .recipe import Ranks

PROG = "mnist.distributed.train"
ENTRY_POINT = "distributed"  # the MLproject entry point whose defaults these are
DEVICE = re.compile(r"auto|cpu|cuda")
# How gloo and NCCL say that another rank went away.
PEER_LOST = re.compile(r"remote (worker|process)|by peer", re.IGNORECASE)
# Set by mnist.distributed.launch: where rank 0 writes the id of the run it records.
RUN_ID_FILE = "MNIST_DDP_RUN_ID_FILE"
RECIPE = "DigitNet, AdamW, OneCycleLR, label smoothing 0.1, random affine; DDP"


def device_name(text: str) -> str:
    """mnist's device rule, narrowed: no index (each process takes the GPU of its local rank)
    and no MPS (torch.distributed has no backend for it)."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected auto, cpu or cuda (each process takes the GPU of its local rank), "
            f"got {text!r}"
        )
    return mnist_train.device_name(text)


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    """mnist.train's parameters and rules (the same recipe), with the defaults of the MLproject's
    ``distributed`` entry point."""
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    mnist_train.add_recipe_arguments(
        parser, device_name, "the global batch, split evenly across the processes"
    )
    parser.use_mlproject_defaults(__file__, ENTRY_POINT)
    return parser.parse_args(argv)


def per_process_batch(batch_size: int, world_size: int) -> int:
    """The batch of each process; ``batch_size`` is the global batch."""
    if batch_size % world_size:
        raise ValueError(
            f"argument --batch-size: {batch_size} does not split evenly across {world_size} "
            f"processes: expected a multiple of {world_size} (it is the global batch)"
        )
    return batch_size // world_size


def ranks_from_env() -> Ranks:
    from .recipe import Ranks

    try:
        return Ranks(*(int(os.environ[key]) for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE")))
    except KeyError as exc:
        raise ValueError(
            f"{exc.args[0]} is not set: start the training with python -m mnist.distributed.launch "
            "(or torchrun)"
        ) from None


def rank_device(name: str, local_rank: int) -> torch.device:
    """The CPU, or on CUDA the GPU of this process's local rank."""
    import torch

    from ..recipe import pick_device

    device = pick_device(name)
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
            "set nproc_per_node to at most that"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)  # NCCL and pinned memory use the current device
    return device


class Digits(NamedTuple):
    """The digits every rank holds; the samplers pick each rank's share."""

    full_train: MNISTDataset  # train and val together, as logged
    train: Dataset
    val: Dataset
    test: MNISTDataset


def load_data(args: argparse.Namespace, ranks: Ranks) -> Digits:
    """The same seeded split on every rank. With ``download``, local rank 0 loads first, so
    that each node downloads once."""
    import torch.distributed as dist

    from data_loader import load_mnist, split_train_val

    root = None if args.data_dir == BUNDLED else args.data_dir
    first = ranks.local_rank == 0
    if args.download and not first:
        dist.barrier()
    full_train = load_mnist(root, "train", args.download)
    test = load_mnist(root, "test", args.download)
    if args.download and first:
        dist.barrier()
    return Digits(full_train, *split_train_val(full_train, args.val_fraction, args.seed), test)


def fail(rank: int, exc: BaseException, status: int) -> int:
    """One line on stderr; the error file lets torchrun name this rank's error."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(exc)
    print(f"{PROG}: error: rank {rank}: {exc}", file=sys.stderr)
    return status


def tell_launcher(run_id: str) -> None:
    """Write the run id where the launcher reads it: if this rank dies (killed, or stopped by
    torchrun when another rank fails), the launcher ends the run FAILED."""
    if path := os.environ.get(RUN_ID_FILE):
        Path(path).write_text(run_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # record() writes the error file of an exception no handler expects, which torchrun reads.
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        return record(run_rank)(args)
    except RuntimeError as exc:
        if not PEER_LOST.search(str(exc)):
            raise
        # Another rank went away: a consequence, told in one line; the launcher names the cause.
        rank = os.environ.get("RANK", "?")
        print(f"{PROG}: error: rank {rank}: lost another rank: {exc}", file=sys.stderr)
        return 1


def run_rank(args: argparse.Namespace) -> int:
    """This process's part, as the rank that torchrun's environment names."""
    import torch
    import torch.distributed as dist

    from data_loader import IDXFormatError, MNISTDownloadError, MNISTNotFoundError

    from ..recipe import NonFiniteLoss

    try:
        ranks = ranks_from_env()
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        device = rank_device(args.device, ranks.local_rank)
        per_process_batch(args.batch_size, ranks.world_size)
    except ValueError as exc:
        return fail(ranks.rank, exc, 2)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        torch.backends.cudnn.deterministic = True  # same seed, same metrics on CUDA too
        torch.backends.cudnn.benchmark = False
        try:
            digits = load_data(args, ranks)
        except (IDXFormatError, MNISTNotFoundError, MNISTDownloadError) as exc:
            return fail(ranks.rank, exc, 2)
        try:
            if ranks.rank == 0:
                status = record_rank_zero(args, ranks, device, backend, digits)
            else:
                train_and_test(args, ranks, device, digits)
                status = 0
        except NonFiniteLoss as exc:
            # Every rank stops at the same step. Rank 0's run ended FAILED, without a model, as
            # the exception left its `with mlflow.start_run()`.
            status = fail(ranks.rank, exc, 1)
        # Leave together: a rank that tears gloo down while rank 0 still logs the model can
        # abort ("terminate called without an active exception").
        dist.barrier()
        return status
    finally:
        dist.destroy_process_group()


def train_and_test(
    args: argparse.Namespace,
    ranks: Ranks,
    device: torch.device,
    digits: Digits,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    on_epoch: Callable[[EpochResult, float], None] = lambda result, images_per_second: None,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Every rank's part: train, then score the test digits; return the model and test metrics."""
    from .recipe import evaluate_shards, fit

    model = fit(
        digits.train,
        digits.val,
        ranks,
        args.batch_size,
        args.epochs,
        args.learning_rate,
        args.seed,
        device,
        args.num_workers,
        on_step,
        on_epoch,
        progress=ranks.rank == 0,
    )
    test_loss, test_accuracy = evaluate_shards(model, digits.test, ranks, device)
    return model, {"test_loss": test_loss, "test_accuracy": test_accuracy}


def record_rank_zero(
    args: argparse.Namespace,
    ranks: Ranks,
    device: torch.device,
    backend: str,
    digits: Digits,
) -> int:
    """Rank 0's part: the same training, recorded in the MLflow run."""
    import mlflow

    from project_tools.registry import RegistryError, register_candidate
    from project_tools.tracking import record_source, shown_store

    from ..tracking import (
        TrackingError,
        log_datasets,
        log_epoch_metrics,
        log_model,
        log_new_params,
        log_step_loss,
        metrics_sent_at_exit,
    )

    def on_epoch(result: EpochResult, images_per_second: float) -> None:
        metrics = result._asdict() | {"train_images_per_second": images_per_second}
        log_epoch_metrics(metrics.pop("epoch"), metrics)
        print(
            f"epoch {result.epoch}: train loss {result.train_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, val accuracy {result.val_accuracy:.2%}, "
            f"{images_per_second:.0f} images/s on {ranks.world_size} processes"
        )

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
    with mlflow.start_run() as run:
        tell_launcher(run.info.run_id)
        log_new_params(
            vars(args)
            | {
                "world_size": ranks.world_size,
                "nproc_per_node": local_world,
                "nnodes": ranks.world_size // local_world,
                "backend": backend,
                "batch_size_per_process": args.batch_size // ranks.world_size,
                "device_used": str(device),
                "train_size": len(digits.train),
                "val_size": len(digits.val),
                "test_size": len(digits.test),
                "recipe": RECIPE,
            }
        )
        log_datasets(digits.full_train, digits.test)
        record_source()
        with metrics_sent_at_exit():
            model, test_metrics = train_and_test(
                args, ranks, device, digits, log_step_loss, on_epoch
            )
        mlflow.log_metrics(test_metrics)
        try:
            model_uri = log_model(model, digits.test.images[:4])
            if args.registered_model_name:
                register_candidate(
                    model_uri, args.registered_model_name, test_metrics, "test_accuracy", True
                )
        except (TrackingError, RegistryError) as exc:
            mlflow.end_run("FAILED")
            return fail(ranks.rank, exc, 1)

    accuracy = test_metrics["test_accuracy"]
    print(f"Test accuracy: {accuracy:.2%} on {len(digits.test)} held-out digits")
    print(f"Run id: {run.info.run_id}  model: {model_uri}  world size: {ranks.world_size}")
    print(f"Tracking store: {shown_store()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
