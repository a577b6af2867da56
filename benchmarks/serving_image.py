"""The serving image of `make serving-image` against `make serve`, on the same model.

    python -m benchmarks.serving_image [--requests 400]

A one-epoch mnist model is registered through a tracking server on loopback (SQLite store,
artifacts proxied to a local S3 endpoint), as in benchmarks/serving. Its serving image is built
as `make serving-image` builds it (not pushed) and run as its pod runs (uid 1000, read-only
root, a tmpfs /tmp, no capability, the host's network); `make serve`'s server
(``predict.serve``) serves the same version on the host. Latency of one image per request
(p50, p99 over ``--requests`` requests on one kept-alive connection each, the two servers
measured in turns), the seconds from start to /ping answering, and the image's size: all of
it, and the layer the model adds to the dependency image.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import docker
import numpy as np
import requests
from mlflow.tracking import MlflowClient

from benchmarks.results import record
from benchmarks.serving import percentile, register
from mlflow_project_store.data_loader import load_mnist
from mlflow_project_store.project_tools.cli import OneLineParser, number
from mlflow_project_store.ready_for_mlflow.servers import (
    HOST,
    free_port,
    launch,
    mlflow_server,
    moto_s3,
    stop,
)
from mlflow_project_store.serving_image import build, default_deps_image

TURNS = 4


def ready(url: str, timeout: float = 300) -> float:
    """Seconds until ``url``/ping answers 200."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"serving_image: error: {url}/ping did not answer within {timeout:.0f} s")


def latencies(url: str, images: np.ndarray, count: int) -> list[float]:
    """Seconds of each of ``count`` one-image POSTs to ``url``/invocations."""
    session = requests.Session()
    seconds = []
    for i in range(count):
        body = {"inputs": images[i % len(images) : i % len(images) + 1].tolist()}
        start = time.perf_counter()
        answer = session.post(f"{url}/invocations", json=body, timeout=60)
        seconds.append(time.perf_counter() - start)
        answer.raise_for_status()
    return seconds


def main() -> None:
    parser = OneLineParser(prog="benchmarks.serving_image", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=number(int, TURNS), default=400)
    args = parser.parse_args()
    images = load_mnist(split="test").images.numpy()
    os.environ["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = "cpu"  # as make serve sets it
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="serving-image-") as folder:
        work = Path(folder)
        with moto_s3(work) as s3, mlflow_server(work, f"sqlite:///{work}/mlflow.db", s3) as server:
            uri = register(server.url)
            os.environ["MLFLOW_TRACKING_URI"] = server.url
            name, version = uri.removeprefix("models:/").split("/")
            image = build(MlflowClient().get_model_version(name, version), "benchmark.local")
            container_port, serve_port = free_port(), free_port()
            urls = {
                "serving image": f"http://{HOST}:{container_port}",
                "make serve": f"http://{HOST}:{serve_port}",
            }
            started = time.perf_counter()
            # As the pod of ready_for_mlflow/deploy/model-serving.yaml asks of the runtime.
            container = client.containers.run(
                image.reference,
                ["--host", HOST, "--port", str(container_port)],
                detach=True,
                read_only=True,
                tmpfs={"/tmp": ""},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                network_mode="host",
            )
            process = None
            try:
                ready(urls["serving image"])
                start_seconds = {"serving image": time.perf_counter() - started}
                serve = [sys.executable, "-m", "mlflow_project_store.predict.serve", uri]
                serve += ["--host", HOST, "--port", str(serve_port)]
                started = time.perf_counter()
                process = launch(serve, work / "serve.log", f"{urls['make serve']}/ping", 300)
                start_seconds["make serve"] = time.perf_counter() - started
                seconds: dict[str, list[float]] = {key: [] for key in urls}
                for url in urls.values():
                    latencies(url, images, 10)  # warm both
                for _ in range(TURNS):
                    for key, url in urls.items():
                        seconds[key] += latencies(url, images, args.requests // TURNS)
            finally:
                if process is not None:
                    stop(process)
                container.remove(force=True)
            rows = table(seconds, start_seconds, image.reference, client)
            client.images.remove(image.reference)
    notes = (
        f"one-epoch model, pt2, CPU; {args.requests} one-image requests per server on one "
        f"connection, in {TURNS} turns; the container as its pod runs it (read-only root, no "
        "capability), on the host's network."
    )
    record(
        "serving_image",
        rows,
        notes,
        f"python -m benchmarks.serving_image --requests {args.requests}",
    )


def table(
    seconds: dict[str, list[float]],
    start_seconds: dict[str, float],
    reference: str,
    client: docker.DockerClient,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        image_ms = percentile(seconds["serving image"], q) * 1000
        serve_ms = percentile(seconds["make serve"], q) * 1000
        rows.append(
            {
                "figure": f"one image per request, {label} (ms)",
                "serving image": round(image_ms, 2),
                "make serve": round(serve_ms, 2),
                "ratio": round(image_ms / serve_ms, 2),
            }
        )
    rows.append(
        {
            "figure": "start to /ping answering (s)",
            "serving image": round(start_seconds["serving image"], 1),
            "make serve": round(start_seconds["make serve"], 1),
            "ratio": round(start_seconds["serving image"] / start_seconds["make serve"], 2),
        }
    )
    size = client.images.get(reference).attrs["Size"]
    deps = client.images.get(default_deps_image()).attrs["Size"]
    rows.append(
        {
            "figure": "image size (GB); the model's layer (MB)",
            "serving image": round(size / 1e9, 2),
            "make serve": None,
            "ratio": f"model layer {(size - deps) / 1e6:.2f} MB",
        }
    )
    return rows


if __name__ == "__main__":
    main()
