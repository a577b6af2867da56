"""Kubernetes: `make run-k8s` of projects/mnist-docker as a Job, and the tracking server's
deploy manifests.

No Kubernetes cluster can run here (no kind or k3s images or binaries can be fetched), so the
cluster is the one thing these tests do without: `make run-k8s` talks to the stand-in of
tests/helpers/cluster.py (its Job API, and a kubelet that runs the pods in Docker). Everything
else is real: the store-kubernetes backend, the image built with .dockerignore honoured and
pushed to a real registry, the Job rendered from the template and checked against the
Kubernetes schema, the pod pulling the image by digest and recording into a real tracking
server. `make run-k8s` against a real cluster runs in the test marked `k8s`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import KUBERNETES_VERSION, PROJECTS, ROOT
from mlflow_project_store.ready_for_mlflow.servers import HOST, S3, TrackingServer, free_port
from tests.helpers.cluster import container_of, env_value, job_cluster
from tests.helpers.commands import make, one_line_reason
from tests.helpers.components import require_docker, require_docker_image
from tests.helpers.credentials import fake_credentials, leaked, with_password
from tests.helpers.heldout import load_model, mnist_accuracy
from tests.helpers.kubernetes import kube_config, least_privilege_problems, render

MNIST_DOCKER = PROJECTS / "mnist-docker"
SMOKE = yaml.safe_load((MNIST_DOCKER / "smoke.yaml").read_text())["parameters"]
FAKE_DIGEST = "sha256:" + "ab" * 32
SECRET_REFS = {
    "AWS_ACCESS_KEY_ID": "mlflow-s3-credentials",
    "AWS_SECRET_ACCESS_KEY": "mlflow-s3-credentials",
    "MLFLOW_TRACKING_USERNAME": "mlflow-tracking-credentials",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-tracking-credentials",
}
DEPLOY = ROOT / "ready_for_mlflow" / "deploy"
JOB_TEMPLATES = [
    *sorted(PROJECTS.glob("*/kubernetes*_job_template.yaml")),
    ROOT / "example" / "project" / "k8s" / "kubernetes_job_template.yaml",
]


def render_smoke_job(storage: Path, experiment_id: str = "7") -> dict:
    tag = "registry.example/mnist-docker:abc1234"
    return render(MNIST_DOCKER, SMOKE, tag, FAKE_DIGEST, "r" * 32, experiment_id, storage)


def test_config_names_context_registry_and_a_template_beside_it() -> None:
    config = kube_config(MNIST_DOCKER)
    assert config["kube-context"] and config["repository-uri"].endswith("/mnist-docker")
    assert config["kube-job-template-path"] == "kubernetes_job_template.yaml"
    assert config["kube-job-template"]["kind"] == "Job"


def test_job_rendered_by_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow-tracking.mlflow.svc")
    job = render_smoke_job(tmp_path)
    container = container_of(job)
    assert job["metadata"]["name"].startswith("mnist-docker-")
    assert job["metadata"]["namespace"] == "mlflow"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert container["name"] == "mnist-docker"
    assert container["image"] == f"registry.example/mnist-docker:abc1234@{FAKE_DIGEST}"
    assert container["command"][:4] == ["python", "-m", "mnist.train", "--epochs=1"]
    assert "{replaced" not in json.dumps(job)
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_RUN_ID"]["value"] == "r" * 32
    assert env["MLFLOW_EXPERIMENT_ID"]["value"] == "7"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow-tracking.mlflow.svc"
    for name, secret in SECRET_REFS.items():
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
        assert "value" not in env[name]
    assert container["resources"]["limits"]["memory"]


def test_rendered_job_matches_kubernetes_schema(tmp_path: Path) -> None:
    job = render_smoke_job(tmp_path, "0")
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    job["spec"]["backoffLimit"] = "none"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


@pytest.mark.docker
@pytest.mark.slow
def test_make_run_k8s_runs_the_job(
    registry: str, tracking_server: TrackingServer, s3: S3, tmp_path: Path
) -> None:
    """`make run-k8s` end to end on the stand-in cluster, with fake keys in the environment and
    a password in the tracking URI: it names the context and namespace first, the Job it
    submits validates and pulls the pushed image by digest, the pod's run FINISHED with its
    params and metrics and a model in S3 that predicts; no key value and no password is in
    what it printed nor in the Job (the pod's URI lost its password: the test server needs
    none, a real one takes it from the Secret the template names)."""
    require_docker_image(MNIST_DOCKER)
    keys = fake_credentials() | {"uri password": f"fake-uri-password-{secrets.token_hex(8)}"}
    env = {k: v for k, v in keys.items() if k != "uri password"}
    tracking = with_password(tracking_server.url, keys["uri password"])
    with job_cluster(tmp_path) as (cluster, kubeconfig):
        result = make(
            "run-k8s",
            f"TRACKING_URI={tracking}",
            "RUN_ARGS=" + " ".join(f"-P {k}={v}" for k, v in SMOKE.items()),
            timeout=1200,
            KUBECONFIG=str(kubeconfig),
            KUBE_CONTEXT="",  # the kubeconfig's current context
            REGISTRY=registry,
            **env,
        )
        (job,) = cluster.jobs.values()
        logs = cluster.pod_logs(job)
    assert result.returncode == 0, result.stderr[-3000:] + "".join(logs)[-2000:]
    assert "Kubernetes: context lab, namespace mlflow" in result.stdout
    assert leaked(keys, result.stdout, result.stderr, json.dumps(job.manifest)) == []
    assert env_value(container_of(job.manifest), "MLFLOW_TRACKING_URI") == tracking_server.url
    kubernetes_validate.validate(job.manifest, KUBERNETES_VERSION, strict=True)
    image = container_of(job.manifest)["image"]
    assert image.startswith(f"{registry}/mnist-docker") and "@sha256:" in image
    run_id = env_value(container_of(job.manifest), "MLFLOW_RUN_ID")
    client = MlflowClient(tracking_server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.backend"] == "store-kubernetes"
    assert run.data.params["epochs"] == str(SMOKE["epochs"])
    assert {"val_accuracy", "test_accuracy"} <= set(run.data.metrics)
    assert any(key.endswith("MLmodel") for key in s3.object_keys()), "no model in S3"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
        assert mnist_accuracy(load_model(f"runs:/{run_id}/model")) >= 0.8


@pytest.mark.docker
def test_run_k8s_without_kube_context_fails_fast(tmp_path: Path) -> None:
    require_docker()
    result = make(
        "run-k8s", "TRACKING_URI=http://127.0.0.1:5000", KUBECONFIG=str(tmp_path / "none")
    )
    assert "no kube context ''" in one_line_reason(result, "make run-k8s: error:")


@pytest.mark.docker
def test_run_k8s_without_registry_fails_fast(tmp_path: Path) -> None:
    require_docker()
    with job_cluster(tmp_path) as (_, kubeconfig):
        port = free_port()
        result = make(
            "run-k8s",
            "TRACKING_URI=http://127.0.0.1:5000",
            KUBECONFIG=str(kubeconfig),
            REGISTRY=f"127.0.0.1:{port}",
        )
    reason = one_line_reason(result, "make run-k8s: error:")
    assert f"registry 127.0.0.1:{port} does not answer" in reason


@pytest.mark.docker
def test_make_run_k8s_masks_the_password_of_a_database_store(tmp_path: Path) -> None:
    """A PostgreSQL store is refused (the pod needs a server) in one line naming it, with its
    password masked."""
    require_docker()
    password = f"fake-db-password-{secrets.token_hex(8)}"
    database = f"postgresql://mlflow:{password}@{HOST}:5432/mlflow"
    with job_cluster(tmp_path) as (_, kubeconfig):
        result = make("run-k8s", f"TRACKING_URI={database}", KUBECONFIG=str(kubeconfig))
    reason = one_line_reason(result, "make run-k8s: error:")
    assert f"not postgresql://mlflow:***@{HOST}:5432/mlflow" in reason, reason
    assert leaked({"database password": password}, result.stdout, result.stderr) == []


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


def deploy_documents() -> list[dict]:
    return [
        doc
        for path in sorted(DEPLOY.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def test_deploy_manifests_are_valid_kubernetes() -> None:
    documents = deploy_documents()
    kinds = {doc["kind"] for doc in documents}
    assert {"Deployment", "Service", "Secret"} <= kinds, kinds
    for doc in documents:
        for version in ("1.30", "1.37"):
            kubernetes_validate.validate(doc, version, strict=True)


def test_deploy_runs_postgresql_s3_basic_auth_with_secrets() -> None:
    (deployment,) = [d for d in deploy_documents() if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "--app-name basic-auth" in command
    assert re.search(r"--artifacts-destination s3://", command)
    assert "--allowed-hosts" in command
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in container["env"]}
    for name in (
        "MLFLOW_BACKEND_STORE_URI",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    secrets = [d for d in deploy_documents() if d["kind"] == "Secret"]
    uris = [s.get("stringData", {}).get("backend-store-uri", "") for s in secrets]
    assert any(uri.startswith("postgresql+psycopg2://") for uri in uris), uris


@pytest.mark.parametrize("template", JOB_TEMPLATES, ids=lambda p: p.parent.name)
def test_job_templates_run_with_least_privilege(template: Path) -> None:
    job = yaml.safe_load(template.read_text())
    assert least_privilege_problems(job["spec"]["template"]["spec"]) == []


def test_rendered_job_keeps_least_privilege_and_validates(tmp_path: Path) -> None:
    """MLflow's rendering keeps the securityContext, and the schema accepts it; a root user
    or an escalation is caught."""
    job = render_smoke_job(tmp_path)
    pod = job["spec"]["template"]["spec"]
    assert least_privilege_problems(pod) == []
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod["securityContext"]["runAsNonRoot"] = False
    container_of(job)["securityContext"]["allowPrivilegeEscalation"] = True
    assert len(least_privilege_problems(pod)) == 2


def test_deploy_pods_run_with_least_privilege() -> None:
    pods = [d["spec"]["template"]["spec"] for d in deploy_documents() if d["kind"] == "Deployment"]
    assert pods
    for pod in pods:
        assert least_privilege_problems(pod) == []
