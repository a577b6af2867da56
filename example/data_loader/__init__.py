"""Shared data loading for the MLflow projects of this repository.

Projects reach this one package through a relative symlink in their folder
(``projects/X/data_loader -> ../../example/data_loader``), so the code exists once and
``mlflow run`` (local, uv, conda, and Docker image builds) sees it.

The torch parts (``load_mnist``, ``make_loader``, ...) import torch on first use only, so a
scikit-learn project can use ``load_mnist_arrays`` or ``load_diabetes_split`` in an
environment without torch.
"""

from importlib import import_module

from .idx import IDXFormatError, IDXSizeLimitError, read_idx, write_idx
from .mnist_files import BUNDLED_SAMPLE, MNISTNotFoundError, load_mnist_arrays
from .tabular import load_diabetes_split

_TORCH_PARTS = {
    "MNISTDataset": "mnist",
    "MNISTDownloadError": "mnist",
    "load_mnist": "mnist",
    "make_loader": "loaders",
    "split_train_val": "loaders",
}

__all__ = [
    "BUNDLED_SAMPLE",
    "IDXFormatError",
    "IDXSizeLimitError",
    "MNISTNotFoundError",
    "load_diabetes_split",
    "load_mnist_arrays",
    "read_idx",
    "write_idx",
    *_TORCH_PARTS,
]


def __getattr__(name: str) -> object:
    if name in _TORCH_PARTS:
        return getattr(import_module(f".{_TORCH_PARTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
