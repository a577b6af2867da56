"""How well a project's logged model predicts held-out data of its kind (see smoke.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mlflow.pyfunc import PyFuncModel

from data_loader import load_mnist


def mnist_accuracy(model: PyFuncModel) -> float:
    """Accuracy on the bundled test digits, which no project trains on (chance: 0.10)."""
    test = load_mnist(split="test")
    logits = np.asarray(model.predict(test.images.numpy()))
    return float((logits.argmax(axis=1) == test.labels.numpy()).mean())


HELDOUT: dict[str, Callable[[PyFuncModel], float]] = {"mnist": mnist_accuracy}
