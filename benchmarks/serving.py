"""Serving the registered mnist model: `mlflow models serve` against the in-process floor.

    python -m benchmarks.serving [--requests 200]

A one-epoch mnist model is registered through a tracking server on loopback (SQLite store,
artifacts proxied to a local S3 endpoint), then served by `mlflow models serve`, which
`make serve` runs after its pickle check. On the same bundled test digits: latency of one
image per request (p50, p99, over ``--requests`` requests on one kept-alive connection) and
throughput in batches of 256, each beside the
same model's ``predict`` in this process (the floor); and `make predict`'s CLI on the 2,000
test digits beside the in-process predict of the same digits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from benchmarks.results import record
from mlflow_project_store.data_loader import load_mnist
from mlflow_project_store.layout import ROOT
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mlflow_project_store.ready_for_mlflow.servers import (
    HOST,
    VENV_BIN,
    free_port,
    launch,
    mlflow_server,
    moto_s3,
    stop,
)

MODEL = "mnist-bench"
TEST_IDX = ROOT / "example" / "data_loader" / "mnist_sample" / "t10k-images-idx3-ubyte.gz"
BATCH = 256


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def register(url: str) -> str:
    """Train one epoch with mnist.train and register it; the version's URI."""
    from mnist import train

    os.environ["MLFLOW_TRACKING_URI"] = url
    argv = ["--epochs", "1", "--batch-size", "128", "--learning-rate", "0.003"]
    if train.main([*argv, "--device", "cpu", "--registered-model-name", MODEL]) != 0:
        sys.exit("serving: error: training the model to serve failed")
    return f"models:/{MODEL}/1"


def main() -> None:
    parser = OneLineParser(prog="benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=number(int, 1), default=200)
    args = parser.parse_args()
    images = load_mnist(split="test").images.numpy()
    os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="serving-") as folder:
        work = Path(folder)
        with moto_s3(work) as s3, mlflow_server(work, f"sqlite:///{work}/mlflow.db", s3) as server:
            uri = register(server.url)
            import mlflow.pyfunc

            start = time.perf_counter()
            model = mlflow.pyfunc.load_model(uri)
            load_seconds = time.perf_counter() - start
            port = free_port()
            serve = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager"]
            serve += ["local", "--host", HOST, "--port", str(port)]
            env = os.environ | {"MLFLOW_TRACKING_URI": server.url}
            base = f"http://{HOST}:{port}"
            process = launch(serve, work / "serve.log", f"{base}/ping", timeout=180, env=env)
            try:
                rows = compare(model, base, images, args.requests)
            finally:
                stop(process)
            rows += predict_cli(model, uri, server.url, images, load_seconds, work)
    notes = (
        f"one-epoch model, pt2, CPU; {args.requests} one-image requests on one connection; "
        f"batches of {BATCH} over the 2,000 test digits, best of 3."
    )
    record("serving", rows, notes, f"python -m benchmarks.serving --requests {args.requests}")


def compare(model, base: str, images: np.ndarray, count: int) -> list[dict[str, object]]:
    session = requests.Session()

    def served(batch: np.ndarray) -> np.ndarray:
        answer = session.post(f"{base}/invocations", json={"inputs": batch.tolist()}, timeout=120)
        answer.raise_for_status()
        return np.asarray(answer.json()["predictions"], dtype=np.float32)

    one = [images[i : i + 1] for i in range(count)]
    for batch in one[:10]:  # warm both paths
        served(batch), model.predict(batch)
    local = [timed(lambda b=b: model.predict(b), 1)[0] for b in one]
    remote = [timed(lambda b=b: served(b), 1)[0] for b in one]
    same = np.allclose(served(images[:BATCH]), model.predict(images[:BATCH]), atol=1e-4)
    batches = [images[i : i + BATCH] for i in range(0, len(images), BATCH)]
    local_all = min(timed(lambda: [model.predict(b) for b in batches], 3))
    remote_all = min(timed(lambda: [served(b) for b in batches], 3))
    rows: list[dict[str, object]] = []
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        served_ms, floor_ms = percentile(remote, q) * 1000, percentile(local, q) * 1000
        rows.append(
            {
                "figure": f"one image per request, {name} (ms)",
                "mlflow models serve": round(served_ms, 2),
                "in-process floor": round(floor_ms, 2),
                "ratio": round(served_ms / floor_ms, 1),
                "target": "<= 15 ms" if name == "p50" else "",
            }
        )
    rows.append(
        {
            "figure": f"batches of {BATCH} (images/s)",
            "mlflow models serve": round(len(images) / remote_all),
            "in-process floor": round(len(images) / local_all),
            "ratio": round(local_all / remote_all, 2),
            "target": f"same logits: {same}",
        }
    )
    return rows


def predict_cli(model, uri: str, url: str, images, load_seconds: float, work: Path):
    command = [sys.executable, "-m", "predict", uri, str(TEST_IDX)]
    command += ["--output", str(work / "out.csv"), "--show", "0"]
    env = os.environ | {"MLFLOW_TRACKING_URI": url}

    def cli() -> None:
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)

    cli_seconds = min(timed(cli, 2))
    floor = min(timed(lambda: model.predict(images), 3))
    return [
        {
            "figure": f"make predict, {len(images)} test digits (s)",
            "mlflow models serve": None,
            "in-process floor": round(floor, 3),
            "ratio": round(cli_seconds / floor, 1),
            "target": f"CLI {cli_seconds:.2f} s; in-process load + predict "
            f"{load_seconds + floor:.2f} s",
        }
    ]


if __name__ == "__main__":
    main()
