"""Shared data loading for the MLflow projects of this repository.

Projects reach this one package through a relative symlink in their folder
(``projects/X/data_loader -> ../../example/data_loader``), so the code exists once and
``mlflow run`` (local, uv, conda, and Docker image builds) sees it.
"""

from .idx import IDXFormatError, read_idx, write_idx
from .loaders import make_loader, split_train_val
from .mnist import (
    BUNDLED_SAMPLE,
    MNISTDataset,
    MNISTDownloadError,
    MNISTNotFoundError,
    load_mnist,
)
from .tabular import load_diabetes_split

__all__ = [
    "BUNDLED_SAMPLE",
    "IDXFormatError",
    "MNISTDataset",
    "MNISTDownloadError",
    "MNISTNotFoundError",
    "load_diabetes_split",
    "load_mnist",
    "make_loader",
    "read_idx",
    "split_train_val",
    "write_idx",
]
