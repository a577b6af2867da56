"""Distributed data-parallel training (projects/mnist-ddp-*): torchrun processes that make one
MLflow run, how a failed rank ends it, and the Kubernetes Indexed Job that runs it on pods.

Everything runs for real on this machine's CPU (gloo): `mlflow run` with 2 processes, a rank
killed or raising mid-training, and the Job's 2 pods as 2 containers of the pushed image (see
tests/helpers/ddp.py for what stands in for the cluster). The smoke runs of both projects are
in test_projects.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import mlflow.pyfunc
import pytest
import yaml
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from ready_for_mlflow.servers import S3, TrackingServer
from scaffold.layout import KUBERNETES_VERSION, PROJECTS
from tests.helpers.commands import mlflow_run, one_line_reason, only_run
from tests.helpers.ddp import (
    env_value,
    failing_rank_env,
    launch,
    processes_with_env,
    project_python,
    rank_process,
    run_indexed_job_in_docker,
)
from tests.helpers.heldout import mnist_accuracy
from tests.helpers.kubernetes import container_of, render
from tests.helpers.projects import smoke_config

DDP_CONDA = PROJECTS / "mnist-ddp-conda"
DDP_K8S = PROJECTS / "mnist-ddp-k8s"
MNIST_K8S = PROJECTS / "mnist-k8s"
SHORT = {"epochs": 1, "batch_size": 128, "learning_rate": 0.003, "seed": 7}
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "train_images_per_second")
FAKE_DIGEST = "sha256:" + "cd" * 32
TOKEN = "MNIST_DDP_TEST_TOKEN"


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def datasets(run: Run) -> list[tuple[str, str, int, str]]:
    """(name, context, rows, digest) of each dataset input of ``run``, sorted."""
    found = []
    for item in run.inputs.dataset_inputs:
        (context,) = [tag.value for tag in item.tags if tag.key == "mlflow.data.context"]
        rows = json.loads(item.dataset.profile)["features_shape"][0]
        found.append((item.dataset.name, context, rows, item.dataset.digest))
    return sorted(found)


@pytest.mark.slow
def test_two_processes_make_one_run_that_matches_one_process(
    tracking_uri: str, tmp_path: Path
) -> None:
    """2 processes: one FINISHED run whose metrics rank 0 alone logged once each; the model
    scores like the 1-process run's with the same seed and global batch."""
    params = smoke_config(DDP_CONDA)["parameters"]
    assert params["nproc_per_node"] == 2 and params["epochs"] == 1
    result = mlflow_run(DDP_CONDA, tracking_uri, params, cwd=tmp_path, experiment="two")
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(tracking_uri, "two")
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.params["backend"] == "gloo"
    assert run.data.params["batch_size_per_process"] == "64"
    client = MlflowClient(tracking_uri)
    for key in EPOCH_METRICS:
        assert metric_steps(client, run.info.run_id, key) == [1], key
    assert metric_steps(client, run.info.run_id, "test_accuracy") == [0]
    steps = metric_steps(client, run.info.run_id, "train_loss_step")
    assert steps == sorted(set(steps)) and steps[0] == 10, steps  # once per 10 steps, not twice
    assert result.stdout.count("epoch 1:") == 1, result.stdout
    train_rows = int(run.data.params["train_size"]) + int(run.data.params["val_size"])
    logged = datasets(run)  # rank 0's: the training digits (train and val) and the test digits
    assert [found[:3] for found in logged] == [
        ("mnist-testing", "testing", int(run.data.params["test_size"])),
        ("mnist-training", "training", train_rows),
    ], logged
    two = mnist_accuracy(mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model"))
    assert two >= 0.8
    assert two == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-3)

    single = launch(DDP_CONDA, tracking_uri, params | {"nproc_per_node": 1}, tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    one = only_run(tracking_uri, "tests")
    assert one.data.params["world_size"] == "1"
    assert datasets(one) == logged  # the same digits whatever the number of processes
    assert abs(two - one.data.metrics["test_accuracy"]) <= 0.01, (two, one.data.metrics)


def test_batch_that_does_not_split_fails_before_any_process(
    tracking_uri: str, tmp_path: Path
) -> None:
    result = mlflow_run(
        DDP_CONDA, tracking_uri, SHORT | {"batch_size": 127}, cwd=tmp_path, experiment="tests"
    )
    reason = one_line_reason(result, "mnist_ddp.launch: error:")
    assert "--batch-size: 127 does not split evenly across 2 processes" in reason
    assert "torchrun" not in result.stderr
    assert only_run(tracking_uri).info.status == "FAILED"


def wait_for_metric(tracking_uri: str, experiment: str, key: str, timeout: float) -> None:
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        if found and any(key in r.data.metrics for r in client.search_runs([found.experiment_id])):
            return
        time.sleep(0.5)
    raise AssertionError(f"no run logged {key} within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rank", "direct"), [(1, False), (0, True)], ids=["rank 1, mlflow run", "rank 0, launched"]
)
def test_killing_one_rank_ends_both_and_fails_the_run(
    rank: int, direct: bool, tracking_uri: str, tmp_path: Path
) -> None:
    """SIGKILL one rank mid-training: torchrun stops the other, the launcher fails with the
    killed rank's error in one line, and the run is FAILED with that error as its `failure`
    tag. Launched directly, only the launcher can end the run that rank 0 started."""
    token = uuid.uuid4().hex
    env = {**os.environ, TOKEN: token}
    params = SHORT | {"epochs": 3}
    with ThreadPoolExecutor(1) as pool:
        if direct:
            running = pool.submit(launch, DDP_CONDA, tracking_uri, params, tmp_path, env)
        else:
            options = {"cwd": tmp_path, "env": env}
            running = pool.submit(mlflow_run, DDP_CONDA, tracking_uri, params, **options)
        wait_for_metric(tracking_uri, "tests", "train_loss_step", timeout=120)
        pid = rank_process(TOKEN, token, rank)
        assert pid is not None, "no training process of that rank"
        os.kill(pid, signal.SIGKILL)
        result = running.result(timeout=120)
    assert result.returncode != 0
    reason = one_line_reason(result, "mnist_ddp.launch: error:")
    assert f"rank {rank} failed: Signal 9 (SIGKILL) received by PID {pid}" in reason
    assert not processes_with_env(TOKEN, token), "a rank outlived the run"
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == reason.removeprefix("mnist_ddp.launch: error: ")


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_run_with_its_error(tracking_uri: str, tmp_path: Path) -> None:
    """Rank 1 raises a ValueError at its 2nd optimizer step (a test-only sitecustomize on
    PYTHONPATH: tests/helpers/rank_fault): rank 0 stops too, the launcher names rank 1's
    exception from its error file, not rank 0's lost peer, and the run is FAILED with it as its
    `failure` tag."""
    token = uuid.uuid4().hex
    env = failing_rank_env(1, 2, os.environ | {TOKEN: token})
    result = mlflow_run(DDP_CONDA, tracking_uri, SHORT, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode != 0
    reasons = [
        line for line in result.stderr.splitlines() if line.startswith("mnist_ddp.launch: error:")
    ]
    error = "ValueError: fault injected into rank 1 at optimizer step 2"
    assert reasons == [f"mnist_ddp.launch: error: rank 1 failed: {error}"], result.stderr[-3000:]
    assert not processes_with_env(TOKEN, token), "a rank outlived the run"
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == f"rank 1 failed: {error}"
    assert "world_size" in run.data.params  # rank 0 had started recording when rank 1 failed


@pytest.mark.slow
def test_diverging_loss_stops_every_rank_and_fails_the_run(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A learning rate of 1e30: the loss summed across ranks is not finite at the same step on
    every rank, so all ranks stop there with mnist's NonFiniteLoss, the launcher names it in one
    line, and the run is FAILED with no model."""
    params = SHORT | {"learning_rate": 1e30}
    result = launch(DDP_CONDA, tracking_uri, params, tmp_path)
    reason = one_line_reason(result, "mnist_ddp.launch: error:")
    assert "NonFiniteLoss: the training loss became nan at epoch 1, step " in reason, reason
    # Each rank that got to print before torchrun stopped the others names the same step.
    ranks = [line for line in result.stderr.splitlines() if line.startswith("mnist_ddp.train:")]
    assert ranks, result.stderr[-3000:]
    assert all(line.split(": ", 3)[-1] in reason for line in ranks), (ranks, reason)
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == reason.removeprefix("mnist_ddp.launch: error: ")
    client = MlflowClient(tracking_uri)
    assert "model" not in [item.path for item in client.list_artifacts(run.info.run_id)]


def test_pods_find_rank_zero_from_their_hostname() -> None:
    """An Indexed Job's pod is <job>-<index>: rank 0 is <job>-0.<service>; JOB_COMPLETION_INDEX
    is the node rank, and must be below nnodes; MASTER_ADDR, when set, wins; a pod of another
    kind fails clearly."""
    job = "mnist-ddp-k8s-2026-11-28-01-02-03-123456"
    code = f"""
import json
from mnist_ddp.launch import master_address, node_rank, rendezvous
pod = {{"JOB_COMPLETION_INDEX": "1", "DDP_SERVICE": "mnist-ddp"}}
errors = []
for call in (lambda: master_address("laptop", 1, "mnist-ddp"),
             lambda: node_rank(2, {{"JOB_COMPLETION_INDEX": "2"}}),
             lambda: node_rank(1, {{"JOB_COMPLETION_INDEX": "1"}}),
             lambda: rendezvous(2, 1, {{"NODE_RANK": "1"}}, "{job}-1")):
    try:
        call()
    except ValueError as exc:
        errors.append(str(exc))
print(json.dumps({{
    "pod 1": rendezvous(2, node_rank(2, pod), pod, "{job}-1"),
    "pod 12": master_address("{job}-12", 12, "mnist-ddp"),
    "set": rendezvous(2, 1, pod | {{"MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "1234"}}, "x"),
    "one node": rendezvous(1, node_rank(1, {{"NODE_RANK": "3"}}), {{}}, "laptop"),
    "errors": errors,
}}))
"""
    result = project_python(DDP_CONDA, code)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["pod 1"] == [
        "--nnodes=2",
        "--node-rank=1",
        f"--master-addr={job}-0.mnist-ddp",
        "--master-port=29500",
    ]
    assert found["pod 12"] == f"{job}-0.mnist-ddp"
    assert found["set"][2:] == ["--master-addr=10.0.0.7", "--master-port=1234"]
    assert found["one node"] == ["--standalone", "--nnodes=1"]
    assert "hostname 'laptop' is not <job name>-1" in found["errors"][0]
    assert "rank is '2': expected an integer below nnodes=2" in found["errors"][1]
    assert "rank is '1': expected an integer below nnodes=1" in found["errors"][2]
    assert "set MASTER_ADDR, or DDP_SERVICE" in found["errors"][3]


def rendered_job(project: Path, storage: Path) -> dict:
    tag = f"registry.example/{project.name}:abc1234"
    return render(project, {}, tag, FAKE_DIGEST, "r" * 32, "7", storage)


def secret_refs(container: dict) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}


def test_rendered_indexed_job_and_service(tmp_path: Path) -> None:
    """MLflow renders an Indexed Job of nnodes pods under the headless Service; both validate;
    the Secrets and securityContext are those of mnist-k8s."""
    job = rendered_job(DDP_K8S, tmp_path)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    (service,) = yaml.safe_load_all((DDP_K8S / "kubernetes_service.yaml").read_text())
    kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = container_of(job)
    nnodes = yaml.safe_load((DDP_K8S / "MLproject").read_text())["entry_points"]["main"][
        "parameters"
    ]["nnodes"]["default"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nnodes == 2
    assert spec["backoffLimit"] == 0
    assert container["command"][:5] == [
        "python",
        "-m",
        "mnist_ddp.launch",
        "--nproc-per-node=1",
        f"--nnodes={nnodes}",
    ]
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert pod["subdomain"] == service["metadata"]["name"] == env_value(container, "DDP_SERVICE")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 29500
    mnist = rendered_job(MNIST_K8S, tmp_path)
    assert secret_refs(container) == secret_refs(container_of(mnist))
    mnist_pod = mnist["spec"]["template"]["spec"]
    assert pod.get("securityContext") == mnist_pod.get("securityContext")
    assert container.get("securityContext") == container_of(mnist).get("securityContext")
    assert container["resources"] == container_of(mnist)["resources"]


@pytest.mark.docker
@pytest.mark.slow
def test_job_pods_train_as_one_run(
    registry: str,
    tracking_server: TrackingServer,
    s3: S3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pushed image by digest as the Job's 2 pods (JOB_COMPLETION_INDEX 0 and 1), against
    a real tracking server: pod 1 finds rank 0 by name, and one run of world size 2 FINISHES:
    the run MLflow created for the Job, and no other (pod 1's rank recorded nothing)."""
    started_ms = int(time.time() * 1000)
    done = run_indexed_job_in_docker(DDP_K8S, SHORT, registry, tracking_server.url, tmp_path)
    for index, pod in enumerate(done.pods):
        assert pod.returncode == 0, f"pod {index}: {pod.stderr[-3000:]}"
    job_name = done.job["metadata"]["name"]
    assert f"--node-rank=1 --master-addr={job_name}-0.mnist-ddp" in done.pods[1].stderr
    assert "epoch 1:" in done.pods[0].stdout and "epoch" not in done.pods[1].stdout
    client = MlflowClient(tracking_server.url)
    run = client.get_run(done.run_id)
    assert run.info.status == "FINISHED"
    since = f"attributes.start_time >= {started_ms}"
    new_runs = client.search_runs([run.info.experiment_id], since, ViewType.ALL)
    assert [r.info.run_id for r in new_runs] == [done.run_id]
    assert run.data.params["world_size"] == "2"
    assert run.data.params["nnodes"] == "2"
    assert run.data.params["nproc_per_node"] == "1"
    assert {"val_accuracy", "test_accuracy"} <= set(run.data.metrics)
    assert any(key.endswith("MLmodel") for key in s3.object_keys()), "no model in S3"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    model = mlflow.pyfunc.load_model(f"runs:/{done.run_id}/model")
    assert mnist_accuracy(model) >= 0.8
