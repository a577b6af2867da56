"""MNIST as torch tensors, with an optional download through torchvision."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .mnist_files import BUNDLED_SAMPLE, MIN_IMAGES, MNISTNotFoundError, idx_paths, read_split


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


def load_mnist(
    root: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    max_bytes: int | None = None,
) -> MNISTDataset:
    """Load the ``train`` or ``test`` split; ``root=None`` uses the bundled sample.

    With ``download=True`` and no files under ``root``, torchvision downloads the full set there.
    A file holding more than ``max_bytes`` of data is refused (default: the environment
    variable ``DATA_LOADER_MAX_IDX_MB``, else 128 MiB), as is an empty split or a training
    split of one image.
    """
    folder = BUNDLED_SAMPLE if root is None else Path(root).expanduser()
    try:
        images_path, labels_path = idx_paths(folder, split)
    except MNISTNotFoundError:
        if not download:
            raise
        download_mnist(folder)
        images_path, labels_path = idx_paths(folder, split)
    images, labels = read_split(images_path, labels_path, MIN_IMAGES[split], max_bytes)
    image_tensor = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)
    label_tensor = torch.from_numpy(labels.astype("int64"))
    return MNISTDataset(image_tensor, label_tensor, source=images_path.parent)


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
