"""How well a project's logged model predicts held-out data of its kind (see smoke.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mlflow.pyfunc import PyFuncModel
from sklearn.metrics import r2_score

from data_loader import load_diabetes_split, load_mnist
from mlflow_project_store.layout import HELDOUT as HELDOUT_NAMES
from mlflow_project_store.predict.safety import load_model as load_checked


def load_model(model_uri: str) -> PyFuncModel:
    """Load a logged model as `make predict` does: pt2 and skops models load with
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false, pickled ones are refused (predict.safety)."""
    return load_checked(model_uri)


def mnist_accuracy(model: PyFuncModel) -> float:
    """Accuracy on the bundled test digits, which no project trains on (chance: 0.10)."""
    test = load_mnist(split="test")
    logits = np.asarray(model.predict(test.images.numpy()))
    return float((logits.argmax(axis=1) == test.labels.numpy()).mean())


def mnist_flat_accuracy(model: PyFuncModel) -> float:
    """The same digits flattened to 784 float pixels in [0, 1], for non-image models."""
    test = load_mnist(split="test")
    predicted = np.asarray(model.predict(test.images.reshape(len(test), 784).numpy()))
    return float((predicted.ravel() == test.labels.numpy()).mean())


def diabetes_r2(model: PyFuncModel) -> float:
    """R2 on the diabetes rows the projects hold out (predicting the mean scores about 0)."""
    _, x_test, _, y_test = load_diabetes_split()
    return float(r2_score(y_test, np.asarray(model.predict(x_test)).ravel()))


HELDOUT: dict[str, Callable[[PyFuncModel], float]] = {
    "mnist": mnist_accuracy,
    "mnist-flat": mnist_flat_accuracy,
    "diabetes": diabetes_r2,
}
assert set(HELDOUT) == set(HELDOUT_NAMES), "layout.HELDOUT lists the scorers above"
