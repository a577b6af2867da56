"""Shared data loading for the MLflow projects of this repository.

Projects reach this one package through a relative symlink in their folder
(``projects/X/data_loader -> ../../example/data_loader``), so the code exists once and
``mlflow run`` (local, uv, conda, and Docker image builds) sees it.

The MNIST parts import torch on first use only, so a scikit-learn project can use
``load_diabetes_split`` in an image without torch.
"""

from importlib import import_module

from .idx import IDXFormatError, read_idx, write_idx
from .tabular import load_diabetes_split

_TORCH_PARTS = {
    "BUNDLED_SAMPLE": "mnist",
    "MNISTDataset": "mnist",
    "MNISTDownloadError": "mnist",
    "MNISTNotFoundError": "mnist",
    "load_mnist": "mnist",
    "make_loader": "loaders",
    "split_train_val": "loaders",
}

__all__ = [
    "IDXFormatError",
    "load_diabetes_split",
    "read_idx",
    "write_idx",
    *_TORCH_PARTS,
]


def __getattr__(name: str) -> object:
    if name in _TORCH_PARTS:
        return getattr(import_module(f".{_TORCH_PARTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
