"""The training recipe: AdamW, one-cycle schedule, label smoothing, light affine augmentation.

Kept free of MLflow so that train.py (which records the run) and benchmarks/ (which times
it) share one loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import islice
from typing import NamedTuple

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .model import DigitNet, random_affine

WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.25
LABEL_SMOOTHING = 0.1


class EpochResult(NamedTuple):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA or MPS device must exist (ValueError
    says why not). mnist.train's ``--device`` checks its value with this before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available: use auto or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} "
            f"CUDA devices: use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {name!r} was asked for but MPS (Apple's GPU) is not available: use auto or cpu"
        )
    return device


def evaluate(
    model: torch.nn.Module, loader: DataLoader, device: torch.device
) -> tuple[float, float]:
    """Return (mean loss, accuracy) of ``model`` on ``loader``."""
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


def optimizer_and_schedule(
    parameters, learning_rate: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's AdamW and its one-cycle schedule, peaking at ``learning_rate``."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=total_steps, pct_start=WARMUP_FRACTION
    )
    return optimizer, scheduler


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite: the run cannot recover from it."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"the training loss became {loss} at epoch {epoch}, step {step}: lower the "
            f"learning rate"
        )
        self.epoch, self.step, self.loss = epoch, step, loss


class Stopped(Exception):
    """Training stopped on request after a step; ``checkpoint`` resumes it exactly."""

    def __init__(self, checkpoint: dict) -> None:
        super().__init__(f"stopped at epoch {checkpoint['epoch']}, step {checkpoint['step']}")
        self.checkpoint = checkpoint


def fit(
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    learning_rate: float,
    device: torch.device,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    on_epoch: Callable[[EpochResult], None] = lambda result: None,
    progress: bool = True,
    resume: dict | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DigitNet:
    """Train a DigitNet; ``learning_rate`` is the peak of the one-cycle schedule.

    Seed torch (``torch.manual_seed``) before calling for a reproducible run. When
    ``should_stop()`` is true after a step, raise :class:`Stopped` with a checkpoint; passing
    that checkpoint back as ``resume`` continues exactly where it stopped (same data order,
    augmentation and dropout draws), so the result equals an uninterrupted run's on the CPU.
    Raise :class:`NonFiniteLoss` as soon as a step's loss is NaN or infinite.
    """
    model = DigitNet().to(device)
    optimizer, scheduler = optimizer_and_schedule(
        model.parameters(), learning_rate, epochs * len(train_loader)
    )
    # The shuffle order gets a generator of its own: the DataLoader also draws worker seeds
    # from its generator, once per iterator, which a resumed process would do differently.
    sampler = train_loader.sampler
    order = getattr(sampler, "generator", None)
    if order is not None:
        order = sampler.generator = torch.Generator().set_state(order.get_state())
    first_epoch, skip, step, total, count = 1, 0, 0, 0.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        first_epoch, skip, step = resume["epoch"], resume["batch"], resume["step"]
        total, count = resume["loss_sum"], resume["count"]
    for epoch in range(first_epoch, epochs + 1):
        if resume is not None and epoch == first_epoch:
            if order is not None:
                order.set_state(resume["order"])
            torch.set_rng_state(resume["torch_rng"])
            if device.type == "cuda" and resume["cuda_rng"]:
                torch.cuda.set_rng_state_all(resume["cuda_rng"])
        else:
            skip, total, count = 0, 0.0, 0
        order_state = order.get_state() if order is not None else torch.empty(0)
        model.train()
        batches = islice(iter(train_loader), skip, None)
        # disable=None hides the bar when the output is not a terminal (logs, CI).
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            total=len(train_loader),
            initial=skip,
            disable=None if progress else True,
        )
        for batch, (images, labels) in enumerate(bar, start=skip + 1):
            images = random_affine(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            step_loss = loss.item()
            if not math.isfinite(step_loss):
                raise NonFiniteLoss(epoch, step, step_loss)
            total += step_loss * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            on_step(step, step_loss)
            if should_stop():
                bar.close()
                raise Stopped(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "batch": batch,
                        "step": step,
                        "loss_sum": total,
                        "count": count,
                        "order": order_state,
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    }
                )
        on_epoch(EpochResult(epoch, total / count, *evaluate(model, val_loader, device)))
    return model
