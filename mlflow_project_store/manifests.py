"""What every pod spec of the repository's Kubernetes manifests carries, checked without
importing MLflow: ``make validate`` checks it on the Job templates (validate_containers.py),
``make deploy-server`` on the tracking server (deploy.py). And the kube context that the
commands submitting to a cluster use (``make run-k8s``, ``make deploy-server``, ``make
deploy-model``).
"""

from __future__ import annotations

import json
from typing import Any


def kube_context(asked: str) -> tuple[str, bool]:
    """The context asked for, else the kubeconfig's current one (KUBECONFIG, else
    ~/.kube/config); and whether the kubeconfig has it."""
    from kubernetes.config import list_kube_config_contexts
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, current = list_kube_config_contexts()
    except (ConfigException, OSError, TypeError):
        contexts, current = [], None
    name = asked or (current or {}).get("name", "")
    return name, name in [context["name"] for context in contexts]


def no_context(name: str) -> str:
    return (
        f"no kube context {name!r}: set KUBE_CONTEXT= to one of `kubectl config get-contexts` "
        "(KUBECONFIG, else ~/.kube/config)"
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def lookup(node: Any, *keys: str) -> Any:
    """``node[k1][k2]...``, or None where a level is missing or not a mapping."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def shown(value: Any) -> str:
    return "missing" if value is None else json.dumps(value)


def pod_problems(pod: Any, where: str = "spec.template.spec") -> list[str]:
    """What a pod spec lacks of the hardening every manifest here sets: the image's non-root
    user, the runtime's seccomp profile, no service-account token; per container no privilege
    escalation, no capability, and a read-only root with an emptyDir at /tmp (Python's
    tempfile, where MLflow writes a model before it uploads it)."""
    context = lookup(pod, "securityContext")
    problems = []
    if lookup(context, "runAsNonRoot") is not True:
        problems.append(
            f"{where}.securityContext.runAsNonRoot is {shown(lookup(context, 'runAsNonRoot'))}: "
            "expected true (the image's non-root user)"
        )
    if lookup(context, "runAsUser") == 0:
        problems.append(f"{where}.securityContext.runAsUser is 0: expected a non-root uid, 1000")
    seccomp = lookup(context, "seccompProfile", "type")
    if seccomp != "RuntimeDefault":
        problems.append(
            f"{where}.securityContext.seccompProfile.type is {shown(seccomp)}: "
            "expected RuntimeDefault"
        )
    token = lookup(pod, "automountServiceAccountToken")
    if token is not False:
        problems.append(
            f"{where}.automountServiceAccountToken is {shown(token)}: expected false (the pod "
            "never calls the Kubernetes API)"
        )
    empty_dirs = {
        volume.get("name")
        for volume in lookup(pod, "volumes") or []
        if isinstance(volume, dict) and "emptyDir" in volume
    }
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(lookup(pod, kind) or []):
            at = f"{where}.{kind}[{index}]"
            problems += container_problems(at, container, empty_dirs)
    return problems


def container_problems(at: str, container: Any, empty_dirs: set[str]) -> list[str]:
    """:func:`pod_problems` of one container (``at`` names it); ``empty_dirs``: the pod's
    emptyDir volumes."""
    security = lookup(container, "securityContext")
    problems = []
    escalation = lookup(security, "allowPrivilegeEscalation")
    if escalation is not False:
        problems.append(
            f"{at}.securityContext.allowPrivilegeEscalation is {shown(escalation)}: expected false"
        )
    drop = lookup(security, "capabilities", "drop")
    if drop != ["ALL"]:
        problems.append(f"{at}.securityContext.capabilities.drop is {shown(drop)}: expected [ALL]")
    if lookup(security, "privileged"):
        problems.append(f"{at}.securityContext.privileged is true: expected false")
    read_only = lookup(security, "readOnlyRootFilesystem")
    if read_only is not True:
        problems.append(
            f"{at}.securityContext.readOnlyRootFilesystem is {shown(read_only)}: expected true, "
            "with emptyDir volumes mounted where it writes (/tmp, HOME)"
        )
    mounts = lookup(container, "volumeMounts") or []
    tmp = [m for m in mounts if isinstance(m, dict) and m.get("mountPath") == "/tmp"]
    if read_only is True and not any(m.get("name") in empty_dirs for m in tmp):
        problems.append(
            f"{at} mounts no emptyDir at /tmp: expected one (with a read-only root, Python's "
            "tempfile, where MLflow writes a model before its upload, has nowhere to write)"
        )
    return problems
