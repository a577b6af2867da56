"""example/predict: the CLI on real images, IDX and CSV files; the REST client on a served model."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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
    CUT_SHORT,
    HUGE,
    RESET,
    post_streamed,
    run_limited,
    scoring_impostor,
    write_idx_bomb,
    write_long_line_csv,
    write_png_bomb,
)
from tests.helpers.hostile_models import HOSTILE_MODELS, code_env
from tests.helpers.local_models import diabetes_model as skops_model
from tests.helpers.local_models import digit_model, pickled_model

PREDICT = "mlflow_project_store.predict"
REST_CLIENT = "mlflow_project_store.predict.rest_client"
SAMPLES = ROOT / "example" / "predict" / "samples"
# The tracking store of commands that read a model by path and record nothing (outside the
# repository: `make` runs in its root).
UNUSED_STORE = f"sqlite:///{Path(tempfile.gettempdir()) / 'mlflow-store-unused.db'}"
# The predict CLI's address space: torch and MLflow map about 4 GB; a runaway is stopped.
ADDRESS_SPACE = 6 << 30


def run_cli(
    module: str,
    *args: object,
    tracking_uri: str = UNUSED_STORE,
    cwd: Path | None = None,
    timeout: float = 300,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=client_env(tracking_uri, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
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
    server = start(make_serve(model, port, "ALLOW_PICKLE=1"), log, client_env(UNUSED_STORE))
    try:
        wait_http(f"http://{HOST}:{port}/ping", server, log, timeout=180)
    finally:
        stop(server, timeout=5)
    assert marker.exists()


@pytest.mark.slow
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
    env = client_env(UNUSED_STORE)

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


SERVE = "mlflow_project_store.predict.serve"
MIB = 1 << 20
# The predict CLI's address space while it checks its input: it reads a row of 2 GiB in it only
# by failing for memory.
CSV_ADDRESS_SPACE = 1 << 30


def down_tracking_uri() -> str:
    """A tracking server that is not there: a model that comes from it fails after the input."""
    return f"http://{HOST}:{free_port()}"


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def unix_socket(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))  # the socket file stays when it is closed
    return path


def digits_and_a_fifo(folder: Path) -> Path:
    digits = folder / "digits"
    digits.mkdir()
    for sample in (SAMPLES / "digits").iterdir():
        (digits / sample.name).write_bytes(sample.read_bytes())
    fifo(digits / "z.png")
    return digits


@pytest.mark.parametrize(
    ("make_input", "words"),
    [
        (lambda d: fifo(d / "pipe"), ["pipe: is a named pipe (FIFO)", "expected a folder of"]),
        (lambda d: fifo(d / "rows.csv"), ["rows.csv: is a named pipe (FIFO)", "expected a CSV"]),
        (digits_and_a_fifo, ["z.png: is a named pipe (FIFO)", "expected a PNG/JPEG image file"]),
        (lambda d: Path("/dev/zero"), ["/dev/zero: is a character device, not a regular file"]),
        (lambda d: unix_socket(d / "scoring.sock"), ["scoring.sock: is a socket"]),
        (
            lambda d: (d / "rows.csv").mkdir() or d / "rows.csv",
            ["rows.csv: is a folder, not a regular file; expected a CSV file"],
        ),
    ],
    ids=["fifo", "fifo-csv", "fifo-in-folder", "device", "socket", "folder-named-csv"],
)
def test_special_file_is_refused_before_the_model(tmp_path: Path, make_input, words) -> None:
    """A named pipe blocks the first read until someone writes to it and /dev/zero never ends:
    each is refused by its type in a second, before the model's tracking server (down here) is
    asked; a hang fails the test at its 30 s timeout."""
    source = make_input(tmp_path)
    result = run_cli(
        PREDICT,
        "models:/mnist@champion",
        source,
        tracking_uri=down_tracking_uri(),
        cwd=tmp_path,
        timeout=30,
    )
    assert_predict_error(result, 2, *words)


def quoted_lines(path: Path) -> Path:
    """One row of 2 MiB made of short lines inside a quoted field."""
    path.write_text('age,note\n1,"' + "x\n" * MIB + '"\n2,ok\n')
    return path


@pytest.mark.parametrize(
    "write_csv",
    [lambda path: write_long_line_csv(path, 2 << 30), quoted_lines],
    ids=["endless-line", "quoted-lines"],
)
def test_csv_row_over_the_limit_is_refused_within_memory(tmp_path: Path, write_csv) -> None:
    """A row over PREDICT_MAX_CSV_ROW_MB (1 MiB): a 2 GiB line with no line break, or short
    lines inside one quoted field. Refused in one line naming the file, the limit and its
    variable, under a 1 GiB address space (a whole 2 GiB row cannot fit in it)."""
    rows = write_csv(tmp_path / "rows.csv")
    command = [sys.executable, "-m", PREDICT, "models:/mnist@champion", str(rows)]
    env = client_env(down_tracking_uri())
    result = run_limited(command, CSV_ADDRESS_SPACE, env, tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith(
        f"predict: error: {rows}: a CSV row longer than the limit of 1,048,576 bytes (1 MiB); "
        "raise it with PREDICT_MAX_CSV_ROW_MB=<MiB>"
    ), result.stderr


def test_csv_row_limit_is_raised_by_its_variable(tmp_path: Path) -> None:
    """A row of 2 MiB: refused by default, through the input check with
    PREDICT_MAX_CSV_ROW_MB=3 (the tracking server, down here, stops it next); a value that is
    not a whole number of MiB is one line."""
    rows = tmp_path / "rows.csv"
    rows.write_text("age,note\n1," + "x" * (2 * MIB) + "\n")
    down = down_tracking_uri()
    for value, code, words in [
        ("", 2, "a CSV row longer than the limit of 1,048,576 bytes"),
        ("3", 1, f"tracking server {down} did not answer"),
        ("lots", 2, "PREDICT_MAX_CSV_ROW_MB must be a whole number of MiB >= 1, got 'lots'"),
    ]:
        result = run_cli(
            PREDICT,
            "models:/mnist@champion",
            rows,
            tracking_uri=down,
            cwd=tmp_path,
            PREDICT_MAX_CSV_ROW_MB=value,
        )
        assert_predict_error(result, code, words)


def test_image_over_the_pixel_cap_is_one_line(tmp_path: Path) -> None:
    """10000x10000 pixels (97 KB): PIL only warns below 179 million pixels; predict's own cap,
    8192x8192, refuses it by its header in one line, without PIL's warning."""
    image = write_png_bomb(tmp_path / "poster.png", side=10_000)
    result = run_cli(
        PREDICT, "models:/mnist@champion", image, tracking_uri=down_tracking_uri(), cwd=tmp_path
    )
    assert_predict_error(
        result, 2, "poster.png: 10000x10000 pixels, more than the 67,108,864 (8192x8192)"
    )


# How predict.safety refuses each model of HOSTILE_MODELS, and the input it is given.
HOSTILE = {
    "pickled-sklearn": ("it is saved as cloudpickle", SAMPLES / "diabetes.csv"),
    "untrusted-skops": (
        "its skops file holds untrusted types model_code.MarkerRegressor",
        SAMPLES / "diabetes.csv",
    ),
    "pickled-torch": ("it is a PyTorch model saved as a pickle (model.pth)", SAMPLES / "digits"),
    "skops-hiding-a-pickle": (
        "its python_function data 'hidden' is another model",
        SAMPLES / "diabetes.csv",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(HOSTILE_MODELS))
def test_model_that_would_run_its_code_is_refused(tmp_path: Path, kind: str) -> None:
    """predict refuses the model in one line naming why, and none of its code runs (its marker
    file stays absent), though that code is importable; with --allow-pickle predict loads it and
    the marker appears: the code would have run."""
    marker = tmp_path / "marker"
    model = HOSTILE_MODELS[kind](tmp_path / "model", marker)
    why, data = HOSTILE[kind]
    code = code_env(model)

    refused = run_cli(PREDICT, model, data, cwd=tmp_path, **code)
    assert_predict_error(refused, 1, f"refusing to load '{model}': {why}", "--allow-pickle")
    assert not marker.exists(), marker.read_text()
    assert not (tmp_path / "predictions.csv").exists()

    allowed = run_cli(PREDICT, model, data, "--allow-pickle", cwd=tmp_path, **code)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert marker.exists()


@pytest.mark.slow
def test_serve_refuses_a_pickled_torch_model_before_listening(tmp_path: Path) -> None:
    """predict.serve loads the model itself: a PyTorch pickle whose pickle module MLflow would
    import is refused in one line, exit 1, none of its code run and nothing listening."""
    marker = tmp_path / "marker"
    model = HOSTILE_MODELS["pickled-torch"](tmp_path / "model", marker)
    port = free_port()
    served = run_cli(SERVE, model, "--port", port, cwd=tmp_path, **code_env(model))
    reason = one_line_reason(served, "predict.serve: error: ")
    assert f"refusing to load '{model}': {HOSTILE['pickled-torch'][0]}" in reason, reason
    assert served.returncode == 1
    assert not marker.exists(), marker.read_text()
    assert not port_busy(port)


@pytest.mark.server
def test_make_serve_answers_an_oversized_body_with_413(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`make serve` with PREDICT_SERVE_MAX_BODY_MB=1: a 64 MiB body, with its Content-Length,
    chunked, or chunked under a Content-Length of 10, is answered 413 with one JSON line naming
    the limit once the limit is passed, long before the client has sent it all; bodies within
    the limit, either way, get predictions before and after, and the REST client's too."""
    model = digit_model(tmp_path_factory.getbasetemp() / "digit-model")
    port, log = free_port(), tmp_path / "serve.log"
    env = client_env(f"sqlite:///{tmp_path / 'unused.db'}", PREDICT_SERVE_MAX_BODY_MB="1")
    server = start(make_serve(model, port), log, env)
    images = json.dumps({"inputs": np.zeros((2, 1, 28, 28)).tolist()}).encode()
    try:
        wait_http(f"http://{HOST}:{port}/ping", server, log, timeout=180)
        for length in (len(images), None):
            answer = post_streamed(HOST, port, "/invocations", [images[:999], images[999:]], length)
            assert answer.status == 200, answer.body[:500]
            assert np.asarray(json.loads(answer.body)["predictions"]).shape == (2, 10)

        # Declared, chunked, and chunked while declaring 10 bytes (the server reads it chunked).
        for length, chunked in ((64 * MIB, False), (None, True), (10, True)):
            body = itertools.repeat(b" " * MIB, 64)
            answer = post_streamed(HOST, port, "/invocations", body, length, chunked)
            assert answer.status == 413, (length, answer.status, answer.body[:300])
            assert answer.body.endswith(b"}\n") and answer.body.count(b"\n") == 1, answer.body
            error = json.loads(answer.body)
            assert error["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
            assert "request body over the limit of 1,048,576 bytes (1 MiB)" in error["message"]
            assert "raise it with PREDICT_SERVE_MAX_BODY_MB=<MiB>" in error["message"]
            assert answer.headers["Connection"] == "close"
            assert answer.sent < 32 * MIB, (length, answer.sent)

        request = urllib.request.Request(
            f"http://{HOST}:{port}/invocations", images, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as after:
            assert np.asarray(json.load(after)["predictions"]).shape == (2, 10)
        client = run_cli(REST_CLIENT, f"http://{HOST}:{port}", SAMPLES / "digits")
        assert client.returncode == 0, client.stderr[-2000:]
        assert len(client.stdout.splitlines()) == len(list((SAMPLES / "digits").iterdir()))
    finally:
        stop(server, timeout=5)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ("html", ["answered text/html, not JSON: '<!doctype html> <html><body><h1>Welcome"]),
        ("not-json", ["answered application/json, not JSON: 'predictions: 7 2 1'"]),
        ("wrong-shape", ['without {"predictions": 6 rows of 10 digit scores}', "[[0.1, 0.9]]"]),
        ("no-predictions", ['without {"predictions": 6 rows', '{"outputs": "later"}']),
        ("http-500", ["answered HTTP 500 Internal Server Error: 'Internal Server Error Trace"]),
        (RESET, ["gave no complete answer: [Errno 104] Connection reset by peer"]),
        (CUT_SHORT, ["closed the connection after 18 of the 1,000 bytes", '{"predictions": [[']),
        (HUGE, ["answered more than 16,777,216 bytes: '{\"predictions\": [['"]),
    ],
)
def test_rest_client_names_an_unexpected_reply_in_one_line(reply: str, words: list[str]) -> None:
    """A real HTTP server on loopback answers /invocations with anything but predictions: the
    client prints one short line naming the URL and the start of what came, exit 1."""
    with scoring_impostor() as server:
        result = run_cli(REST_CLIENT, f"{server}/{reply}", SAMPLES / "digits", timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and len(result.stderr) < 600, result.stderr[-3000:]
    assert result.stderr.startswith(f"rest_client: error: {server}/{reply}/invocations "), (
        result.stderr
    )
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def test_serve_refuses_a_body_limit_that_is_not_whole_mib(tmp_path: Path) -> None:
    """PREDICT_SERVE_MAX_BODY_MB=1.5: one line naming the variable and the value, exit 2,
    before the model is fetched."""
    served = run_cli(
        SERVE, tmp_path / "no-model", "--port", free_port(), PREDICT_SERVE_MAX_BODY_MB="1.5"
    )
    reason = one_line_reason(served, "predict.serve: error: ")
    assert "PREDICT_SERVE_MAX_BODY_MB must be a whole number of MiB >= 1, got '1.5'" in reason
    assert served.returncode == 2
