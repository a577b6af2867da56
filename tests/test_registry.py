"""The Model Registry: versions registered through project_tools.registry, and promotion on a
real tracking server (`champion` moves only to a version that ranks better by its own tags)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sklearn.dummy import DummyRegressor

from project_tools.registry import register_candidate
from ready_for_mlflow.servers import TrackingServer, client_env
from tests.helpers.commands import make

pytestmark = pytest.mark.server


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
        [sys.executable, "-m", "ready_for_mlflow.promote", *args],
        env=client_env(server.url),
        capture_output=True,
        text=True,
        timeout=120,
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


def test_champion_moves_only_on_a_better_metric(
    tracking_server: TrackingServer, server_client: MlflowClient
) -> None:
    scores = [0.90, 0.95, 0.93, 0.95]
    v1, v2, v3, v4 = (
        add_version("promote-accuracy", {"test_accuracy": s}, "test_accuracy", True) for s in scores
    )
    first = promote(tracking_server, "promote-accuracy", v1)
    assert first.returncode == 0, first.stderr
    assert "promoted promote-accuracy version 1 to champion" in first.stdout
    assert champion(server_client, "promote-accuracy") == v1

    better = promote(tracking_server, "promote-accuracy", v2)
    assert "0.9500 beats 0.9000 of version 1" in better.stdout
    assert champion(server_client, "promote-accuracy") == v2

    for worse_or_tie in (v3, v4):
        kept = promote(tracking_server, "promote-accuracy", worse_or_tie)
        assert kept.returncode == 0, kept.stderr
        assert f"kept champion at promote-accuracy version {v2}" in kept.stdout
        assert champion(server_client, "promote-accuracy") == v2


def test_make_promote_ranks_lower_is_better_without_flags(
    tracking_server: TrackingServer, server_client: MlflowClient
) -> None:
    """An rmse-ranked model (elasticnet's way) through `make promote`, which prints its store."""
    v1 = add_version("promote-rmse", {"rmse": 60.0}, "rmse", False)
    v2 = add_version("promote-rmse", {"rmse": 55.0}, "rmse", False)
    for version in (v1, v2):
        result = make(
            "-o",
            "setup",
            "promote",
            "MODEL=promote-rmse",
            f"VERSION={version}",
            f"TRACKING_URI={tracking_server.url}",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Tracking store: {tracking_server.url}\n")
    assert "rmse 55.0000 beats 60.0000 of version 1" in result.stdout
    assert champion(server_client, "promote-rmse") == v2


def test_promote_errors_are_one_line(
    tracking_server: TrackingServer, server_client: MlflowClient
) -> None:
    server_client.create_registered_model("promote-untagged")
    with mlflow.start_run() as run:
        pass
    server_client.create_model_version(
        "promote-untagged", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    for args, message in [
        (["promote-missing", "1"], "no version '1' of registered model 'promote-missing'"),
        (["promote-untagged", "1"], "version 1 of 'promote-untagged' has no 'ranking_metric'"),
        (["promote-untagged"], "the following arguments are required: version"),
    ]:
        result = promote(tracking_server, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_make_promote_without_model_says_what_is_missing() -> None:
    result = make("-o", "setup", "promote", timeout=60)
    assert result.returncode != 0
    assert "make promote: set MODEL=<registered model name> VERSION=<version>" in result.stderr
