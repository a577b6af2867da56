"""A project's Kubernetes Job as MLflow renders it, what NetworkPolicies let through, and a
filled copy of the tracking server's Secrets.

`make run-k8s` itself runs against the stand-in cluster of tests/helpers/cluster.py; here the
Job is rendered by the same code the store-kubernetes backend uses (its config loader, then
MLflow's ``mlflow.projects.kubernetes`` job definition) for the tests that read a Job without
running it. The stand-in cluster enforces no NetworkPolicy (its pods share the host's
network), so :func:`allowed` evaluates them as the Kubernetes API defines them (a pod selected
by a policy of a direction is isolated in that direction; a connection needs the source's
egress and the target's ingress) for the tests of which pod may reach which.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow.projects import kubernetes as kb
from mlflow.projects._project_spec import load_project
from mlflow.projects.utils import get_entry_point_command, get_run_env_vars

from mlflow_project_store.backends import kubernetes_config
from mlflow_project_store.deploy import DEPLOY, PLACEHOLDER


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


def filled_secrets(path: Path, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """ready_for_mlflow/deploy/secrets.example.yaml written to ``path`` with the CHANGE-ME of
    every key but those of ``keep`` replaced by a fresh fake value; key -> the value written."""
    secret = yaml.safe_load((DEPLOY / "secrets.example.yaml").read_text())
    written = {}
    for key, value in secret["stringData"].items():
        if key not in keep:
            written[key] = f"fake-{key}-{secrets.token_hex(8)}"
            secret["stringData"][key] = re.sub(rf"{PLACEHOLDER}[\w-]*", written[key], value)
    path.write_text(yaml.safe_dump(secret, sort_keys=False))
    return written


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (its namespace, that namespace's labels, its labels and
    named ports), or an address outside the cluster (``ip``, no labels)."""

    namespace: str = ""
    namespace_labels: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ip: str = ""


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) as Kubernetes evaluates it: {} selects
    everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        found = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not found:
            return False
    return True


def peer_matches(rule_peer: dict, policy_namespace: str, peer: Peer) -> bool:
    """Whether one ``from``/``to`` entry of a NetworkPolicy rule names ``peer``."""
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        inside = peer.ip and ipaddress.ip_address(peer.ip) in ipaddress.ip_network(block["cidr"])
        return bool(inside) and not any(
            ipaddress.ip_address(peer.ip) in ipaddress.ip_network(cidr)
            for cidr in block.get("except", [])
        )
    if not peer.namespace:  # an address outside the cluster is no pod
        return False
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], peer.namespace_labels):
            return False
    elif peer.namespace != policy_namespace:
        return False
    return selects(rule_peer.get("podSelector"), peer.labels)


def port_matches(rule: dict, port: int, protocol: str, target: Peer) -> bool:
    """Whether a rule's ``ports`` (none: every port) let ``port`` through; a named port is
    the target pod's container port of that name."""
    if not rule.get("ports"):
        return True
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != protocol:
            continue
        named = entry.get("port")
        if named is None:
            return True
        first = target.ports.get(named) if isinstance(named, str) else named
        if first is not None and first <= port <= entry.get("endPort", first):
            return True
    return False


def policy_types(spec: dict) -> list[str]:
    """The directions a policy isolates; unstated: Ingress, and Egress when it has rules for it."""
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def direction_allows(
    policies: list[dict], pod: Peer, other: Peer, port: int, protocol: str, direction: str
) -> bool:
    """Whether the policies of ``pod``'s namespace let ``other`` reach it (``Ingress``) or let
    it reach ``other`` (``Egress``) on ``port``. A pod that no policy of that direction selects
    is not isolated: everything is let through."""
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    target = pod if direction == "Ingress" else other
    isolating = [
        policy
        for policy in policies
        if policy["metadata"].get("namespace") == pod.namespace
        and selects(policy["spec"]["podSelector"], pod.labels)
        and direction in policy_types(policy["spec"])
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(key, []):
            listed = rule.get(peers)
            named = not listed or any(peer_matches(p, pod.namespace, other) for p in listed)
            if named and port_matches(rule, port, protocol, target):
                return True
    return False


def allowed(
    policies: list[dict], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Whether NetworkPolicies ``policies`` (each with its metadata.namespace) let ``source``
    open a connection to ``target``'s ``port``: the egress of a source pod and the ingress of a
    target pod must both allow it."""
    out = not source.namespace or direction_allows(
        policies, source, target, port, protocol, "Egress"
    )
    into = not target.namespace or direction_allows(
        policies, target, source, port, protocol, "Ingress"
    )
    return out and into
