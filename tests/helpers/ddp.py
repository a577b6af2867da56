"""The distributed training's pods without a cluster, and its rank processes on this machine.

The Job's pods: MLflow's own code renders the Indexed Job (tests/helpers/kubernetes.py), and
the image MLflow built and pushed runs by digest as one container per completion index, on the
host network, with the rendered command and env plus what Kubernetes would give each pod: its
JOB_COMPLETION_INDEX, its hostname ``<job name>-<index>``, and the name of the index-0 pod
under the headless Service (``--add-host``, standing in for the cluster's DNS). Only
MASTER_PORT is added: the containers share the host's ports, where pods have their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import kubernetes_validate
from mlflow.projects import kubernetes as kb
from mlflow.projects._project_spec import load_project
from mlflow.projects.docker import build_docker_image
from mlflow.tracking import MlflowClient

from ready_for_mlflow.servers import free_port
from scaffold.layout import KUBERNETES_VERSION
from tests.helpers.commands import processes_with_env
from tests.helpers.components import require_docker_image
from tests.helpers.kubernetes import container_of, pod_environment, render

RANK_FAULT = Path(__file__).with_name("rank_fault")


@dataclass(frozen=True)
class JobRun:
    run_id: str
    job: dict
    pods: list[subprocess.CompletedProcess[str]]


def env_value(container: dict, name: str) -> str:
    (value,) = [item["value"] for item in container["env"] if item["name"] == name]
    return value


def pod_command(job: dict, index: int, master_port: int) -> list[str]:
    """`docker run` of the Job's pod ``index``, as Kubernetes would start it."""
    container = container_of(job)
    pod_spec = job["spec"]["template"]["spec"]
    hostname = f"{job['metadata']['name']}-{index}"
    rank_zero = f"{job['metadata']['name']}-0.{pod_spec['subdomain']}"
    return [
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        "--hostname",
        hostname,
        "--add-host",
        f"{rank_zero}:127.0.0.1",
        "--add-host",  # a pod's own names are in its /etc/hosts, as the kubelet writes it
        f"{hostname}:127.0.0.1",
        "--add-host",
        f"{hostname}.{pod_spec['subdomain']}:127.0.0.1",
        "-e",
        f"JOB_COMPLETION_INDEX={index}",
        "-e",
        f"MASTER_PORT={master_port}",
        *pod_environment(container),
        "--entrypoint",
        container["command"][0],
        container["image"],
        *container["command"][1:],
    ]


def run_indexed_job_in_docker(
    project: Path, params: dict[str, object], registry: str, tracking_uri: str, workdir: Path
) -> JobRun:
    """Build and push the project's image, render and validate its Indexed Job, and run all
    its pods at once from the pushed image by digest."""
    base_image = require_docker_image(project)
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": tracking_uri}):
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("kubernetes-ddp")
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment("kubernetes-ddp")
        )
        run_id = client.create_run(experiment_id).info.run_id
        name = load_project(str(project)).name
        image = build_docker_image(
            str(project), f"{registry}/{name}", base_image, run_id, True, docker_auth=None
        )
        tag = image.tags[0]
        digest = kb.push_image_to_registry(tag)
        job = render(project, params, tag, digest, run_id, experiment_id, workdir)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    subprocess.run(["docker", "rmi", tag], capture_output=True, check=True)  # pull it back
    port = free_port()
    logs = [(workdir / f"pod-{i}.out", workdir / f"pod-{i}.err") for i in range(pod_count(job))]
    pods = []
    for index, (out, err) in enumerate(logs):
        with out.open("w") as stdout, err.open("w") as stderr:
            pods.append(
                subprocess.Popen(pod_command(job, index, port), stdout=stdout, stderr=stderr)
            )
    try:
        codes = [pod.wait(timeout=600) for pod in pods]
    finally:
        for pod in pods:
            if pod.poll() is None:
                pod.send_signal(signal.SIGTERM)
        subprocess.run(["docker", "rmi", container_of(job)["image"]], capture_output=True)
    results = [
        subprocess.CompletedProcess(pod.args, code, out.read_text(), err.read_text())
        for pod, code, (out, err) in zip(pods, codes, logs, strict=True)
    ]
    return JobRun(run_id, job, results)


def pod_count(job: dict) -> int:
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"], "all pods must run at once"
    return spec["completions"]


def launch(
    project: Path,
    tracking_uri: str,
    params: dict[str, object],
    workdir: Path,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The entry point without `mlflow run`: ``python -m mnist_ddp.launch`` in the project
    folder, recording into ``tracking_uri`` in the experiment ``tests``, whose artifacts go
    under ``workdir`` (not the project folder, the working folder of the ranks)."""
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name("tests") is None:
        client.create_experiment("tests", artifact_location=(workdir / "mlruns").as_uri())
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in params.items()]
    return subprocess.run(
        [sys.executable, "-m", "mnist_ddp.launch", *flags],
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
        if f"RANK={rank}".encode() in environ and b"mnist_ddp.train" in cmdline:
            return pid
    return None
