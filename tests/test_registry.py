"""Promotion on a real tracking server: `champion` moves only to a version with a better metric."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from servers import TrackingServer, client_env

PROMOTE = ROOT / "ready_for_mlflow" / "promote.py"
pytestmark = pytest.mark.server


def add_version(
    client: MlflowClient, name: str, metrics: dict[str, float], tag: bool = True
) -> str:
    """A new version of ``name`` from a run that logged ``metrics`` (tagged with them, as
    training does, unless ``tag`` is false)."""
    experiment = client.get_experiment_by_name("registry") or client.get_experiment(
        client.create_experiment("registry")
    )
    run = client.create_run(experiment.experiment_id)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    ).version
    if tag:
        for key, value in metrics.items():
            client.set_model_version_tag(name, version, key, f"{value:.6f}")
    return version


def promote(server: TrackingServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROMOTE), *args],
        env=client_env(server.url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def champion(client: MlflowClient, name: str) -> str:
    return client.get_model_version_by_alias(name, "champion").version


def test_champion_moves_only_on_a_better_metric(tracking_server: TrackingServer) -> None:
    client = MlflowClient(tracking_server.url)
    client.create_registered_model("promote-accuracy")
    scores = [0.90, 0.95, 0.93, 0.95]
    v1, v2, v3, v4 = (add_version(client, "promote-accuracy", {"test_accuracy": s}) for s in scores)

    first = promote(tracking_server, "promote-accuracy", v1)
    assert first.returncode == 0, first.stderr
    assert "promoted promote-accuracy version 1 to champion" in first.stdout
    assert champion(client, "promote-accuracy") == v1

    better = promote(tracking_server, "promote-accuracy", v2)
    assert "0.9500 beats 0.9000 of version 1" in better.stdout
    assert champion(client, "promote-accuracy") == v2

    for worse_or_tie in (v3, v4):
        kept = promote(tracking_server, "promote-accuracy", worse_or_tie)
        assert kept.returncode == 0, kept.stderr
        assert f"kept champion at promote-accuracy version {v2}" in kept.stdout
        assert champion(client, "promote-accuracy") == v2


def test_lower_is_better_from_the_runs_metric_through_make(tracking_server: TrackingServer) -> None:
    """Untagged versions fall back to their run's metric; `make promote` runs the same tool."""
    client = MlflowClient(tracking_server.url)
    client.create_registered_model("promote-loss")
    v1 = add_version(client, "promote-loss", {"test_loss": 0.30}, tag=False)
    v2 = add_version(client, "promote-loss", {"test_loss": 0.20}, tag=False)
    assert (
        promote(
            tracking_server, "promote-loss", v1, "--metric", "test_loss", "--lower-is-better"
        ).returncode
        == 0
    )
    moved = promote(
        tracking_server, "promote-loss", v2, "--metric", "test_loss", "--lower-is-better"
    )
    assert "test_loss 0.2000 beats 0.3000 of version 1" in moved.stdout
    assert champion(client, "promote-loss") == v2

    client.create_registered_model("promote-make")
    v = add_version(client, "promote-make", {"test_accuracy": 0.5})
    make = ["make", "--no-print-directory", "-C", str(ROOT), "-o", "setup", "promote"]
    result = subprocess.run(
        [*make, "MODEL=promote-make", f"VERSION={v}", f"TRACKING_URI={tracking_server.url}"],
        env=client_env("unused"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert champion(client, "promote-make") == v


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote-missing", "1"], "no version '1' of registered model 'promote-missing'"),
        (["promote-accuracy", "1", "--metric", "f1"], "has no 'f1' tag and its run logged no"),
    ],
)
def test_promote_errors_are_one_line(
    tracking_server: TrackingServer, args: list[str], message: str
) -> None:
    client = MlflowClient(tracking_server.url)
    if not client.search_registered_models("name = 'promote-accuracy'"):
        client.create_registered_model("promote-accuracy")
        add_version(client, "promote-accuracy", {"test_accuracy": 0.9})
    result = promote(tracking_server, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_make_promote_without_model_says_what_is_missing() -> None:
    make = ["make", "--no-print-directory", "-C", str(ROOT), "-o", "setup", "promote"]
    result = subprocess.run(make, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "make promote: set MODEL=<registered model name> VERSION=<version>" in result.stderr
