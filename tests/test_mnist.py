"""The mnist project family (projects/mnist-*): argument checks, seeding, the default recipe,
registration, a failed upload, bad parameters through `mlflow run`, and the uv and conda paths.

The Docker and Kubernetes variants run the same package: see test_projects.py (smoke runs),
test_containers.py and test_kubernetes.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from data_loader import load_mnist
from mlflow_project_store.layout import PROJECTS
from mnist import train
from tests.helpers.artifacts import TrainedModel
from tests.helpers.commands import assert_one_line_error, mlflow_run, only_run
from tests.helpers.heldout import load_model, mnist_accuracy
from tests.helpers.projects import assert_smoke_run, smoke_config

MNIST_CONDA = PROJECTS / "mnist-conda"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "2.5"], "argument --epochs: expected an integer >= 1, got '2.5'"),
        (["--batch-size", "-3"], "argument --batch-size: expected an integer >= 1, got '-3'"),
        (["--learning-rate", "nan"], "argument --learning-rate: expected a number > 0, got 'nan'"),
        (["--learning-rate=-1e-3"], "argument --learning-rate: expected a number > 0, got '-1e-3'"),
        (["--val-fraction", "1"], "argument --val-fraction: expected a number between 0 and 1"),
        (["--device", "tpu"], "argument --device: expected auto, cpu, cuda, cuda:N or mps"),
        (["--device", "cudafoo"], "argument --device: expected auto, cpu, cuda, cuda:N or mps"),
        (["--device", "cuda:abc"], "argument --device: expected auto, cpu, cuda, cuda:N or mps"),
        (["--seed", "9" * 23], "argument --seed: expected an integer between 0 and 4294967295"),
        (["--num-workers", "1000"], "argument --num-workers: expected an integer between 0 and 32"),
        (["--download", "maybe"], "argument --download: expected true or false, got 'maybe'"),
        (["--registered-model-name", "bad/name"], "expected a model name of letters, digits"),
        (["--registered-model-name", "  "], "expected a model name that is not only spaces"),
        (["--registered-model-name", "."], "expected a model name other than '.' that does not"),
        (["--registered-model-name", ".."], "expected a model name other than '.' that does not"),
        (["--registered-model-name", "x" * 257], "expected a model name of at most 256 characters"),
        (["--data-dir", "/no/such/mnist"], "argument --data-dir: no such folder '/no/such/mnist'"),
    ],
)
def test_bad_argument_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(train.parse_args, argv, message, lambda: capsys.readouterr().err)


@pytest.mark.parametrize(("device", "kind"), [("cuda", "CUDA"), ("cuda:1", "CUDA"), ("mps", "MPS")])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(
    device: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available() if kind == "CUDA" else torch.backends.mps.is_available():
        pytest.skip(f"this machine has {kind}")
    message = f"argument --device: device {device!r} was asked for but {kind}"
    argv = ["--device", device]
    assert_one_line_error(train.parse_args, argv, message, lambda: capsys.readouterr().err)


def run_metrics(tracking_uri: str) -> list[dict[str, float]]:
    client = MlflowClient(tracking_uri)
    return [run.data.metrics for run in client.search_runs(["0"], order_by=["start_time ASC"])]


@pytest.mark.slow
def test_same_seed_gives_same_metrics_on_cpu(tracking_uri: str) -> None:
    argv = ["--epochs", "1", "--batch-size", "256", "--seed", "11", "--device", "cpu"]
    assert train.main(argv) == 0
    assert train.main(argv) == 0
    first, second = run_metrics(tracking_uri)
    assert first == second
    assert first["test_accuracy"] > 0.5


@pytest.mark.slow
def test_default_recipe_reaches_98_5_percent(trained_mnist: TrainedModel) -> None:
    """The session's model, trained at the defaults on the bundled sample (README: 'The
    default recipe'): its test accuracy, as recorded and as the registered model predicts."""
    run = MlflowClient(trained_mnist.tracking_uri).get_run(trained_mnist.run_id)
    assert run.data.params["epochs"] == "14" and "registered_model_name" in run.data.params
    assert run.data.metrics["test_accuracy"] >= 0.985
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", trained_mnist.tracking_uri)
        assert mnist_accuracy(load_model(trained_mnist.uri)) >= 0.985


@pytest.mark.slow
def test_registered_model_gets_candidate_alias_and_ranking_tags(tracking_uri: str) -> None:
    argv = ["--epochs", "1", "--batch-size", "256", "--registered-model-name", "mnist-test"]
    assert train.main(argv) == 0
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("mnist-test", "candidate")
    (run,) = client.search_runs(["0"])
    assert version.run_id == run.info.run_id
    assert float(version.tags["test_accuracy"]) == pytest.approx(
        run.data.metrics["test_accuracy"], rel=1e-5
    )
    assert version.tags["ranking_metric"] == "test_accuracy"
    assert version.tags["ranking_order"] == "higher_is_better"


@pytest.mark.slow
def test_failed_model_upload_keeps_the_trained_model(
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
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mnist.train:")]
    kept = Path(line.split("the trained model is kept at ")[1].split("; upload it")[0])
    assert "mlflow artifacts log-artifacts --run-id" in line
    test = load_mnist(split="test")
    logits = mlflow.pyfunc.load_model(str(kept)).predict(test.images[:200].numpy())
    assert (logits.argmax(axis=1) == test.labels[:200].numpy()).mean() > 0.8


def test_bad_parameter_fails_the_run_in_one_line(tracking_uri: str, tmp_path: Path) -> None:
    """MLflow passes `-P epochs=abc` to the entry point unchecked: the package checks it (every
    parameter's bad values: test_projects.py::test_every_parameter_refuses_...)."""
    result = mlflow_run(MNIST_CONDA, tracking_uri, {"epochs": "abc"}, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("mnist.train: error:")]
    assert errors == ["mnist.train: error: argument --epochs: expected an integer >= 1, got 'abc'"]
    assert "Traceback" not in result.stderr
    assert only_run(tracking_uri).info.status == "FAILED"


def test_folder_without_mnist_files_is_one_line(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(["--data-dir", str(tmp_path)]) == 2
    assert f"mnist.train: error: no MNIST train files in {tmp_path}" in capsys.readouterr().err
    assert MlflowClient(tracking_uri).search_runs(["0"]) == []  # refused before any run


@pytest.mark.conda
@pytest.mark.slow
def test_mnist_conda_through_conda(tracking_uri: str, tmp_path: Path) -> None:
    """The conda path itself. Skipped without conda, also in CI: no conda channel is
    reachable there, so the uv test above is what proves conda.yaml's list in CI."""
    if shutil.which("conda") is None:
        pytest.skip("conda is not on PATH")
    config = smoke_config(MNIST_CONDA)
    result = mlflow_run(
        MNIST_CONDA, tracking_uri, config["parameters"], env_manager="conda", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(MNIST_CONDA, tracking_uri)


def test_entry_point_defaults_are_the_mlproject_defaults() -> None:
    """`python -m mnist.train` with no flags trains the recipe that `mlflow run` (and the
    benchmark) does: it reads the defaults from the MLproject, where they are written."""
    from mlflow.projects._project_spec import load_project

    parsed = vars(train.parse_args([]))
    for name, parameter in (
        load_project(str(MNIST_CONDA)).get_entry_point("main").parameters.items()
    ):
        given, declared = parsed[name], parameter.default
        if isinstance(given, float):
            assert given == float(declared), name
        else:
            assert str(given).lower() == str(declared).lower(), name
