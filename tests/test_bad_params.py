"""Bad parameters through `mlflow run`: one clear line naming the value, and a FAILED run.

MLflow passes `-P epochs=abc` to the entry point unchecked, so train.py validates.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PROJECTS_DIR, mlflow_run, only_run

MNIST_CONDA = PROJECTS_DIR / "mnist-conda"

CASES = [
    ("epochs", "abc", "argument --epochs: expected an integer >= 1, got 'abc'"),
    ("epochs", "0", "argument --epochs: expected an integer >= 1, got '0'"),
    ("batch_size", "0", "argument --batch-size: expected an integer >= 1, got '0'"),
    ("learning_rate", "0", "argument --learning-rate: expected a number > 0, got '0'"),
    ("learning_rate", "-0.1", "argument --learning-rate: expected a number > 0, got '-0.1'"),
    ("learning_rate", "fast", "argument --learning-rate: expected a number > 0, got 'fast'"),
    ("data_dir", "/no/such/mnist", "no such folder '/no/such/mnist'"),
]


@pytest.mark.parametrize(
    ("param", "value", "message"), CASES, ids=[f"{p}={v}" for p, v, _ in CASES]
)
def test_bad_parameter_fails_run(
    param: str, value: str, message: str, tracking_uri: str, tmp_path: Path
) -> None:
    result = mlflow_run(MNIST_CONDA, tracking_uri, {param: value}, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert message in errors[0]
    assert "Traceback" not in result.stderr
    assert only_run(tracking_uri).info.status == "FAILED"


def test_folder_without_mnist_files_fails_run(tracking_uri: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = mlflow_run(MNIST_CONDA, tracking_uri, {"data_dir": empty}, cwd=tmp_path)
    assert result.returncode != 0
    assert f"train.py: error: no MNIST train files in {empty}" in result.stderr
    assert only_run(tracking_uri).info.status == "FAILED"
