"""The training recipe: AdamW, one-cycle schedule, label smoothing, light shift augmentation.

Kept free of MLflow so that train.py (which records the run) and benchmarks/ (which times
it) share one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .model import DigitNet, random_shift

WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.25
LABEL_SMOOTHING = 0.1


class EpochResult(NamedTuple):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available: use auto or cpu"
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


def fit(
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    learning_rate: float,
    device: torch.device,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    on_epoch: Callable[[EpochResult], None] = lambda result: None,
    progress: bool = True,
) -> DigitNet:
    """Train a fresh DigitNet; ``learning_rate`` is the peak of the one-cycle schedule.

    Seed torch (``torch.manual_seed``) before calling for a reproducible run.
    """
    model = DigitNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=learning_rate,
        total_steps=epochs * len(train_loader),
        pct_start=WARMUP_FRACTION,
    )
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        # disable=None hides the bar when the output is not a terminal (logs, CI).
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            disable=None if progress else True,
        )
        for images, labels in bar:
            images = random_shift(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels, label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            step_loss = loss.item()
            total += step_loss * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            on_step(step, step_loss)
        on_epoch(EpochResult(epoch, total / count, *evaluate(model, val_loader, device)))
    return model
