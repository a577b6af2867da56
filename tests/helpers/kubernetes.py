"""A project's Kubernetes Job as MLflow renders it, and the hardening every pod spec carries.

`make run-k8s` itself runs against the stand-in cluster of tests/helpers/cluster.py; here the
Job is rendered by the same code the store-kubernetes backend uses (its config loader, then
MLflow's ``mlflow.projects.kubernetes`` job definition) for the tests that read a Job without
running it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from mlflow.projects import kubernetes as kb
from mlflow.projects._project_spec import load_project
from mlflow.projects.utils import get_entry_point_command, get_run_env_vars

from mlflow_project_store.backends import kubernetes_config


def kube_config(project: Path, name: str = "kubernetes_config.json") -> dict:
    """The project's Kubernetes config with its Job template loaded, as the backend reads it."""
    return kubernetes_config(json.loads((project / name).read_text()), str(project))


def render(
    project: Path,
    params: dict[str, object],
    image_tag: str,
    digest: str,
    run_id: str,
    experiment_id: str,
    storage: Path,
    entry_point: str = "main",
    config: str = "kubernetes_config.json",
) -> dict:
    """The Job exactly as `mlflow run --backend store-kubernetes` submits it."""
    spec = load_project(str(project))
    command = get_entry_point_command(spec, entry_point, params, str(storage))
    return kb._get_kubernetes_job_definition(
        spec.name,
        image_tag,
        digest,
        kb._get_run_command(command),
        get_run_env_vars(run_id, experiment_id),
        copy.deepcopy(kube_config(project, config)["kube-job-template"]),
    )


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
