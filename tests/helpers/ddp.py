"""The distributed training's rank processes on this machine: launched without `mlflow run`,
one of them made to fail, and found among the processes.

(The Job's pods run on the stand-in cluster of tests/helpers/cluster.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.helpers.commands import processes_with_env

RANK_FAULT = Path(__file__).with_name("rank_fault")


def launch(
    project: Path,
    tracking_uri: str,
    params: dict[str, object],
    workdir: Path,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The entry point without `mlflow run`: ``python -m mnist.distributed.launch`` in the project
    folder, recording into ``tracking_uri`` in the experiment ``tests``, whose artifacts go
    under ``workdir`` (not the project folder, the working folder of the ranks)."""
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name("tests") is None:
        client.create_experiment("tests", artifact_location=(workdir / "mlruns").as_uri())
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in params.items()]
    return subprocess.run(
        [sys.executable, "-m", "mnist.distributed.launch", *flags],
        cwd=project,
        env={
            **(os.environ if env is None else env),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_EXPERIMENT_NAME": "tests",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def failing_rank_env(rank: int, step: int, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` in which the training process of ``rank`` raises a ValueError at its optimizer
    step ``step`` (tests/helpers/rank_fault/sitecustomize.py, first on PYTHONPATH)."""
    path = os.pathsep.join(filter(None, [str(RANK_FAULT), env.get("PYTHONPATH")]))
    return {
        **env,
        "PYTHONPATH": path,
        "MNIST_DDP_FAULT_RANK": str(rank),
        "MNIST_DDP_FAULT_STEP": str(step),
    }


def project_python(project: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in the project folder, where its packages are importable as
    `mlflow run` and torchrun import them."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rank_process(token_name: str, token: str, rank: int) -> int | None:
    """The training process of ``rank`` among the processes that carry the token."""
    for pid in processes_with_env(token_name, token):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"mnist.distributed.train" in cmdline:
            return pid
    return None
