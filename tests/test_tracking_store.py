"""One tracking-store rule for every make target: TRACKING_URI= on the command line, else
MLFLOW_TRACKING_URI from the environment, else the local ./mlflow.db; each target prints it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import ROOT
from tests.helpers.commands import make

LOCAL = f"sqlite:///{ROOT / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("command_line", "environment", "expected"),
    [
        (["TRACKING_URI=sqlite:///cli.db"], {"MLFLOW_TRACKING_URI": "http://env:5001"}, "cli"),
        ([], {"MLFLOW_TRACKING_URI": "http://env:5001"}, "env"),
        ([], {}, "local"),
    ],
    ids=["command-line-wins", "environment", "local-store"],
)
def test_store_rule(
    command_line: list[str],
    environment: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRACKING_URI", "http://ignored-unless-on-the-command-line")
    result = make("store", *command_line, **environment)
    assert result.returncode == 0, result.stderr
    uri = {"cli": "sqlite:///cli.db", "env": "http://env:5001", "local": LOCAL}[expected]
    assert result.stdout == f"Tracking store: {uri}\n"


@pytest.mark.slow
def test_make_run_records_in_the_store_it_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` with the environment pointing elsewhere: the command line wins, as printed."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-this.db'}")
    result = make(
        "-o", "setup", "run", f"TRACKING_URI={store}", "RUN_ARGS=-P epochs=1 -P batch_size=256"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == f"Tracking store: {store}"
    (run,) = MlflowClient(store).search_runs(["0"])
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "1"
    assert not (tmp_path / "not-this.db").exists()
