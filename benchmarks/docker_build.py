"""Docker: the run image after a one-line code change, against a cold dependency image build.

    python -m benchmarks.docker_build [--cold]

The rebuild is the `--build-image` step of `make run-docker` (``mlflow_project_store.images``,
MLflow's build with the project's .dockerignore honoured: FROM the dependency image, COPY the
project folder with its links followed) on a copy of projects/mnist-docker, timed after one
line of mnist/train.py changed. ``--cold`` also builds
mnist-docker's Dockerfile with ``--no-cache`` under a throwaway tag (pip installs torch: many
minutes and ~7 GB, so it is off by default; the figure of the last cold build stays in
results.json). The images made here are removed again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import RESULTS, record
from mlflow_project_store.docker_images import base_image, image_of
from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.project_tools.cli import OneLineParser

PROJECT = PROJECTS / "mnist-docker"
RUN_IMAGE = "mlflow-store-bench/mnist-docker"
COLD_TAG = "mlflow-store-bench/mnist-deps:cold"


def docker(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def dependency_image() -> str:
    return image_of(PROJECT)


def rebuild_seconds(work: Path) -> tuple[float, float]:
    """MLflow's run-image build on a copy of the project: first, then after a one-line change."""
    import mlflow

    from mlflow_project_store.images import build_image

    copy = work / "mnist-docker"
    shutil.copytree(PROJECT, copy, symlinks=False)  # links followed, as MLflow copies them
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    times = []
    for change in ("", "# one changed line\n"):
        with (copy / "mnist" / "train.py").open("a") as source:
            source.write(change)
        start = time.perf_counter()
        build_image(str(copy), RUN_IMAGE, dependency_image(), run_id, True)
        times.append(time.perf_counter() - start)
    docker("image", "rm", "-f", f"{RUN_IMAGE}:latest")
    return times[0], times[1]


def cold_seconds() -> float:
    base = base_image()
    build = ["build", "--no-cache", "--quiet", "--network", "host", "-t", COLD_TAG]
    start = time.perf_counter()
    done = docker(*build, "--build-arg", f"BASE_IMAGE={base}", str(PROJECT))
    seconds = time.perf_counter() - start
    docker("image", "rm", "-f", COLD_TAG)
    if done.returncode != 0:
        sys.exit(f"docker_build: error: cold build failed: {done.stderr[-2000:]}")
    return seconds


def last_cold() -> dict | None:
    if not RESULTS.is_file():
        return None
    entry = json.loads(RESULTS.read_text())["benchmarks"].get("docker_build", {})
    return next((r for r in entry.get("rows", []) if r.get("cold")), None)


def main() -> None:
    parser = OneLineParser(prog="benchmarks.docker_build", description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also build the dependency image")
    args = parser.parse_args()
    if docker("info").returncode != 0:
        print("docker_build: skipped: no Docker daemon answers")
        return
    if docker("image", "inspect", dependency_image()).returncode != 0:
        print(f"docker_build: skipped: no {dependency_image()} (make docker-images)")
        return
    with tempfile.TemporaryDirectory(prefix="docker-build-") as folder:
        first, changed = rebuild_seconds(Path(folder))
    rows: list[dict[str, object]] = [
        {"build": "run image, first (COPY of the project)", "seconds": round(first, 1)},
        {
            "build": "run image after a one-line change",
            "seconds": round(changed, 1),
            "target": "<= 10 s",
        },
    ]
    cold = {"build": "dependency image, cold (--no-cache)", "cold": True}
    if args.cold:
        cold |= {"seconds": round(cold_seconds(), 1), "measured": time.strftime("%Y-%m-%d")}
    elif previous := last_cold():
        cold = previous
    else:
        cold |= {"seconds": None, "measured": "not yet: python -m benchmarks.docker_build --cold"}
    if cold.get("seconds"):
        cold["ratio of the rebuild to it"] = round(changed / cold["seconds"], 3)
    rows.append(cold)
    record("docker_build", rows, "", "python -m benchmarks.docker_build [--cold]")


if __name__ == "__main__":
    main()
