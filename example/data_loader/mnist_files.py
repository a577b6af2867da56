"""MNIST's four IDX files: where they are and what they hold, as numpy arrays (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .idx import IDXFormatError, read_idx

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "mnist_sample"
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IMAGE_SIZE = 28
NUM_CLASSES = 10
# A training split is cut into train and validation parts: both need an image.
MIN_IMAGES = {"train": 2, "test": 1}


class MNISTNotFoundError(FileNotFoundError):
    """The IDX files of a split are not where the caller pointed."""


def idx_paths(root: Path, split: str) -> tuple[Path, Path]:
    """Return (images, labels) IDX paths of ``split`` under ``root``.

    Looks in the flat folder ``root`` and in torchvision's layout ``root/MNIST/raw``, taking
    each file plain or gzip'd.
    """
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(SPLIT_PREFIX)}, got {split!r}")
    prefix = SPLIT_PREFIX[split]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for folder in (root, root / "MNIST" / "raw"):
        found = [_existing(folder / name) for name in names]
        if all(found):
            return found[0], found[1]
    raise MNISTNotFoundError(
        f"no MNIST {split} files in {root}: expected {names[0]}[.gz] and {names[1]}[.gz] "
        f"there or in {root / 'MNIST' / 'raw'} (or pass download=True)"
    )


def _existing(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_split(
    images_path: Path, labels_path: Path, min_images: int = 1, max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one split: uint8 images ``(N, 28, 28)`` and labels ``(N,)``.

    ``max_bytes`` caps each file's data (see ``data_loader.idx``).
    """
    images = read_idx(images_path, expected_ndim=3, max_bytes=max_bytes)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IDXFormatError(images_path, f"images are {images.shape[1:]}, expected 28x28")
    if len(images) < min_images:
        raise IDXFormatError(
            images_path, f"holds {len(images)} image(s), this split needs at least {min_images}"
        )
    labels = read_idx(labels_path, expected_ndim=1, max_bytes=max_bytes)
    if len(images) != len(labels):
        raise IDXFormatError(
            labels_path, f"{len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(labels.argmax())
        raise IDXFormatError(labels_path, f"label {labels[bad]} at index {bad} is outside 0-9")
    return images, labels


def load_mnist_arrays(
    root: str | Path | None = None, split: str = "train", max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``train`` or ``test`` split as numpy arrays; ``root=None`` is the bundled sample."""
    folder = BUNDLED_SAMPLE if root is None else Path(root).expanduser()
    return read_split(*idx_paths(folder, split), MIN_IMAGES[split], max_bytes)
