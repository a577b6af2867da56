"""The elasticnet project family (projects/elasticnet-*) in-process; its Docker smoke run is in
test_projects.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from elasticnet import train
from tests.helpers.commands import assert_one_line_error


def test_fit_logs_metrics_and_model(tracking_uri: str) -> None:
    assert train.main(["--alpha", "0.001", "--l1-ratio", "0.5"]) == 0
    (run,) = MlflowClient(tracking_uri).search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["r2"] > 0.4
    assert run.data.metrics["rmse"] > run.data.metrics["mae"] > 0


def test_registered_version_is_ranked_by_rmse_lower_is_better(tracking_uri: str) -> None:
    assert train.main(["--alpha", "0.001", "--registered-model-name", "diabetes-en"]) == 0
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("diabetes-en", "candidate")
    (run,) = client.search_runs(["0"])
    assert version.run_id == run.info.run_id
    assert version.tags["ranking_metric"] == "rmse"
    assert version.tags["ranking_order"] == "lower_is_better"
    assert float(version.tags["rmse"]) == pytest.approx(run.data.metrics["rmse"], rel=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --alpha"),
        (["--alpha", "abc"], "argument --alpha: expected a number >= 0, got 'abc'"),
        (["--alpha", "-1"], "argument --alpha: expected a number >= 0, got '-1'"),
        (["--alpha", "inf"], "argument --alpha: expected a number >= 0, got 'inf'"),
        (["--alpha", "1", "--l1-ratio", "1.5"], "expected a number between 0 and 1, got '1.5'"),
        (["--alpha", "1", "--seed=-1"], "argument --seed: expected an integer between 0 and"),
        (["--alpha", "1", "--registered-model-name", "a/b"], "expected a model name of letters"),
        (["--alpha", "1", "--registered-model-name", ".."], "other than '.' that does not start"),
        (["--alpha", "1", "--registered-model-name", " "], "a model name that is not only spaces"),
    ],
)
def test_bad_argument_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(train.parse_args, argv, message, lambda: capsys.readouterr().err)


def test_failed_registration_names_the_logged_model_and_how_to_retry(
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The registry's database is broken (a file that is not one): the run fails in one line
    that says where the logged model is and how to register it, with a placeholder for the name
    rather than the name (a name that the registry refuses is refused before training)."""
    registry = tmp_path / "registry.db"
    registry.write_text("not a database")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{registry}")
    assert train.main(["--alpha", "0.001", "--registered-model-name", "diabetes-en"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("elasticnet.train:")]
    model_uri = line.split("the model is logged at ")[1].split(" ")[0]
    assert line.endswith(f"retry in Python with mlflow.register_model({model_uri!r}, <name>)")
    assert "diabetes-en" not in line
    (run,) = MlflowClient(tracking_uri).search_runs(["0"])
    assert run.info.status == "FAILED"
    assert get_model_info(model_uri).run_id == run.info.run_id  # the model is there, as said
