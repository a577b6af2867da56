"""Small models saved to a local folder (no server): a pt2 digit model, a skops regressor and a
cloudpickle model whose loading writes a marker file (the code a pickled model can run)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np


@functools.cache
def digit_model(folder: Path) -> Path:
    """A linear (N, 1, 28, 28) -> (N, 10) PyTorch model saved as pt2 (MLflow's default)."""
    import mlflow.pytorch
    import torch

    if not (folder / "MLmodel").exists():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        example = np.zeros((2, 1, 28, 28), np.float32)
        mlflow.pytorch.save_model(model, folder, input_example=example)
    return folder


@functools.cache
def diabetes_model(folder: Path) -> Path:
    """An ElasticNet on the diabetes rows, saved as skops (the sklearn flavor's default)."""
    import mlflow.sklearn
    from sklearn.linear_model import ElasticNet

    from data_loader import load_diabetes_split

    if not (folder / "MLmodel").exists():
        x_train, _, y_train, _ = load_diabetes_split()
        model = ElasticNet(alpha=0.01).fit(x_train, y_train)
        mlflow.sklearn.save_model(model, folder, input_example=x_train.head(3))
    return folder


class MarkerModel(mlflow.pyfunc.PythonModel):
    """Unpickling it writes ``marker``: what any code in a pickle could do instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        Path(self.marker).write_text("code from the pickle ran\n")

    def predict(self, context, model_input, params=None):
        return np.zeros((len(model_input), 10), np.float32)


def pickled_model(folder: Path, marker: Path) -> Path:
    """A cloudpickle pyfunc model, its class pickled by value (loads with no test code)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        mlflow.pyfunc.save_model(folder, python_model=MarkerModel(str(marker)))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    marker.unlink(missing_ok=True)  # saving copies the model, which unpickles it here
    return folder
