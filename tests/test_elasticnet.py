"""projects/elasticnet-docker's entry point in-process (its Docker run is in test_projects.py)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
from mlflow.tracking import MlflowClient

from conftest import PROJECTS_DIR, assert_one_line_error


@pytest.fixture
def elasticnet() -> ModuleType:
    """train.py under its own module name: mnist-conda's train.py is also `train`."""
    spec = importlib.util.spec_from_file_location(
        "elasticnet_train", PROJECTS_DIR / "elasticnet-docker" / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_logs_metrics_and_model(elasticnet: ModuleType, tracking_uri: str) -> None:
    assert elasticnet.main(["--alpha", "0.001", "--l1-ratio", "0.5"]) == 0
    (run,) = MlflowClient(tracking_uri).search_runs(["0"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["r2"] > 0.4
    assert run.data.metrics["rmse"] > run.data.metrics["mae"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --alpha"),
        (["--alpha", "abc"], "argument --alpha: expected a number >= 0, got 'abc'"),
        (["--alpha", "-1"], "argument --alpha: expected a number >= 0, got '-1'"),
        (["--alpha", "1", "--l1-ratio", "1.5"], "expected a number between 0 and 1, got '1.5'"),
    ],
)
def test_bad_argument_is_one_line(
    elasticnet: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(elasticnet.parse_args, argv, message, lambda: capsys.readouterr().err)
