"""Models whose loading would run code that came with them, saved to a local folder on the spot:
what predict.safety refuses before MLflow opens them. Their code is a module, ``model_code``,
written beside them: it writes a marker file when it is imported, and its MarkerRegressor writes
it again when it is unpickled, so a test sees whether any of it ran. A process that loads one of
these models finds that module through ``PYTHONPATH`` (``code_env``)."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import yaml

from tests.helpers.local_models import diabetes_model

MODULE = "model_code"
SOURCE = '''"""Code that comes with a model: it writes {marker} when it runs."""
import pathlib
from pickle import Pickler, Unpickler, dump, dumps, load, loads  # a pickle module for torch

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

MARKER = pathlib.Path({marker!r})
MARKER.write_text("model_code imported\\n")


class MarkerRegressor(RegressorMixin, BaseEstimator):
    """Predicts zeros; unpickling it writes the marker."""

    def fit(self, x, y=None):
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def predict(self, x):
        return np.zeros(len(x))

    def __setstate__(self, state):
        MARKER.write_text("MarkerRegressor unpickled\\n")
        super().__setstate__(state)
'''


def code_env(model: Path) -> dict[str, str]:
    """The environment entries that let a process import the code of ``model`` (a folder made
    by one of HOSTILE_MODELS: its code is beside it)."""
    return {"PYTHONPATH": str(model.parent)}


def write_code(folder: Path, marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE}.py").write_text(SOURCE.format(marker=str(marker)))


@contextmanager
def model_code(folder: Path, marker: Path) -> Iterator[ModuleType]:
    """``folder/model_code.py``, imported here for the time it takes to save a model; the
    marker that importing it writes is removed afterwards."""
    write_code(folder, marker)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)
        marker.unlink(missing_ok=True)


def _save_sklearn(model: Path, code_folder: Path, marker: Path, **options: object) -> Path:
    import mlflow.sklearn

    with model_code(code_folder, marker) as code:
        regressor = code.MarkerRegressor().fit(np.zeros((3, 10)))
        mlflow.sklearn.save_model(regressor, model, **options)
    return model


def pickled_sklearn(model: Path, marker: Path) -> Path:
    """A scikit-learn model saved with cloudpickle (MLflow 2's default format)."""
    return _save_sklearn(model, model.parent, marker, serialization_format="cloudpickle")


def untrusted_skops(model: Path, marker: Path) -> Path:
    """A skops scikit-learn model of a type skops does not trust, listed as trusted in MLmodel
    (``skops_trusted_types``), the list MLflow's loader hands to skops."""
    return _save_sklearn(
        model,
        model.parent,
        marker,
        serialization_format="skops",
        skops_trusted_types=[f"{MODULE}.MarkerRegressor"],
    )


def pickled_torch(model: Path, marker: Path) -> Path:
    """A PyTorch model saved as a pickle (model.pth) whose pickle module is ``model_code``:
    MLflow imports the module a model names before it reads its pickle switch."""
    import mlflow.pytorch
    import torch

    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    mlflow.pytorch.save_model(network, model, serialization_format="pickle")
    (model / "data" / "pickle_module_info.txt").write_text(MODULE)
    write_code(model.parent, marker)
    return model


def skops_hiding_a_pickle(model: Path, marker: Path) -> Path:
    """A clean skops model whose python_function ``data`` names a folder in it that holds
    another model, pickled: MLflow loads that one, with the pickle switch the clean one earned."""
    shutil.copytree(diabetes_model(model.parent / "clean-skops"), model)
    _save_sklearn(model / "hidden", model.parent, marker, serialization_format="cloudpickle")
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["data"] = "hidden"
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return model


HOSTILE_MODELS: dict[str, Callable[[Path, Path], Path]] = {
    "pickled-sklearn": pickled_sklearn,
    "untrusted-skops": untrusted_skops,
    "pickled-torch": pickled_torch,
    "skops-hiding-a-pickle": skops_hiding_a_pickle,
}
