"""Load a model without running code that came with it, unless the caller allows it.

A pickled (cloudpickle) model runs whatever its author put in it the moment it is loaded.
MLflow refuses pickles when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is false, but that also
refuses scikit-learn's ``skops`` files, and a model's ``code`` paths or ``loader_module`` are
imported whatever the variable says. So, without ``allow_pickle``, a model loads only when:

- its pyfunc loader is ``mlflow.pytorch`` or ``mlflow.sklearn`` and it ships no code;
- a PyTorch model is ``pt2`` (MLflow checks the archive holds no pickled objects), read from
  its files as MLflow's loader reads them;
- a scikit-learn model is ``skops`` and holds only the types that skops trusts by default
  (read from the file itself, not from the model's own MLmodel list).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
SAFE_LOADERS = ("mlflow.pytorch", "mlflow.sklearn")
RISK = "a pickled model runs its author's code on this machine when it is loaded"


class UnsafeModelError(Exception):
    """The model would run code of its own to load; the message says why and what to do."""

    def __init__(self, model_uri: str, why: str) -> None:
        super().__init__(model_uri, why)
        self.model_uri, self.why = model_uri, why

    def line(self, allow: str = "--allow-pickle") -> str:
        """The message, naming ``allow``: how the caller lets pickles load."""
        return (
            f"refusing to load {self.model_uri!r}: {self.why}; {RISK}: pass {allow} only if you "
            "trust whoever logged it"
        )

    def __str__(self) -> str:
        return self.line()


def refuse(model_uri: str, why: str) -> UnsafeModelError:
    return UnsafeModelError(model_uri, why)


@contextmanager
def pickles(allowed: bool) -> Iterator[None]:
    """Set MLflow's pickle switch for the duration, then put back what was there."""
    before = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "true" if allowed else "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[PICKLE_ENV]
        else:
            os.environ[PICKLE_ENV] = before


def check_model(model_uri: str, local: Path) -> bool:
    """Raise UnsafeModelError unless the downloaded model loads without pickles.

    Returns True for a checked skops model, which MLflow loads only with its switch on.
    """
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        return False  # not a model folder: MLflow's own loader says what is wrong
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    loader = pyfunc.get("loader_module")
    if loader not in SAFE_LOADERS:
        if "python_model" in pyfunc:
            kind = "a Python model pickled with cloudpickle"
        elif loader == "mlflow.pyfunc.model":
            kind = "a Python model loaded from its own code"
        else:
            kind = f"a model loaded by {loader}"
        raise refuse(model_uri, f"it is {kind}, not a pt2 PyTorch or skops scikit-learn model")
    if pyfunc.get("code") or (flavors.get("pytorch") or {}).get("code"):
        raise refuse(model_uri, "it ships Python code that loading would import")
    if loader == "mlflow.pytorch":
        check_pt2(model_uri, local, pyfunc)
        return False
    sklearn = flavors.get("sklearn")
    if sklearn is None:
        return False  # not a model MLflow can load as scikit-learn: its loader says so
    if sklearn.get("serialization_format") != "skops":
        raise refuse(model_uri, f"it is saved as {sklearn.get('serialization_format')}")
    if (local / str(pyfunc.get("data", "."))).resolve() != local.resolve():
        # MLflow would load the model that folder describes, not the file checked below.
        raise refuse(model_uri, f"its python_function data {pyfunc['data']!r} is another model")
    import skops.io

    data = (local / str(pyfunc.get("model_path"))).resolve()
    if not data.is_file() or not data.is_relative_to(local.resolve()):
        raise refuse(model_uri, f"its model file {pyfunc.get('model_path')!r} is not in it")
    untrusted = skops.io.get_untrusted_types(file=data)
    if untrusted:
        raise refuse(model_uri, f"its skops file holds untrusted types {', '.join(untrusted)}")
    return True


def check_pt2(model_uri: str, local: Path, pyfunc: dict) -> None:
    """Refuse a PyTorch model unless MLflow will load it as pt2: its data folder, inside the
    model, without the pickled ``model.pth``. MLflow loads a ``model.pth`` with the pickle
    module that the model names, importing that module before it checks its pickle switch."""
    data = (local / str(pyfunc.get("data", "."))).resolve()
    if not data.is_relative_to(local.resolve()):
        raise refuse(model_uri, f"its model data {pyfunc.get('data')!r} is not in it")
    if not data.is_dir() or (data / "model.pth").exists():
        raise refuse(model_uri, "it is a PyTorch model saved as a pickle (model.pth), not pt2")


def checked_copy(model_uri: str, allow_pickle: bool = False) -> tuple[Path, bool]:
    """A local copy of ``model_uri`` (a local folder is not copied), checked unless
    ``allow_pickle``, and whether MLflow's pickle switch must be on to load it."""
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    return local, allow_pickle or check_model(model_uri, local)


def load_model(model_uri: str, allow_pickle: bool = False):
    """``mlflow.pyfunc.load_model`` of a local copy of ``model_uri``, checked as above."""
    import mlflow.pyfunc

    local, unpickle = checked_copy(model_uri, allow_pickle)
    with pickles(unpickle):
        return mlflow.pyfunc.load_model(str(local))
