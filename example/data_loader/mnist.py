"""MNIST as torch tensors: find the IDX files, validate them, optionally download them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .idx import IDXFormatError, read_idx

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "mnist_sample"
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IMAGE_SIZE = 28
NUM_CLASSES = 10


class MNISTNotFoundError(FileNotFoundError):
    """The IDX files of a split are not where the caller pointed."""


class MNISTDownloadError(RuntimeError):
    """torchvision could not download MNIST (typically: no network)."""


class MNISTDataset(TensorDataset):
    """MNIST digits as ``float32`` images ``(N, 1, 28, 28)`` in [0, 1] and ``int64`` labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: Path) -> None:
        super().__init__(images, labels)
        self.source = source

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]


def idx_paths(root: Path, split: str) -> tuple[Path, Path]:
    """Return (images, labels) IDX paths of ``split`` under ``root``.

    Looks in the flat folder ``root`` and in torchvision's layout ``root/MNIST/raw``, taking
    each file plain or gzip'd.
    """
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


def read_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and cross-check one split's images and labels."""
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IDXFormatError(images_path, f"images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise IDXFormatError(
            labels_path, f"{len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(labels.argmax())
        raise IDXFormatError(labels_path, f"label {labels[bad]} at index {bad} is outside 0-9")
    image_tensor = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return image_tensor, torch.from_numpy(labels.astype("int64"))


def load_mnist(
    root: str | Path | None = None, split: str = "train", download: bool = False
) -> MNISTDataset:
    """Load the ``train`` or ``test`` split; ``root=None`` uses the bundled sample.

    With ``download=True`` and no files under ``root``, torchvision downloads the full set there.
    """
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(SPLIT_PREFIX)}, got {split!r}")
    folder = BUNDLED_SAMPLE if root is None else Path(root).expanduser()
    try:
        images_path, labels_path = idx_paths(folder, split)
    except MNISTNotFoundError:
        if not download:
            raise
        download_mnist(folder)
        images_path, labels_path = idx_paths(folder, split)
    images, labels = read_split(images_path, labels_path)
    return MNISTDataset(images, labels, source=images_path.parent)


def download_mnist(root: Path) -> None:
    """Download the full MNIST set into ``root/MNIST/raw`` with torchvision."""
    from torchvision.datasets import MNIST

    root.mkdir(parents=True, exist_ok=True)
    try:
        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise MNISTDownloadError(
            f"could not download MNIST into {root} ({exc}); offline, copy the four IDX files "
            f"(train-images-idx3-ubyte[.gz], ...) into {root} and load without download"
        ) from exc
