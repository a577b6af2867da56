"""Evaluate a registered model version on held-out data with ``mlflow.models.evaluate``.

Each evaluation is an MLflow run in the experiment of the version's training run, named
``evaluate NAME vN``: the held-out data as a dataset input, the metrics (also linked to the
version's logged model), and for classifiers per-class metrics and a confusion matrix as
artifacts. The version and the run point at each other: the version's tag
``evaluation_run_id``, the run's tags ``model_name``, ``model_version``, ``model_id`` and
``model_run_id``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import mlflow
import numpy as np
from mlflow.data.dataset import Dataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import EvaluationResult
from mlflow.pyfunc import PyFuncModel
from mlflow.tracking import MlflowClient

from mlflow_project_store.data_loader import BUNDLED_SAMPLE, load_diabetes_split, load_mnist_arrays
from mlflow_project_store.predict.safety import load_model
from mlflow_project_store.ready_for_mlflow.gates import Gate

EVALUATION_RUN_TAG = "evaluation_run_id"
# Where an evaluation goes when the version has no training run to sit beside.
EXPERIMENT = "model-evaluation"
LOGGED_MODEL_URI = re.compile(r"models:/(m-[0-9a-f]+)")


def mnist_test_digits() -> Dataset:
    """The bundled test digits, which no project trains on: 784 pixels in [0, 1] per row."""
    images, labels = load_mnist_arrays(split="test")
    with warnings.catch_warnings():
        # MLflow registers its local-file dataset source twice and warns that a local path "can
        # be interpreted in multiple ways"; both interpretations are the same class.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        return mlflow.data.from_numpy(
            features=images.reshape(len(images), -1).astype(np.float32) / 255.0,
            targets=labels.astype(np.int64),
            source=str(BUNDLED_SAMPLE),
            name="mnist-test-digits",
        )


def diabetes_test_rows() -> Dataset:
    """The quarter of scikit-learn's diabetes data that the projects hold out."""
    _, x_test, _, y_test = load_diabetes_split()
    return mlflow.data.from_pandas(
        x_test.assign(target=y_test), targets="target", name="diabetes-test"
    )


@dataclass(frozen=True)
class Heldout:
    load: Callable[[], Dataset]
    evaluator_config: dict = field(default_factory=dict)


HELDOUT = {
    # label_list: every digit gets a row and a column in the confusion matrix, even one that a
    # weak model never predicts.
    "mnist": Heldout(mnist_test_digits, {"label_list": list(range(10))}),
    "diabetes": Heldout(diabetes_test_rows),
}


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    metrics: dict[str, float]

    def result(self, metric: str) -> EvaluationResult:
        """What MLflow's validation reads, with ``metric`` to 4 decimals: MLflow's messages
        show the values as they were compared."""
        return EvaluationResult({metric: round(self.metrics[metric], 4)}, {}, self.run_id)


def predictor(model: PyFuncModel) -> Callable[[object], np.ndarray]:
    """``model`` as ``mlflow.models.evaluate`` wants it: one prediction per row, a class rather
    than a row of class scores (the MNIST networks return 10 logits); a tensor model gets the
    rows in the shape of its signature (the MNIST networks take (N, 1, 28, 28) images)."""
    schema = model.metadata.get_input_schema()
    tensor = schema.inputs[0] if schema is not None and schema.is_tensor_spec() else None

    def predict(features: object) -> np.ndarray:
        if tensor is not None:
            features = np.asarray(features, dtype=tensor.type).reshape((-1, *tensor.shape[1:]))
        outputs = np.asarray(model.predict(features))
        if outputs.ndim == 2 and outputs.shape[1] > 1:
            return outputs.argmax(axis=1)
        return outputs.ravel()

    return predict


def logged_model_id(version: ModelVersion) -> str | None:
    """The id of the logged model behind ``version`` (MLflow 3), from the version or its
    ``models:/m-...`` source."""
    if version.model_id:
        return version.model_id
    match = LOGGED_MODEL_URI.fullmatch(version.source or "")
    return match.group(1) if match else None


def experiment_of(client: MlflowClient, version: ModelVersion) -> str:
    """The experiment of the version's training run, else ``EXPERIMENT``."""
    if version.run_id:
        try:
            return client.get_run(version.run_id).info.experiment_id
        except MlflowException:
            pass  # the training run is gone; the evaluation still needs a home
    found = client.get_experiment_by_name(EXPERIMENT)
    return found.experiment_id if found else client.create_experiment(EXPERIMENT)


def evaluate(client: MlflowClient, version: ModelVersion, gate: Gate, data: Dataset) -> Evaluation:
    """Evaluate ``version`` on ``data`` in a new evaluation run linked to it."""
    # Checked like `make predict`: no pickled code runs, skops and pt2 models load.
    model = load_model(f"models:/{version.name}/{version.version}")
    model_id = logged_model_id(version)
    tags = {
        "model_name": version.name,
        "model_version": str(version.version),
        "model_id": model_id or "",
        "model_run_id": version.run_id or "",
    }
    with mlflow.start_run(
        experiment_id=experiment_of(client, version),
        run_name=f"evaluate {version.name} v{version.version}",
        tags=tags,
    ) as run:
        result = mlflow.models.evaluate(
            predictor(model),
            data,
            model_type=gate.model_type,
            evaluators="default",
            evaluator_config={
                "log_model_explainability": False,
                **HELDOUT[gate.heldout].evaluator_config,
            },
            model_id=model_id,
        )
    client.set_model_version_tag(version.name, version.version, EVALUATION_RUN_TAG, run.info.run_id)
    return Evaluation(run.info.run_id, result.metrics)


def recorded(
    client: MlflowClient, version: ModelVersion, gate: Gate, data: Dataset
) -> Evaluation | None:
    """The version's last evaluation, if it was of ``data`` (same digest) and has the gate's
    metric; else None."""
    run_id = version.tags.get(EVALUATION_RUN_TAG)
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    digests = {item.dataset.digest for item in run.inputs.dataset_inputs}
    if data.digest not in digests or gate.metric not in run.data.metrics:
        return None
    return Evaluation(run_id, run.data.metrics)
