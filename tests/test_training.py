"""The MNIST training script in-process: argument checks, seeding and the default recipe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from conftest import PROJECTS_DIR, assert_one_line_error
from data_loader import load_mnist

MNIST_CONDA = PROJECTS_DIR / "mnist-conda"


@pytest.fixture
def train(monkeypatch: pytest.MonkeyPatch, tracking_uri: str) -> Iterator[ModuleType]:
    """projects/mnist-conda/train.py imported as `mlflow run` would see it."""
    monkeypatch.syspath_prepend(str(MNIST_CONDA))
    import train as module

    yield module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "2.5"], "argument --epochs: expected an integer >= 1, got '2.5'"),
        (["--batch-size", "-3"], "argument --batch-size: expected an integer >= 1, got '-3'"),
        (["--learning-rate", "nan"], "argument --learning-rate: expected a number > 0, got 'nan'"),
        (["--val-fraction", "1"], "argument --val-fraction: expected a number between 0 and 1"),
        (["--device", "tpu"], "argument --device: expected auto, cpu, cuda, cuda:N or mps"),
        (["--download", "maybe"], "argument --download: expected true or false, got 'maybe'"),
    ],
)
def test_bad_argument_is_one_line(
    train: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(train.parse_args, argv, message, lambda: capsys.readouterr().err)


def test_cuda_requested_without_cuda_is_clear(
    train: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert train.main(["--device", "cuda", "--epochs", "1"]) == 2
    assert "device 'cuda' was asked for but CUDA is not available" in capsys.readouterr().err


def run_metrics(tracking_uri: str) -> list[dict[str, float]]:
    client = MlflowClient(tracking_uri)
    return [run.data.metrics for run in client.search_runs(["0"], order_by=["start_time ASC"])]


def test_same_seed_gives_same_metrics_on_cpu(train: ModuleType, tracking_uri: str) -> None:
    argv = ["--epochs", "1", "--batch-size", "256", "--seed", "11", "--device", "cpu"]
    assert train.main(argv) == 0
    assert train.main(argv) == 0
    first, second = run_metrics(tracking_uri)
    assert first == second
    assert first["test_accuracy"] > 0.5


@pytest.mark.slow
def test_default_recipe_reaches_98_percent(train: ModuleType, tracking_uri: str) -> None:
    """At default parameters on the bundled sample (README: 'Default recipe')."""
    assert train.main(["--device", "cpu"]) == 0
    (metrics,) = run_metrics(tracking_uri)
    assert metrics["test_accuracy"] >= 0.98


def test_registered_model_gets_candidate_alias_and_metric_tag(
    train: ModuleType, tracking_uri: str
) -> None:
    argv = ["--epochs", "1", "--batch-size", "256", "--registered-model-name", "mnist-test"]
    assert train.main(argv) == 0
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("mnist-test", "candidate")
    (run,) = client.search_runs(["0"])
    assert version.run_id == run.info.run_id
    assert float(version.tags["test_accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"])


def test_failed_model_upload_keeps_the_trained_model(
    train: ModuleType,
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The artifact store is a path under a regular file: the real upload fails."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    MlflowClient(tracking_uri).create_experiment("blocked", str(blocker / "artifacts"))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "blocked")
    assert train.main(["--epochs", "1", "--batch-size", "256"]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train.py: error")]
    kept = Path(line.split("the trained model is kept at ")[1].split("; upload it")[0])
    assert "mlflow artifacts log-artifacts --run-id" in line
    test = load_mnist(split="test")
    logits = mlflow.pyfunc.load_model(str(kept)).predict(test.images[:200].numpy())
    assert (logits.argmax(axis=1) == test.labels[:200].numpy()).mean() > 0.8
