"""Kubernetes: `make run-k8s` of projects/mnist-docker as a Job, and the tracking server's
deploy manifests and `make deploy-server`.

No Kubernetes cluster can run here (no kind or k3s images or binaries can be fetched), so the
cluster is the one thing these tests do without: `make run-k8s` talks to the stand-in of
tests/helpers/cluster.py (its Job API, and a kubelet that runs the pods in Docker). Everything
else is real: the store-kubernetes backend, the image built with .dockerignore honoured and
pushed to a real registry, the Job rendered from the template and checked against the
Kubernetes schema, the pod pulling the image by digest and recording into a real tracking
server. `make run-k8s` against a real cluster runs in the test marked `k8s`. The stand-in
enforces no NetworkPolicy: which pod may reach which is evaluated from the policies as the
Kubernetes API defines them (tests/helpers/kubernetes.py's ``allowed``). `make deploy-server`
applies to the stand-in's API server, which records what it received.
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

from mlflow_project_store.deploy import TRAINING_LABEL
from mlflow_project_store.layout import KUBERNETES_VERSION, PROJECTS, ROOT
from mlflow_project_store.manifests import pod_problems
from mlflow_project_store.ready_for_mlflow.servers import HOST, S3, TrackingServer, free_port
from mlflow_project_store.validate_containers import job_problems
from tests.helpers.cluster import container_of, env_value, job_cluster, pod_commands
from tests.helpers.commands import make, one_line_reason
from tests.helpers.components import require_docker, require_docker_image
from tests.helpers.credentials import fake_credentials, leaked, with_password
from tests.helpers.heldout import load_model, mnist_accuracy
from tests.helpers.kubernetes import Peer, allowed, filled_secrets, kube_config, render

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
    ROOT / "tests" / "projects" / "stand-in-trial-docker" / "kubernetes_job_template.yaml",
]
# What a pod can write, who it runs as, and what it may do, as the pod sees it. /mlflow/tmp is
# a folder of the dependency images that any user may write to: only a read-only root stops it.
WRITE_PROBE = """
import json, os, pathlib
def writable(folder):
    try:
        pathlib.Path(folder, "probe").write_text("x")
        return True
    except OSError:
        return False
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status") if ":\\t" in line)
print(json.dumps({
    "tmp": writable("/tmp"), "home": writable(os.environ["HOME"]),
    "image folder": writable("/mlflow/tmp"), "uid": os.getuid(),
    "capabilities": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
}))
"""


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
    # Said first, before the image is built and the Job submitted.
    assert result.stdout.startswith("Kubernetes: context lab, namespace mlflow,"), result.stdout
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
    """The objects of the tracking server's deploy: its manifests and its example Secret."""
    return [
        doc
        for name in ("tracking-server.yaml", "secrets.example.yaml")
        for doc in yaml.safe_load_all((DEPLOY / name).read_text())
        if doc
    ]


def test_deploy_manifests_are_valid_kubernetes() -> None:
    documents = deploy_documents()
    kinds = {doc["kind"] for doc in documents}
    assert {"Deployment", "Service", "Secret", "NetworkPolicy"} <= kinds, kinds
    for doc in documents:
        for version in ("1.30", "1.37"):
            kubernetes_validate.validate(doc, version, strict=True)


def test_deploy_manifest_takes_every_credential_from_a_secret() -> None:
    """What the server manifest says (no cluster runs its pods here; the stand-in API server
    takes it in test_make_deploy_server_applies_to_the_cluster): basic auth, S3 artifacts, a
    PostgreSQL store, and each credential from a Secret, never a plain value in its env."""
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
def test_job_templates_pass_the_hardening_checks(template: Path) -> None:
    """make validate's checks (a deadline, the retries, least privilege, a read-only root with
    an emptyDir at /tmp) on every Job template, those outside projects/ too."""
    assert job_problems(yaml.safe_load(template.read_text())) == []


def test_rendered_job_keeps_its_hardening_and_validates(tmp_path: Path) -> None:
    """MLflow's rendering keeps the deadline, the securityContext and the volumes, and the
    schema accepts them; a root user, an escalation, a writable root or no deadline is caught."""
    job = render_smoke_job(tmp_path)
    assert job_problems(job) == []
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    container_of(job)["securityContext"]["allowPrivilegeEscalation"] = True
    container_of(job)["securityContext"]["readOnlyRootFilesystem"] = False
    del job["spec"]["activeDeadlineSeconds"]
    assert len(job_problems(job)) == 4, job_problems(job)


@pytest.mark.docker
def test_the_job_pod_writes_only_to_its_empty_dirs(tmp_path: Path) -> None:
    """The pod of the rendered Job, run by the stand-in kubelet (the template's securityContext
    and emptyDir volumes) on the project's dependency image: /tmp and HOME are writable, a
    folder of the image that any user may write to is not; it runs as uid 1000 with no
    capability and no new privileges."""
    require_docker_image(MNIST_DOCKER)
    job = render_smoke_job(tmp_path)
    container = container_of(job)
    container["image"] = yaml.safe_load((MNIST_DOCKER / "MLproject").read_text())["docker_env"][
        "image"
    ]
    container["command"] = ["python", "-c", WRITE_PROBE]
    container["env"] = []
    ((name, command),) = pod_commands(job, {})
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    seen = json.loads(ran.stdout.splitlines()[-1])
    assert seen == {
        "tmp": True,
        "home": True,
        "image folder": False,
        "uid": 1000,
        "capabilities": "0000000000000000",
        "no_new_privs": "1",
    }, name


def test_deploy_pods_are_hardened_like_the_jobs() -> None:
    """The tracking server's pod has the hardening of every Job's (its root read-only too)."""
    pods = [d["spec"]["template"]["spec"] for d in deploy_documents() if d["kind"] == "Deployment"]
    assert pods
    for pod in pods:
        assert pod_problems(pod) == []


def deploy_policies(namespace: str = "mlflow") -> list[dict]:
    """The NetworkPolicies of tracking-server.yaml, in the namespace they are deployed to."""
    policies = [d for d in deploy_documents() if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        policy["metadata"]["namespace"] = namespace
    return policies


def namespace(name: str, training: bool) -> dict[str, str]:
    """The labels of namespace ``name`` (Kubernetes sets kubernetes.io/metadata.name)."""
    return {"kubernetes.io/metadata.name": name} | ({TRAINING_LABEL: "true"} if training else {})


def test_tracking_server_is_reached_from_training_namespaces_only() -> None:
    """The server's NetworkPolicy: its port is open to the pods of the namespaces labelled as
    make deploy-server says, and to the Ingress controller; to no other pod, and no other port
    is open to them."""
    (deployment,) = [d for d in deploy_documents() if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    server = Peer("mlflow", namespace("mlflow", False), template["metadata"]["labels"], ports)
    job = Peer("team-a", namespace("team-a", True), {"job-name": "mnist-docker-1"})
    same_namespace_job = Peer("mlflow", namespace("mlflow", True), {"job-name": "mnist-2"})
    ingress = Peer("ingress-nginx", namespace("ingress-nginx", False), {"app": "controller"})
    other = Peer("web", namespace("web", False), {"app": "shop"})
    policies = deploy_policies()
    assert allowed(policies, job, server, ports["http"])
    assert allowed(policies, ingress, server, ports["http"])
    assert not allowed(policies, Peer("mlflow", namespace("mlflow", False)), server, 5000)
    assert allowed(policies, same_namespace_job, server, ports["http"])
    assert not allowed(policies, other, server, ports["http"])
    assert not allowed(policies, job, server, 8080)
    assert allowed([], other, server, ports["http"]), "without the policy, every pod gets in"


def test_deploy_refuses_a_change_me_naming_the_key(tmp_path: Path) -> None:
    """A secrets file with one value left as in the example is refused in one line that names
    that key and no value; nothing is validated or applied."""
    secrets_file = tmp_path / "secrets.yaml"
    written = filled_secrets(secrets_file, keep=("admin-password",))
    result = make("deploy-server", SECRETS=str(secrets_file), DRY_RUN="1")
    reason = one_line_reason(result, "make deploy-server: error:")
    assert reason.endswith(
        "Secret mlflow-tracking: key admin-password still holds CHANGE-ME: expected the real value"
    ), reason
    assert result.stdout == ""
    assert leaked(written, result.stdout, result.stderr) == []


def test_deploy_refuses_a_secrets_file_tracked_by_git(tmp_path: Path) -> None:
    """A filled secrets file that git tracks is refused in one line, filled or not."""
    repository = tmp_path / "team-config"
    secrets_file = repository / "secrets.yaml"
    repository.mkdir()
    filled_secrets(secrets_file)
    git = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "secrets.yaml"], check=True)
    result = make("deploy-server", SECRETS=str(secrets_file), DRY_RUN="1")
    reason = one_line_reason(result, "make deploy-server: error:")
    assert f"SECRETS={secrets_file} is tracked by git" in reason, reason


def test_deploy_dry_run_accepts_a_filled_secrets_file(tmp_path: Path) -> None:
    """DRY_RUN=1 with a filled file and no cluster: it says where it would deploy first, then
    each object, which all pass the Kubernetes schema; no value is printed."""
    secrets_file = tmp_path / "secrets.yaml"
    written = filled_secrets(secrets_file)
    result = make(
        "deploy-server", SECRETS=str(secrets_file), DRY_RUN="1", KUBECONFIG=str(tmp_path / "no")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Deploy: context none, namespace mlflow, {secrets_file}")
    assert lines[1:] == [
        "would apply Secret mlflow-tracking",
        "would apply Deployment mlflow-tracking",
        "would apply Service mlflow-tracking",
        "would apply Ingress mlflow-tracking",
        "would apply NetworkPolicy mlflow-tracking",
        f"Dry run: 5 objects valid for Kubernetes {KUBERNETES_VERSION}; nothing applied",
    ]
    assert leaked(written, result.stdout, result.stderr) == []


def test_make_deploy_server_applies_to_the_cluster(tmp_path: Path) -> None:
    """On the stand-in API server: the context and namespace said first, then one server-side
    apply per object, the Secret first, in the namespace, with the filled values; none is
    printed."""
    secrets_file = tmp_path / "secrets.yaml"
    written = filled_secrets(secrets_file)
    with job_cluster(tmp_path) as (cluster, kubeconfig):
        result = make(
            "deploy-server", SECRETS=str(secrets_file), KUBECONFIG=str(kubeconfig), KUBE_CONTEXT=""
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Deploy: context lab, namespace mlflow,"), result.stdout
    assert [applied.path for applied in cluster.applied] == [
        "/api/v1/namespaces/mlflow/secrets/mlflow-tracking",
        "/apis/apps/v1/namespaces/mlflow/deployments/mlflow-tracking",
        "/api/v1/namespaces/mlflow/services/mlflow-tracking",
        "/apis/networking.k8s.io/v1/namespaces/mlflow/ingresses/mlflow-tracking",
        "/apis/networking.k8s.io/v1/namespaces/mlflow/networkpolicies/mlflow-tracking",
    ]
    for applied in cluster.applied:
        assert applied.content_type == "application/apply-patch+yaml"
        assert applied.query["fieldManager"] == ["mlflow-project-store"]
        assert applied.body["metadata"]["namespace"] == "mlflow"
        kubernetes_validate.validate(applied.body, KUBERNETES_VERSION, strict=True)
    secret = cluster.applied[0].body["stringData"]
    assert secret["admin-password"] == written["admin-password"]
    assert written["backend-store-uri"] in secret["backend-store-uri"]
    assert leaked(written, result.stdout, result.stderr) == []
