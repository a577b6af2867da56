"""The mnist recipe (``mnist.recipe``) trained data-parallel with DistributedDataParallel.

Every rank runs this loop on its own process. A DistributedSampler with a seeded shuffle hands
each rank its share of every global batch: with the same seed, the union of the ranks' batches
at a step is the batch one process would train on. DDP averages the gradients across ranks
during ``backward``, so every rank takes the same optimizer step. Losses, accuracies and
counts are summed over ranks before anyone reports them. Kept free of MLflow: train.py records
on rank 0 only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from ..model import DigitNet, random_affine
from ..recipe import (
    LABEL_SMOOTHING,
    EpochResult,
    NonFiniteLoss,
    evaluate,
    optimizer_and_schedule,
)

EVAL_BATCH = 1000


class Ranks(NamedTuple):
    """Where this process stands: its global rank, its rank on its node, how many there are."""

    rank: int
    local_rank: int
    world_size: int


def global_sums(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over all ranks (every rank must call this at the same point)."""
    sums = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return sums.tolist()


def global_max(value: float, device: torch.device) -> float:
    top = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return top.item()


def evaluate_shards(
    model: torch.nn.Module, dataset: Dataset, ranks: Ranks, device: torch.device
) -> tuple[float, float]:
    """(mean loss, accuracy) on all of ``dataset``: each rank scores every world_size-th item."""
    shard = Subset(dataset, range(ranks.rank, len(dataset), ranks.world_size))  # type: ignore[arg-type]
    loss = accuracy = 0.0
    if len(shard):
        loss, accuracy = evaluate(model, DataLoader(shard, batch_size=EVAL_BATCH), device)
    total_loss, correct, count = global_sums(
        [loss * len(shard), accuracy * len(shard), len(shard)], device
    )
    return total_loss / count, correct / count


def share_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's batch-norm statistics, the ones the logged model carries.

    DDP broadcasts them before each training forward; each rank's last forward then updates
    its own copy, so they differ again until this.
    """
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def fit(
    train_set: Dataset,
    val_set: Dataset,
    ranks: Ranks,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    on_epoch: Callable[[EpochResult, float], None] = lambda result, images_per_second: None,
    progress: bool = True,
) -> DigitNet:
    """Train a fresh DigitNet on every rank at once; return this rank's copy (all are equal).

    ``batch_size`` is the global batch, split evenly across ranks (the caller checks that it
    divides). After every step, ``on_step`` gets the step's loss averaged over ranks;
    after each epoch, ``on_epoch`` gets the epoch's metrics over all ranks and the images
    trained per second by all ranks together. Both are called on every rank.

    Raise :class:`mnist.recipe.NonFiniteLoss` on every rank at once, before the step's
    ``backward``, when the step's loss is NaN or infinite on any rank: the loss is summed over
    ranks at every step, so that all of them stop at the same step and none waits in
    ``backward`` for a rank that stopped.
    """
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's too)
    model = DigitNet().to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    torch.manual_seed(seed + ranks.rank)  # each rank its own shifts and dropout masks
    sampler = DistributedSampler(
        train_set, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True, seed=seed
    )
    loader = DataLoader(
        train_set,
        batch_size=batch_size // ranks.world_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    optimizer, scheduler = optimizer_and_schedule(
        ddp.parameters(), learning_rate, epochs * len(loader)
    )
    step = 0
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)  # a new seeded shuffle each epoch, the same on every rank
        ddp.train()
        total, count = 0.0, 0
        start = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            disable=None if progress else True,
        )
        for images, labels in bar:
            images = random_affine(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(ddp(images), labels, label_smoothing=LABEL_SMOOTHING)
            step += 1
            step_loss = loss.item()
            loss_sum, ranks_sum = global_sums([step_loss, 1.0], device)
            if not math.isfinite(loss_sum):
                raise NonFiniteLoss(epoch, step, loss_sum / ranks_sum)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces and averages the gradients here
            optimizer.step()
            scheduler.step()
            total += step_loss * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            on_step(step, loss_sum / ranks_sum)
        elapsed = global_max(time.perf_counter() - start, device)
        loss_sum, images_sum = global_sums([total, count], device)
        share_buffers(model)
        val_loss, val_accuracy = evaluate_shards(model, val_set, ranks, device)
        result = EpochResult(epoch, loss_sum / images_sum, val_loss, val_accuracy)
        on_epoch(result, images_sum / elapsed)
    return model
