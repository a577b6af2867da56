"""DataLoader factory shared by the projects: seeded shuffles and a seeded train/val split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset, random_split


def split_train_val(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Split ``dataset`` into (train, val) with a generator seeded by ``seed``.

    ``val_fraction`` is in (0, 1); the entry points check their values before calling. Each
    part gets at least one item, so a dataset needs two.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if size < 2:
        raise ValueError(f"cannot split {size} item(s) into train and validation: need 2 or more")
    val_size = min(size - 1, max(1, round(size * val_fraction)))
    generator = torch.Generator().manual_seed(seed)
    train, val = random_split(dataset, [size - val_size, val_size], generator=generator)
    return train, val


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
