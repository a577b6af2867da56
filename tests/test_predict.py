"""example/predict: the CLI on real images, IDX and CSV files; the REST client on a served model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LinearRegression

from data_loader import BUNDLED_SAMPLE, load_diabetes_split, load_mnist
from mlflow_project_store.layout import ROOT
from mlflow_project_store.predict.safety import load_model as load_checked
from mlflow_project_store.ready_for_mlflow.servers import (
    HOST,
    TrackingServer,
    client_env,
    free_port,
    port_busy,
    start,
    stop,
    wait_http,
)
from tests.helpers.artifacts import DigitFiles, TrainedModel
from tests.helpers.commands import make_command, one_line_reason
from tests.helpers.hostile import (
    BOMB_IMAGES,
    run_limited,
    write_idx_bomb,
    write_png_bomb,
)
from tests.helpers.local_models import diabetes_model as skops_model
from tests.helpers.local_models import digit_model, pickled_model

PREDICT = "mlflow_project_store.predict"
REST_CLIENT = "mlflow_project_store.predict.rest_client"
SAMPLES = ROOT / "example" / "predict" / "samples"
# The predict CLI's address space: torch and MLflow map about 4 GB; a runaway is stopped.
ADDRESS_SPACE = 6 << 30


def run_cli(
    module: str, *args: object, tracking_uri: str = "sqlite:///unused.db", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=client_env(tracking_uri),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_predict_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("predict: error: ")
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.mark.parametrize(
    ("make_input", "words"),
    [
        (lambda d: d / "missing", ["missing: no such file or folder", "expected a folder"]),
        (
            lambda d: write(d / "broken.png", b"\x89PNG not really"),
            ["broken.png", "not a decodable"],
        ),
        (lambda d: write(d / "notes.txt", b"hello"), ["notes.txt", "wrong magic number"]),
        (lambda d: (d / "empty").mkdir() or d / "empty", ["empty: no .png, .jpg or .jpeg files"]),
        (lambda d: write(d / "header.csv", b"age,bmi\n"), ["header.csv", "no rows"]),
    ],
    ids=["missing", "undecodable-image", "not-idx", "empty-folder", "empty-csv"],
)
def test_bad_input_is_one_line(tmp_path: Path, make_input, words: list[str]) -> None:
    result = run_cli(PREDICT, "models:/mnist@champion", make_input(tmp_path), cwd=tmp_path)
    assert_predict_error(result, 2, *words)
    assert not (tmp_path / "predictions.csv").exists()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unreachable_server_is_one_line(heldout_pngs: DigitFiles, tmp_path: Path) -> None:
    """A closed loopback port: one line naming the URI, well within 30 s."""
    down = f"http://{HOST}:{free_port()}"
    started = time.monotonic()
    result = run_cli(
        PREDICT, "models:/mnist@champion", heldout_pngs.folder, tracking_uri=down, cwd=tmp_path
    )
    assert time.monotonic() - started < 30
    assert_predict_error(result, 1, f"tracking server {down} did not answer")
    assert not (tmp_path / "predictions.csv").exists()


def test_png_bomb_is_one_line(tmp_path: Path) -> None:
    """A 20000x20000 PNG of a few hundred KB (400 MB decoded) is refused by its header."""
    bomb = write_png_bomb(tmp_path / "huge.png")
    result = run_cli(PREDICT, "models:/mnist@champion", bomb, cwd=tmp_path)
    assert_predict_error(result, 2, "huge.png", "too large for a digit image")


def test_output_into_missing_folder_is_refused_before_the_model(tmp_path: Path) -> None:
    """Refused before any model is loaded: the tracking server named here is down."""
    down = f"http://{HOST}:{free_port()}"
    out = tmp_path / "no-such-folder" / "out.csv"
    result = run_cli(
        PREDICT, "models:/mnist@champion", SAMPLES / "digits", "--output", out, tracking_uri=down
    )
    assert_predict_error(result, 2, f"--output {out}", "does not exist")


def test_pickled_model_is_refused_unless_allowed(tmp_path: Path) -> None:
    """Loading a cloudpickle model would run its code (here: write a marker file)."""
    marker = tmp_path / "marker"
    model = pickled_model(tmp_path / "pickled", marker)
    refused = run_cli(PREDICT, model, SAMPLES / "digits", cwd=tmp_path)
    assert_predict_error(refused, 1, "refusing to load", "cloudpickle", "--allow-pickle")
    assert not marker.exists()
    assert not (tmp_path / "predictions.csv").exists()

    allowed = run_cli(PREDICT, model, SAMPLES / "digits", "--allow-pickle", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert marker.exists()
    assert "6 predictions written" in allowed.stdout
    help_text = run_cli(PREDICT, "--help").stdout
    assert "runs its author's code" in " ".join(help_text.split())


def make_serve(model: Path | str, port: int, *variables: str) -> list[str]:
    """The `make serve` command line, from any folder (setup taken as done)."""
    command = make_command("-C", str(ROOT), "-o", "setup", "serve")
    return [*command, f"MODEL={model}", f"SERVE_PORT={port}", *variables]


@pytest.mark.server
def test_make_serve_refuses_a_pickled_model_unless_allowed(tmp_path: Path) -> None:
    """`make serve` checks the model as predict does: the cloudpickle model is one line naming
    the risk and ALLOW_PICKLE=1, exit 1, its code never ran and nothing listens; with
    ALLOW_PICKLE=1 it is served (and its code runs)."""
    marker = tmp_path / "marker"
    model = pickled_model(tmp_path / "pickled", marker)
    port = free_port()
    refused = subprocess.run(
        make_serve(model, port), capture_output=True, text=True, timeout=120, check=False
    )
    reason = one_line_reason(refused, "make serve: error:")
    for words in ("refusing to load", "cloudpickle", "runs its author's code", "ALLOW_PICKLE=1"):
        assert words in reason, reason
    assert not marker.exists()
    assert not port_busy(port)
    help_text = subprocess.run(["make", "-C", str(ROOT), "help"], capture_output=True, text=True)
    assert "ALLOW_PICKLE=1 serves pickled models too (their code runs)" in help_text.stdout

    log = tmp_path / "serve.log"
    server = start(
        make_serve(model, port, "ALLOW_PICKLE=1"), log, client_env("sqlite:///unused.db")
    )
    try:
        wait_http(f"http://{HOST}:{port}/ping", server, log, timeout=180)
    finally:
        stop(server, timeout=5)
    assert marker.exists()


def test_skops_model_loads_without_pickles(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The sample rows through a skops ElasticNet: no --allow-pickle needed."""
    model = skops_model(tmp_path_factory.getbasetemp() / "skops-model")
    result = run_cli(PREDICT, model, SAMPLES / "diabetes.csv", "--output", tmp_path / "out.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "out.csv")
    rows = pd.read_csv(SAMPLES / "diabetes.csv")
    assert list(table.columns) == [*rows.columns, "prediction"]
    expected = load_checked(str(model)).predict(rows)  # the same check, in this process
    np.testing.assert_allclose(table["prediction"], expected, rtol=1e-6)


@pytest.mark.slow
def test_hostile_idx_bomb_under_a_memory_limit(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The issue's 194 KB gzip bomb (200 MB, 255,102 images): refused at the default limit;
    with the limit raised, predicted in batches with the memory of a six-image run."""
    model = digit_model(tmp_path_factory.getbasetemp() / "digit-model")
    bomb = write_idx_bomb(tmp_path / "bomb-idx3-ubyte.gz")
    assert bomb.stat().st_size < 300_000
    command = [sys.executable, "-m", PREDICT, str(model)]
    env = client_env("sqlite:///unused.db")

    small = run_limited([*command, str(SAMPLES / "digits")], ADDRESS_SPACE, env, tmp_path)
    assert small.returncode == 0, small.stderr[-2000:]

    refused = run_limited([*command, str(bomb)], ADDRESS_SPACE, env, tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.count("\n") == 1 and str(bomb) in refused.stderr
    assert "more than the limit of 134,217,728 bytes" in refused.stderr
    assert "DATA_LOADER_MAX_IDX_MB" in refused.stderr

    raised = env | {"DATA_LOADER_MAX_IDX_MB": "256"}
    big = run_limited([*command, str(bomb), "--show", "0"], ADDRESS_SPACE, raised, tmp_path)
    assert big.returncode == 0, big.stderr[-2000:]
    assert f"{BOMB_IMAGES} predictions written" in big.stdout
    # The uint8 images (200 MB) are held once; all of them as float32 at once would add 800 MB.
    assert big.peak_rss - small.peak_rss < 450 << 20, (big.peak_rss, small.peak_rss)


@pytest.mark.server
@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("models:/no-such-model/1", ["'models:/no-such-model/1'", "no-such-model"]),
        ("models:/predict-empty@champion", ["'models:/predict-empty@champion'", "champion"]),
    ],
)
def test_unknown_model_or_alias_is_one_line(
    tracking_server: TrackingServer, heldout_pngs: DigitFiles, uri: str, words: list[str]
) -> None:
    client = MlflowClient(tracking_server.url)
    if not client.search_registered_models("name = 'predict-empty'"):
        client.create_registered_model("predict-empty")
    result = run_cli(PREDICT, uri, heldout_pngs.folder, tracking_uri=tracking_server.url)
    assert_predict_error(result, 1, "cannot load model", *words)


@pytest.mark.slow
@pytest.mark.server
def test_predict_png_and_jpeg_digits(
    trained_mnist: TrainedModel, heldout_pngs: DigitFiles, tmp_path: Path
) -> None:
    """Grayscale, RGB, 56x56 and dark-on-light files of held-out digits: at least 90% right."""
    out = tmp_path / "digits.csv"
    uri = f"models:/{trained_mnist.name}@candidate"
    result = run_cli(
        PREDICT, uri, heldout_pngs.folder, "--output", out, tracking_uri=trained_mnist.tracking_uri
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0].split() == ["input", "digit", "confidence"]
    table = pd.read_csv(out)
    assert list(table["input"]) == sorted(p.name for p in heldout_pngs.folder.iterdir())
    accuracy = (table["digit"].to_numpy() == heldout_pngs.labels).mean()
    assert accuracy >= 0.90, accuracy
    for kind in range(4):  # every form of file is read correctly, not just the easy ones
        assert (table["digit"].to_numpy() == heldout_pngs.labels)[kind::4].mean() >= 0.85, kind


@pytest.mark.slow
@pytest.mark.server
def test_predict_idx_file_by_run_uri(trained_mnist: TrainedModel, tmp_path: Path) -> None:
    idx = BUNDLED_SAMPLE / "t10k-images-idx3-ubyte.gz"
    uri = f"runs:/{trained_mnist.run_id}/model"
    result = run_cli(
        PREDICT, uri, idx, "--show", "5", tracking_uri=trained_mnist.tracking_uri, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2000 predictions written to predictions.csv (1995 more rows there)" in result.stdout
    digits = pd.read_csv(tmp_path / "predictions.csv")["digit"].to_numpy()
    assert (digits == load_mnist(split="test").labels.numpy()).mean() >= 0.95


@pytest.fixture(scope="module")
def diabetes_model(tracking_server: TrackingServer) -> LinearRegression:
    """A scikit-learn regressor registered as `diabetes` version 1 through the server."""
    x_train, _, y_train, _ = load_diabetes_split()
    model = LinearRegression().fit(x_train, y_train)
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(key)  # the client logs through the server's artifact proxy
        patch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                model, name="model", input_example=x_train[:3], registered_model_name="diabetes"
            )
    return model


@pytest.mark.server
def test_predict_csv_rows(
    tracking_server: TrackingServer, diabetes_model: LinearRegression, tmp_path: Path
) -> None:
    _, x_test, _, y_test = load_diabetes_split()
    rows = x_test.assign(target=y_test)  # a column the model does not use is carried along
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = run_cli(
        PREDICT,
        "models:/diabetes/1",
        tmp_path / "rows.csv",
        "--output",
        tmp_path / "out.csv",
        tracking_uri=tracking_server.url,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == [*rows.columns, "prediction"]
    np.testing.assert_allclose(table["prediction"], diabetes_model.predict(x_test), rtol=1e-6)

    x_test.drop(columns=["bmi"]).to_csv(tmp_path / "no-bmi.csv", index=False)
    missing = run_cli(
        PREDICT,
        "models:/diabetes/1",
        tmp_path / "no-bmi.csv",
        tracking_uri=tracking_server.url,
        cwd=tmp_path,
    )
    assert_predict_error(missing, 1, "the model rejected the rows input", "bmi")


@pytest.mark.slow
@pytest.mark.server
def test_rest_serving_and_client(
    trained_mnist: TrainedModel, heldout_pngs: DigitFiles, tmp_path: Path
) -> None:
    """`make serve` (the pt2 model checked, then `mlflow models serve`) answers a batch posted
    by the REST client."""
    port = free_port()
    command = make_serve(trained_mnist.uri, port, f"TRACKING_URI={trained_mnist.tracking_uri}")
    log = tmp_path / "serve.log"
    server = start(command, log, client_env(trained_mnist.tracking_uri))
    try:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/ping", server, log, timeout=180)
        result = run_cli(REST_CLIENT, url, heldout_pngs.folder)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line.split() for line in result.stdout.splitlines()]
        assert [name for name, _ in lines] == sorted(p.name for p in heldout_pngs.folder.iterdir())
        digits = np.array([int(digit) for _, digit in lines])
        assert (digits == heldout_pngs.labels).mean() >= 0.90
    finally:
        stop(server, timeout=5)  # the scoring server drains for long after SIGTERM
    down = run_cli(REST_CLIENT, url, heldout_pngs.folder)
    assert down.returncode == 1 and f"scoring server {url} is unreachable" in down.stderr


@pytest.mark.slow
@pytest.mark.server
def test_samples_predicted_as_their_labels(trained_mnist: TrainedModel, tmp_path: Path) -> None:
    """example/predict/samples: each cut digit (light or dark, 28 to 100 px) is its label."""
    cut = pd.read_csv(SAMPLES / "digits.csv")
    labels = load_mnist(split="test").labels.numpy()
    assert (cut["label"].to_numpy() == labels[cut["test_index"]]).all()
    out = tmp_path / "samples.csv"
    result = run_cli(
        PREDICT,
        f"models:/{trained_mnist.name}@candidate",
        SAMPLES / "digits",
        "--output",
        out,
        tracking_uri=trained_mnist.tracking_uri,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = pd.read_csv(out).merge(cut, left_on="input", right_on="file")
    assert len(predicted) == len(cut)
    assert (predicted["digit"] == predicted["label"]).all(), predicted.to_string()
