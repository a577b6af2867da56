"""A project's Kubernetes Job without a cluster: rendered by MLflow, validated, run in Docker.

No Kubernetes cluster can run here, so the cluster is the one thing done without. What is
real: the Job rendered by MLflow's own code (``mlflow.projects.kubernetes``) from the
project's template and config, its validation against the Kubernetes API schema, the image
built and pushed to a real registry through MLflow's push code, and the pod's work done the
pod's way: the pushed image, pulled by digest, runs the rendered container command with the
rendered env in Docker against a real tracking server.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from unittest import mock

import kubernetes_validate
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects import kubernetes as kb
from mlflow.projects._project_spec import load_project
from mlflow.projects.docker import build_docker_image
from mlflow.projects.utils import get_entry_point_command, get_run_env_vars
from mlflow.tracking import MlflowClient

from scaffold.layout import KUBERNETES_VERSION
from tests.helpers.components import require_docker_image


def kube_config(project: Path) -> dict:
    """The project's kubernetes_config.json, read by MLflow's own parser from the root of the
    project's repository (the template path in it is relative to that root)."""
    config = json.loads((project / "kubernetes_config.json").read_text())
    cwd = Path.cwd()
    os.chdir(project.resolve().parents[1])
    try:
        return _parse_kubernetes_config(config)
    finally:
        os.chdir(cwd)


def render(
    project: Path,
    params: dict[str, object],
    image_tag: str,
    digest: str,
    run_id: str,
    experiment_id: str,
    storage: Path,
) -> dict:
    """The Job exactly as `mlflow run --backend kubernetes` submits it."""
    spec = load_project(str(project))
    command = get_entry_point_command(spec, "main", params, str(storage))
    return kb._get_kubernetes_job_definition(
        spec.name,
        image_tag,
        digest,
        kb._get_run_command(command),
        get_run_env_vars(run_id, experiment_id),
        copy.deepcopy(kube_config(project)["kube-job-template"]),
    )


def container_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


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


def run_job_in_docker(
    project: Path, params: dict[str, object], registry: str, tracking_uri: str, workdir: Path
) -> str:
    """Build and push the project's image, render and validate its Job, and run the pod's
    container from the pushed image by digest; return the MLflow run id."""
    base_image = require_docker_image(project)
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": tracking_uri}):
        return _run_job_in_docker(project, params, registry, tracking_uri, workdir, base_image)


def _run_job_in_docker(
    project: Path,
    params: dict[str, object],
    registry: str,
    tracking_uri: str,
    workdir: Path,
    base_image: str,
) -> str:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("kubernetes")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("kubernetes")
    )
    run_id = client.create_run(experiment_id).info.run_id
    name = load_project(str(project)).name
    image = build_docker_image(
        str(project), f"{registry}/{name}", base_image, run_id, build_image=True, docker_auth=None
    )
    tag = image.tags[0]
    digest = kb.push_image_to_registry(tag)
    job = render(project, params, tag, digest, run_id, experiment_id, workdir)
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
    subprocess.run(["docker", "rmi", container["image"]], capture_output=True, check=False)
    assert pod.returncode == 0, pod.stderr[-3000:]
    return run_id


def least_privilege_problems(pod: dict) -> list[str]:
    """What a pod spec lacks of the hardening every manifest here sets: a non-root user, the
    runtime's seccomp profile, no service-account token; per container no privilege
    escalation and no capability."""
    problems = []
    context = pod.get("securityContext", {})
    if context.get("runAsNonRoot") is not True:
        problems.append("pod: runAsNonRoot is not true")
    if context.get("runAsUser") == 0:
        problems.append("pod: runAsUser is 0")
    if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod: seccompProfile is not RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("pod: automountServiceAccountToken is not false")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        security = container.get("securityContext", {})
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{container['name']}: allowPrivilegeEscalation is not false")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{container['name']}: capabilities are not dropped (drop: [ALL])")
        if security.get("privileged"):
            problems.append(f"{container['name']}: privileged")
    return problems
