"""projects/mnist-k8s as a Kubernetes Job, without a cluster.

No Kubernetes cluster can run here (no kind or k3s images or binaries can be fetched), so
the cluster is the one thing these tests do without. What is real: the Job rendered by
MLflow's own code (mlflow.projects.kubernetes) from the committed template and config, its
validation against the Kubernetes API schema, the image built and pushed to a real registry
(Debian's docker-registry) through MLflow's push code, and the pod's work done the pod's way:
the pushed image, pulled by digest, runs the rendered container command with the rendered
env in Docker against a real tracking server. `make run-k8s` itself runs in the test marked
`k8s`, where a kube context exists.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import mlflow.pyfunc
import pytest
import yaml
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects import kubernetes as kb
from mlflow.projects._project_spec import load_project
from mlflow.projects.docker import build_docker_image
from mlflow.projects.utils import get_entry_point_command, get_run_env_vars
from mlflow.tracking import MlflowClient

from conftest import PROJECTS_DIR, ROOT, require, require_docker, require_docker_image
from heldout import mnist_accuracy
from servers import HOST, free_port, mlflow_server, moto_s3, start, stop, wait_http

K8S = PROJECTS_DIR / "mnist-k8s"
SMOKE = yaml.safe_load((K8S / "smoke.yaml").read_text())["parameters"]
KUBERNETES_VERSION = "1.33"
FAKE_DIGEST = "sha256:" + "ab" * 32
SECRET_REFS = {
    "AWS_ACCESS_KEY_ID": "mlflow-s3-credentials",
    "AWS_SECRET_ACCESS_KEY": "mlflow-s3-credentials",
    "MLFLOW_TRACKING_USERNAME": "mlflow-tracking-credentials",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-tracking-credentials",
}


def kube_config() -> dict:
    """The committed config, read by MLflow's own parser from the repository root."""
    config = json.loads((K8S / "kubernetes_config.json").read_text())
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        return _parse_kubernetes_config(config)
    finally:
        os.chdir(cwd)


def render(image_tag: str, digest: str, run_id: str, experiment_id: str, storage: Path) -> dict:
    """The Job exactly as `mlflow run --backend kubernetes` submits it."""
    project = load_project(str(K8S))
    command = get_entry_point_command(project, "main", SMOKE, str(storage))
    return kb._get_kubernetes_job_definition(
        project.name,
        image_tag,
        digest,
        kb._get_run_command(command),
        get_run_env_vars(run_id, experiment_id),
        copy.deepcopy(kube_config()["kube-job-template"]),
    )


def container_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_config_names_context_registry_and_template() -> None:
    config = kube_config()
    assert config["kube-context"] and config["repository-uri"].endswith("/mnist-k8s")
    assert config["kube-job-template"]["kind"] == "Job"


def test_job_rendered_by_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow.mlflow.svc:5000")
    job = render("registry.example/mnist-k8s:abc1234", FAKE_DIGEST, "r" * 32, "7", tmp_path)
    container = container_of(job)
    assert job["metadata"]["name"].startswith("mnist-k8s-")
    assert job["metadata"]["namespace"] == "mlflow"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert container["name"] == "mnist-k8s"
    assert container["image"] == f"registry.example/mnist-k8s:abc1234@{FAKE_DIGEST}"
    assert container["command"][:4] == ["python", "train.py", "--epochs", "1"]
    assert "{replaced" not in json.dumps(job)
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_RUN_ID"]["value"] == "r" * 32
    assert env["MLFLOW_EXPERIMENT_ID"]["value"] == "7"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow.svc:5000"
    for name, secret in SECRET_REFS.items():
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
        assert "value" not in env[name]
    assert container["resources"]["limits"]["memory"]


def test_rendered_job_matches_kubernetes_schema(tmp_path: Path) -> None:
    job = render("registry.example/mnist-k8s:abc1234", FAKE_DIGEST, "r" * 32, "0", tmp_path)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["backoffLimit"] = "none"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


REGISTRY_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlflow-project-store"
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port (Docker trusts 127.0.0.0/8 over HTTP).

    Its storage is kept in a cache folder, as a team registry keeps its layers: the first push
    uploads the ~7 GB dependency layers (minutes), later pushes only the project's code layer.
    """
    require(
        "docker-registry",
        shutil.which("docker-registry") is not None,
        "apt-get install docker-registry",
    )
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {REGISTRY_CACHE / 'registry'}\n"
        f"http:\n  addr: {HOST}:{port}\n"
    )
    log = tmp_path / "registry.log"
    process = start(["docker-registry", "serve", str(config)], log)
    try:
        wait_http(f"http://{HOST}:{port}/v2/", process, log, timeout=30)
        yield f"{HOST}:{port}"
    finally:
        stop(process)


def pod_environment(container: dict) -> list[str]:
    """`docker run -e` flags for the container's env, resolved as the kubelet would: literal
    values as they are; optional Secret refs left out, since no Secret exists here (with the
    proxied tracking server the pod needs no S3 credential)."""
    flags = []
    for item in container["env"]:
        if "value" in item:
            flags += ["-e", f"{item['name']}={item['value']}"]
        else:
            assert item["valueFrom"]["secretKeyRef"]["optional"] is True, item["name"]
    return flags


@pytest.mark.docker
@pytest.mark.slow
def test_pushed_image_does_the_pods_work(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_image = require_docker_image(K8S)
    with (
        moto_s3(tmp_path) as s3,
        mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", s3) as server,
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("kubernetes"))
        run_id = run.info.run_id
        image = build_docker_image(
            str(K8S),
            f"{registry}/mnist-k8s",
            base_image,
            run_id,
            build_image=True,
            docker_auth=None,
        )
        tag = image.tags[0]
        digest = kb.push_image_to_registry(tag)
        job = render(tag, digest, run_id, run.info.experiment_id, tmp_path)
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
        container = container_of(job)
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=True)  # pull it back

        pod = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "host",
                *pod_environment(container),
                "--entrypoint",
                container["command"][0],
                container["image"],
                *container["command"][1:],
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert pod.returncode == 0, pod.stderr[-3000:]
        finished = client.get_run(run_id)
        assert finished.info.status == "FINISHED"
        assert finished.data.params["epochs"] == str(SMOKE["epochs"])
        assert {"val_accuracy", "test_accuracy"} <= set(finished.data.metrics)
        assert any(key.endswith("MLmodel") for key in s3.object_keys()), "no model in S3"
        assert mnist_accuracy(mlflow.pyfunc.load_model(f"runs:/{run_id}/model")) >= 0.8


def make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_line_reason(result: subprocess.CompletedProcess[str], target: str) -> str:
    assert result.returncode != 0
    reasons = [line for line in result.stderr.splitlines() if line.startswith(f"make {target}:")]
    assert len(reasons) == 1, result.stderr
    return reasons[0]


def test_run_k8s_without_kube_context_fails_fast(tmp_path: Path) -> None:
    require_docker()
    result = make("run-k8s", KUBECONFIG=str(tmp_path / "none"), KUBE_CONTEXT="")
    assert "no kube context" in one_line_reason(result, "run-k8s")


def test_run_k8s_without_registry_fails_fast(tmp_path: Path) -> None:
    require_docker()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "lab", "user": {}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
            }
        )
    )
    port = free_port()
    result = make(
        "run-k8s",
        KUBECONFIG=str(kubeconfig),
        KUBE_CONTEXT="lab",
        TRACKING_URI="http://127.0.0.1:5000",
        REGISTRY=f"127.0.0.1:{port}",
    )
    assert f"registry 127.0.0.1:{port} does not answer" in one_line_reason(result, "run-k8s")


def test_run_docker_without_daemon_fails_fast(tmp_path: Path) -> None:
    result = make("run-docker", DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert "no Docker daemon answers" in one_line_reason(result, "run-docker")


@pytest.mark.k8s
def test_make_run_k8s_on_a_cluster() -> None:
    """Where a kube context exists (never in CI: no cluster can run there), `make run-k8s`
    with the REGISTRY and TRACKING_URI of the environment runs the Job to completion."""
    context = subprocess.run(
        ["kubectl", "config", "current-context"], capture_output=True, text=True, check=False
    )
    if context.returncode != 0 or not os.environ.get("TRACKING_URI"):
        pytest.skip("no kube context, or TRACKING_URI (the cluster's tracking server) unset")
    result = make("run-k8s", RUN_ARGS="-P epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
