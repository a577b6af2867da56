"""The Model Registry: versions registered through project_tools.registry, and promotion on a
real tracking server: `champion` moves only to a version that passes its evaluation gate
(ready_for_mlflow/gates.py: mlflow.models.evaluate on held-out data, MLflow's validation
thresholds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Run
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import ElasticNet
from sklearn.metrics import root_mean_squared_error

from data_loader import load_diabetes_split
from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.ready_for_mlflow.evaluation import EVALUATION_RUN_TAG
from mlflow_project_store.ready_for_mlflow.promote import Refused
from mlflow_project_store.ready_for_mlflow.promote import promote as promote_version
from mlflow_project_store.ready_for_mlflow.servers import TrackingServer, client_env
from project_tools.registry import register_candidate
from tests.helpers.artifacts import TrainedModel
from tests.helpers.commands import in_project, make, mlflow_run


@pytest.fixture
def server_client(tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """This process as a client of the session's tracking server (no S3 credential)."""
    for key in list(os.environ):
        if key.startswith("AWS_") or key == "MLFLOW_S3_ENDPOINT_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    client = MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name("registry")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("registry")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # restored after the test
    return client


def add_version(name: str, metrics: dict[str, float], ranking: str, higher: bool) -> str:
    """A tiny logged model registered the way every project registers its models."""
    with mlflow.start_run():
        mlflow.log_metrics(metrics)
        model = DummyRegressor().fit([[0.0], [1.0]], [0.0, 1.0])
        uri = mlflow.sklearn.log_model(model, name="model").model_uri
    return register_candidate(uri, name, metrics, ranking, higher)


def promote(server: TrackingServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlflow_project_store.ready_for_mlflow.promote", *args],
        env=client_env(server.url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def champion(client: MlflowClient, name: str) -> str:
    return client.get_model_version_by_alias(name, "champion").version


def test_register_candidate_tags_metrics_and_ranking(server_client: MlflowClient) -> None:
    version = add_version("registry-tags", {"rmse": 50.5, "r2": 0.4}, "rmse", False)
    registered = server_client.get_model_version_by_alias("registry-tags", "candidate")
    assert registered.version == version
    assert registered.tags == {
        "rmse": "50.5",
        "r2": "0.4",
        "ranking_metric": "rmse",
        "ranking_order": "lower_is_better",
    }


# In a process of its own: import the helper, register a logged model through it in the local
# store, and print the torch modules loaded after the import and after registering.
TORCH_FREE = """
import sys

def torch_modules():
    return sorted(name for name in sys.modules if name.split(".")[0] == "torch")

from project_tools.registry import register_candidate
after_import = torch_modules()

import mlflow

model = mlflow.initialize_logged_model(name="model")
mlflow.finalize_logged_model(model.model_id, "READY")
version = register_candidate(model.model_uri, "torch-free", {"rmse": 1.0}, "rmse", False)
print(version, after_import, torch_modules())
"""


def test_registry_helper_does_not_import_torch(tracking_uri: str, tmp_path: Path) -> None:
    """Projects without torch (elasticnet's image) register through the same helper."""
    result = subprocess.run(
        [sys.executable, "-c", TORCH_FREE],
        env=in_project(PROJECTS / "elasticnet-docker", dict(os.environ)),
        cwd=tmp_path,  # a local store's artifacts go under ./mlruns
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "1 [] []", result.stdout[-3000:]
    version = MlflowClient(tracking_uri).get_model_version_by_alias("torch-free", "candidate")
    assert version.tags["ranking_metric"] == "rmse"


def add_elasticnet(name: str, alpha: float) -> str:
    """An ElasticNet on the diabetes split, registered the way elasticnet-docker registers it."""
    x_train, x_test, y_train, y_test = load_diabetes_split()
    model = ElasticNet(alpha=alpha, l1_ratio=0.1, random_state=42, max_iter=10_000)
    predicted = model.fit(x_train, y_train).predict(x_test)
    rmse = root_mean_squared_error(y_test, predicted)
    with mlflow.start_run():
        signature = infer_signature(x_test, predicted)
        uri = mlflow.sklearn.log_model(model, name="model", signature=signature).model_uri
    return register_candidate(uri, name, {"rmse": rmse}, "rmse", False)


def evaluation_run(client: MlflowClient, name: str, version: str) -> Run:
    tag = client.get_model_version(name, version).tags[EVALUATION_RUN_TAG]
    return client.get_run(tag)


def test_mnist_gate_promotes_a_good_candidate_and_refuses_a_weak_one(
    tracking_server: TrackingServer,
    server_client: MlflowClient,
    trained_mnist: TrainedModel,
    tmp_path: Path,
) -> None:
    """The default-trained model passes the floor (no champion yet); one short epoch at a bad
    learning rate is refused with the threshold and both values, and the champion stays."""
    trained = server_client.get_model_version(trained_mnist.name, trained_mnist.version)
    good = register_candidate(
        trained.source, "gate-mnist", {"test_accuracy": 0.98}, "test_accuracy", True
    )
    promoted = promote(tracking_server, "gate-mnist", good)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.startswith(f"promoted gate-mnist version {good} to champion: ")
    assert "meets the floor 0.97; there was no champion" in promoted.stdout

    # One short epoch (few, large batches) at a learning rate far too small to learn.
    short_and_bad = {"epochs": 1, "batch_size": 512, "learning_rate": 1e-5}
    env = client_env(tracking_server.url)
    del env["MLFLOW_EXPERIMENT_ID"]  # server_client's; `mlflow run` is given --experiment-name
    weak = mlflow_run(
        PROJECTS / "mnist-conda",
        tracking_server.url,
        short_and_bad | {"registered_model_name": "gate-mnist"},
        experiment="gate",
        env=env,
    )
    assert weak.returncode == 0, weak.stderr[-3000:]
    weak_version = server_client.get_model_version_by_alias("gate-mnist", "candidate").version
    champion_evaluation = evaluation_run(server_client, "gate-mnist", good)
    good_accuracy = champion_evaluation.data.metrics["accuracy_score"]

    refused = promote(tracking_server, "gate-mnist", weak_version)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.count("\n") == 1, refused.stderr
    reason = refused.stderr.strip()
    assert reason.startswith(
        f"promote: error: gate-mnist version {weak_version} failed validation "
        f"(kept champion at version {good}): "
    )
    weak_accuracy = evaluation_run(server_client, "gate-mnist", weak_version).data.metrics[
        "accuracy_score"
    ]
    assert weak_accuracy < 0.97
    assert (
        f"value threshold check failed: candidate model accuracy_score = {weak_accuracy:.4g}, "
        "accuracy_score threshold = 0.97." in reason
    )
    assert f"baseline model accuracy_score = {good_accuracy:.4g}" in reason
    assert champion(server_client, "gate-mnist") == good
    # The champion's evaluation on the same data was reused, not repeated.
    assert evaluation_run(server_client, "gate-mnist", good).info.run_id == (
        champion_evaluation.info.run_id
    )

    run = champion_evaluation
    assert run.info.status == "FINISHED"
    assert good_accuracy >= 0.97
    assert run.data.tags["model_name"] == "gate-mnist"
    assert run.data.tags["model_version"] == good
    assert run.data.tags["model_id"] == trained.source.removeprefix("models:/")
    assert run.data.tags["model_run_id"] == trained_mnist.run_id
    assert [item.dataset.name for item in run.inputs.dataset_inputs] == ["mnist-test-digits"]
    assert [item.model_id for item in run.inputs.model_inputs] == [run.data.tags["model_id"]]
    artifacts = {item.path for item in server_client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "per_class_metrics.csv"} <= artifacts
    per_class = server_client.download_artifacts(
        run.info.run_id, "per_class_metrics.csv", str(tmp_path)
    )
    assert len(Path(per_class).read_text().strip().splitlines()) == 1 + 10  # header, 10 digits


def test_make_promote_gates_a_lower_is_better_metric(
    tracking_server: TrackingServer, server_client: MlflowClient
) -> None:
    """rmse-ranked models (elasticnet's way): the first needs only the floor (through `make
    promote`, which prints its store), a better one moves the champion, one not better by the
    minimum improvement does not (the same code in this process, which saves the imports)."""
    first, better, marginal = (
        add_elasticnet("gate-rmse", alpha) for alpha in (0.003, 0.001, 0.0001)
    )
    result = make(
        "-o",
        "setup",
        "promote",
        "MODEL=gate-rmse",
        f"VERSION={first}",
        f"TRACKING_URI={tracking_server.url}",
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Tracking store: {tracking_server.url}\n")
    assert "root_mean_squared_error 55.3303 meets the floor 60; there was no champion" in (
        result.stdout
    )
    moved = promote_version(server_client, "gate-rmse", better)
    assert "53.2149 meets the floor 60 and beats 55.3303 of version 1 by at least 0.1" in moved
    with pytest.raises(Refused) as refused:
        promote_version(server_client, "gate-rmse", marginal)
    reason = str(refused.value)
    assert "minimum absolute change check failed: candidate model root_mean_squared_error = " in (
        reason
    )
    assert "baseline model root_mean_squared_error = 53.2149" in reason
    assert "root_mean_squared_error minimum absolute change threshold = 0.1." in reason
    assert champion(server_client, "gate-rmse") == better


def test_promote_errors_are_one_line(
    tracking_server: TrackingServer, server_client: MlflowClient
) -> None:
    server_client.create_registered_model("promote-untagged")
    with mlflow.start_run() as run:
        pass
    server_client.create_model_version(
        "promote-untagged", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    add_version("promote-ungated", {"f1": 0.5}, "f1", True)
    for args, message in [
        (["promote-missing", "1"], "no version '1' of registered model 'promote-missing'"),
        (["promote-untagged", "1"], "version 1 of 'promote-untagged' has no 'ranking_metric'"),
        (["promote-untagged"], "the following arguments are required: version"),
        (
            ["promote-ungated", "1"],
            "is ranked by 'f1', which has no evaluation gate: add one to "
            "ready_for_mlflow/gates.py (gates: rmse, test_accuracy)",
        ),
    ]:
        result = promote(tracking_server, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_make_promote_without_model_says_what_is_missing() -> None:
    result = make("-o", "setup", "promote", timeout=60)
    assert result.returncode != 0
    assert "make promote: set MODEL=<registered model name> VERSION=<version>" in result.stderr
