"""Distributed data-parallel training (the `distributed` entry point of mnist-conda and
mnist-docker): torchrun processes that make one MLflow run, how a failed rank ends it, and the
Kubernetes Indexed Job that runs it on pods.

Everything runs for real on this machine's CPU (gloo): `mlflow run -e distributed` with 2
processes, a rank killed or raising mid-training, and `make run-k8s ENTRY_POINT=distributed`,
whose 2 pods run as 2 containers of the pushed image on the stand-in cluster of
tests/helpers/cluster.py (no Kubernetes cluster can run here).
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

from mlflow_project_store.deploy import DEPLOY, TRAINING_LABEL
from mlflow_project_store.layout import KUBERNETES_VERSION, PROJECTS
from mlflow_project_store.ready_for_mlflow.servers import S3, TrackingServer
from tests.helpers.cluster import container_of, env_value, job_cluster
from tests.helpers.commands import make, mlflow_run, one_line_reason, only_run
from tests.helpers.components import require_docker_image
from tests.helpers.ddp import (
    failing_rank_env,
    launch,
    processes_with_env,
    project_python,
    rank_process,
)
from tests.helpers.heldout import mnist_accuracy
from tests.helpers.kubernetes import Peer, allowed, render

MNIST_CONDA = PROJECTS / "mnist-conda"
MNIST_DOCKER = PROJECTS / "mnist-docker"
DISTRIBUTED = ["-e", "distributed"]
LAUNCHER = "mnist.distributed.launch: error:"
SHORT = {"epochs": 1, "batch_size": 128, "learning_rate": 0.003, "seed": 7}
TWO_PROCESSES = {"nproc_per_node": 2, **SHORT}
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
    params = TWO_PROCESSES
    result = mlflow_run(
        MNIST_CONDA, tracking_uri, params, extra_args=DISTRIBUTED, cwd=tmp_path, experiment="two"
    )
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

    single = launch(MNIST_CONDA, tracking_uri, params | {"nproc_per_node": 1}, tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    one = only_run(tracking_uri, "tests")
    assert one.data.params["world_size"] == "1"
    assert datasets(one) == logged  # the same digits whatever the number of processes
    assert abs(two - one.data.metrics["test_accuracy"]) <= 0.01, (two, one.data.metrics)


def test_batch_that_does_not_split_fails_before_any_process(
    tracking_uri: str, tmp_path: Path
) -> None:
    params = SHORT | {"batch_size": 127}
    result = mlflow_run(MNIST_CONDA, tracking_uri, params, extra_args=DISTRIBUTED, cwd=tmp_path)
    reason = one_line_reason(result, LAUNCHER)
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
            running = pool.submit(launch, MNIST_CONDA, tracking_uri, params, tmp_path, env)
        else:
            options = {"cwd": tmp_path, "env": env, "extra_args": DISTRIBUTED}
            running = pool.submit(mlflow_run, MNIST_CONDA, tracking_uri, params, **options)
        wait_for_metric(tracking_uri, "tests", "train_loss_step", timeout=120)
        pid = rank_process(TOKEN, token, rank)
        assert pid is not None, "no training process of that rank"
        os.kill(pid, signal.SIGKILL)
        result = running.result(timeout=120)
    assert result.returncode != 0
    reason = one_line_reason(result, LAUNCHER)
    assert f"rank {rank} failed: Signal 9 (SIGKILL) received by PID {pid}" in reason
    assert not processes_with_env(TOKEN, token), "a rank outlived the run"
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == reason.removeprefix(f"{LAUNCHER} ")


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_run_with_its_error(tracking_uri: str, tmp_path: Path) -> None:
    """Rank 1 raises a ValueError at its 2nd optimizer step (a test-only sitecustomize on
    PYTHONPATH: tests/helpers/rank_fault): rank 0 stops too, the launcher names rank 1's
    exception from its error file, not rank 0's lost peer, and the run is FAILED with it as its
    `failure` tag."""
    token = uuid.uuid4().hex
    env = failing_rank_env(1, 2, os.environ | {TOKEN: token})
    options = {"cwd": tmp_path, "env": env, "timeout": 300, "extra_args": DISTRIBUTED}
    result = mlflow_run(MNIST_CONDA, tracking_uri, TWO_PROCESSES, **options)
    assert result.returncode != 0
    reasons = [line for line in result.stderr.splitlines() if line.startswith(LAUNCHER)]
    error = "ValueError: fault injected into rank 1 at optimizer step 2"
    assert reasons == [f"{LAUNCHER} rank 1 failed: {error}"], result.stderr[-3000:]
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
    result = launch(MNIST_CONDA, tracking_uri, params, tmp_path)
    reason = one_line_reason(result, LAUNCHER)
    assert "NonFiniteLoss: the training loss became nan at epoch 1, step " in reason, reason
    # Each rank that got to print before torchrun stopped the others names the same step.
    prefix = "mnist.distributed.train:"
    ranks = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert ranks, result.stderr[-3000:]
    assert all(line.split(": ", 3)[-1] in reason for line in ranks), (ranks, reason)
    run = only_run(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == reason.removeprefix(f"{LAUNCHER} ")
    client = MlflowClient(tracking_uri)
    assert "model" not in [item.path for item in client.list_artifacts(run.info.run_id)]


def test_pods_find_rank_zero_from_their_hostname() -> None:
    """An Indexed Job's pod is <job>-<index>: rank 0 is <job>-0.<service>; JOB_COMPLETION_INDEX
    is the node rank, and must be below nnodes, which must be the Job's JOB_COMPLETIONS;
    MASTER_ADDR, when set, wins; a pod of another kind fails clearly."""
    job = "mnist-docker-2026-11-28-01-02-03-123456"
    code = f"""
import json
from mnist.distributed.launch import master_address, node_rank, rendezvous
pod = {{"JOB_COMPLETION_INDEX": "1", "DDP_SERVICE": "mnist-ddp"}}
errors = []
for call in (lambda: master_address("laptop", 1, "mnist-ddp"),
             lambda: node_rank(2, {{"JOB_COMPLETION_INDEX": "2"}}),
             lambda: node_rank(1, {{"JOB_COMPLETION_INDEX": "1"}}),
             lambda: rendezvous(2, 1, {{"NODE_RANK": "1"}}, "{job}-1"),
             lambda: node_rank(1, {{"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "2"}})):
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
    result = project_python(MNIST_CONDA, code)
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
    assert (
        "nnodes=1 but the Job starts 2 pods (JOB_COMPLETIONS): run it with -P nnodes=2"
        in (found["errors"][4])
    )


def rendered_job(storage: Path, entry_point: str, config: str) -> dict:
    tag = "registry.example/mnist-docker:abc1234"
    params = {"nnodes": 2, "nproc_per_node": 1} if entry_point == "distributed" else {}
    return render(
        MNIST_DOCKER, params, tag, FAKE_DIGEST, "r" * 32, "7", storage, entry_point, config
    )


def secret_refs(container: dict) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}


def test_rendered_indexed_job_and_service(tmp_path: Path) -> None:
    """MLflow renders the distributed entry point as an Indexed Job of JOB_COMPLETIONS pods
    under the headless Service; both validate; the Secrets, resources and securityContext are
    those of the single Job."""
    job = rendered_job(tmp_path, "distributed", "kubernetes_distributed_config.json")
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    service_file = MNIST_DOCKER / "kubernetes_distributed_service.yaml"
    (service,) = yaml.safe_load_all(service_file.read_text())
    kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = container_of(job)
    assert spec["completionMode"] == "Indexed"
    pods = int(env_value(container, "JOB_COMPLETIONS"))
    assert spec["completions"] == spec["parallelism"] == pods == 2
    assert spec["backoffLimit"] == 0
    assert container["command"][:5] == [
        "python",
        "-m",
        "mnist.distributed.launch",
        "--nproc-per-node=1",
        "--nnodes=2",
    ]
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert pod["subdomain"] == service["metadata"]["name"] == env_value(container, "DDP_SERVICE")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 29500
    single = rendered_job(tmp_path, "main", "kubernetes_config.json")
    assert secret_refs(container) == secret_refs(container_of(single))
    single_pod = single["spec"]["template"]["spec"]
    assert pod.get("securityContext") == single_pod.get("securityContext")
    assert container.get("securityContext") == container_of(single).get("securityContext")
    assert container["resources"] == container_of(single)["resources"]


def test_only_the_training_pods_reach_each_other(tmp_path: Path) -> None:
    """kubernetes_distributed_network_policy.yaml, with the tracking server's policy, on the
    pods of the rendered Indexed Job: they reach each other on the rendezvous port and on the
    ports gloo picks, DNS, and the tracking server's pods; no other pod reaches their ports,
    and they reach nothing else (S3 or any address outside)."""
    job = rendered_job(tmp_path, "distributed", "kubernetes_distributed_config.json")
    (policy,) = yaml.safe_load_all(
        (MNIST_DOCKER / "kubernetes_distributed_network_policy.yaml").read_text()
    )
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    namespace = job["metadata"]["namespace"]
    labels = {"kubernetes.io/metadata.name": namespace, TRAINING_LABEL: "true"}
    pods = job["spec"]["template"]["metadata"]["labels"]
    port = container_of(job)["ports"][0]["containerPort"]
    rank0, rank1 = (Peer(namespace, labels, pods | {"index": str(i)}) for i in range(2))
    deploy = {
        d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "tracking-server.yaml").read_text())
    }
    server_policy, server_pod = deploy["NetworkPolicy"], deploy["Deployment"]["spec"]["template"]
    server_policy["metadata"]["namespace"] = "mlflow"
    (server_container,) = server_pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in server_container["ports"]}
    server = Peer("mlflow", labels, server_pod["metadata"]["labels"], ports)
    dns = Peer("kube-system", {"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "dns"})
    neighbour = Peer(namespace, labels, {"app": "notebook"})
    elsewhere = Peer("team-b", {"kubernetes.io/metadata.name": "team-b"}, pods)
    policies = [policy, server_policy]
    assert allowed(policies, rank1, rank0, port)
    assert allowed(policies, rank0, rank1, 41234)  # a port gloo opens
    assert allowed(policies, rank0, server, ports["http"])
    assert allowed(policies, rank0, dns, 53, "UDP")
    assert not allowed(policies, neighbour, rank0, port)
    assert not allowed(policies, elsewhere, rank0, port)
    assert not allowed(policies, rank0, Peer(ip="52.216.8.0"), 443)  # S3, or anything outside
    assert not allowed(policies, rank0, neighbour, 8080)
    assert allowed([], neighbour, rank0, port), "without the policy, every pod gets in"


@pytest.mark.docker
@pytest.mark.slow
def test_make_run_k8s_distributed_pods_train_as_one_run(
    registry: str, tracking_server: TrackingServer, s3: S3, tmp_path: Path
) -> None:
    """`make run-k8s ENTRY_POINT=distributed` on the stand-in cluster: the Job's 2 pods run the
    pushed image by digest (JOB_COMPLETION_INDEX 0 and 1), pod 1 finds rank 0 by name, and one
    run of world size 2 FINISHES: the run MLflow created for the Job, and no other."""
    require_docker_image(MNIST_DOCKER)
    started_ms = int(time.time() * 1000)
    params = {"nnodes": 2, "nproc_per_node": 1, **SHORT}
    with job_cluster(tmp_path) as (cluster, kubeconfig):
        result = make(
            "run-k8s",
            "ENTRY_POINT=distributed",
            f"TRACKING_URI={tracking_server.url}",
            "RUN_ARGS=" + " ".join(f"-P {k}={v}" for k, v in params.items()),
            timeout=1200,
            KUBECONFIG=str(kubeconfig),
            REGISTRY=registry,
        )
        (job,) = cluster.jobs.values()
        logs = cluster.pod_logs(job)
    assert result.returncode == 0, result.stderr[-3000:] + "".join(logs)[-3000:]
    assert result.stdout.startswith("Kubernetes: context lab, namespace mlflow,"), result.stdout
    name = job.manifest["metadata"]["name"]
    assert f"--node-rank=1 --master-addr={name}-0.mnist-ddp" in logs[1]
    assert "epoch 1:" in logs[0] and "epoch 1:" not in logs[1]
    run_id = env_value(container_of(job.manifest), "MLFLOW_RUN_ID")
    client = MlflowClient(tracking_server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    since = f"attributes.start_time >= {started_ms}"
    new_runs = client.search_runs([run.info.experiment_id], since, ViewType.ALL)
    assert [r.info.run_id for r in new_runs] == [run_id]
    assert run.data.params["world_size"] == "2"
    assert run.data.params["nnodes"] == "2"
    assert run.data.params["nproc_per_node"] == "1"
    assert {"val_accuracy", "test_accuracy"} <= set(run.data.metrics)
    assert any(key.endswith("MLmodel") for key in s3.object_keys()), "no model in S3"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
        assert mnist_accuracy(mlflow.pyfunc.load_model(f"runs:/{run_id}/model")) >= 0.8
