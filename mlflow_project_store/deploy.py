"""``make deploy-server``: the tracking server of ``ready_for_mlflow/deploy/`` onto a cluster.

    python -m mlflow_project_store.deploy     (settings from the environment, as make sets them)

Reads ``SECRETS`` (the filled copy of ``secrets.example.yaml``), ``SERVER_MANIFESTS`` (default
``ready_for_mlflow/deploy/tracking-server.yaml``), ``KUBE_CONTEXT`` (else kubectl's current
one), ``KUBE_NAMESPACE`` (default ``mlflow``) and ``DRY_RUN`` (``1``: render and validate only, no
cluster needed). Refused in one line, exit 1, before anything is applied: a secrets file that
is missing or that git tracks; a Secret value that still holds ``CHANGE-ME`` or is empty (the
line names the keys, never a value); a Secret key the server reads and the file lacks; an
object that the Kubernetes schema (``layout.KUBERNETES_VERSION``) refuses, or a pod without
the hardening of ``manifests.pod_problems``. Then it says which context and
namespace it deploys to and applies the Secrets and the manifests in order with server-side
apply (field manager ``mlflow-project-store``) through the kubernetes client; a refusal of the
API server is one line, the secret values masked.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import kubernetes_validate
import yaml

from mlflow_project_store.layout import KUBERNETES_VERSION, ROOT
from mlflow_project_store.manifests import (
    first_line,
    kube_context,
    lookup,
    no_context,
    pod_problems,
)
from mlflow_project_store.project_tools.cli import fail
from mlflow_project_store.project_tools.redaction import redact

PROG = "make deploy-server"
DEPLOY = ROOT / "ready_for_mlflow" / "deploy"
PLACEHOLDER = "CHANGE-ME"
FIELD_MANAGER = "mlflow-project-store"
APPLY_PATCH = "application/apply-patch+yaml"
# The label of the namespaces whose pods the server's NetworkPolicy lets in.
TRAINING_LABEL = "mlflow-project-store/training"
# The kubernetes client's API class of each apiVersion that the manifests use.
APIS = {"v1": "CoreV1Api", "apps/v1": "AppsV1Api", "networking.k8s.io/v1": "NetworkingV1Api"}
POD_OWNERS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def refuse(message: str) -> NoReturn:
    fail(PROG, message, status=1)


def documents(path: Path) -> list[dict]:
    """The Kubernetes objects of a YAML file (empty documents left out)."""
    try:
        found = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        refuse(f"{path}: cannot be read as YAML: {first_line(exc)}")
    if not found or not all(isinstance(doc, dict) and "kind" in doc for doc in found):
        refuse(f"{path}: expected Kubernetes objects, each with its apiVersion and kind")
    return found


def tracked_by_git(path: Path) -> bool:
    """Whether git tracks ``path`` in the work tree it is in (no git, no work tree: no)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(path.parent), "ls-files", "--error-unmatch", "--", path.name],
            capture_output=True,
        )
    except OSError:
        return False
    return listed.returncode == 0


def secret_values(secret: dict) -> dict[str, str]:
    """Key -> value of a Secret: its ``data`` base64-decoded, then its ``stringData``."""
    values = {}
    for key, raw in (secret.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(str(raw or ""), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            values[key] = str(raw)  # not base64: the schema check names it
    for key, value in (secret.get("stringData") or {}).items():
        values[key] = "" if value is None else str(value)
    return values


def keys_phrase(keys: list[str], one: str, many: str) -> str:
    return f"key {keys[0]} {one}" if len(keys) == 1 else f"keys {', '.join(keys)} {many}"


def check_filled(path: Path, secret: dict) -> None:
    """Refuse a Secret with a value that still holds the placeholder, or is empty."""
    values = secret_values(secret)
    holding = [key for key, value in values.items() if PLACEHOLDER in value]
    empty = [key for key, value in values.items() if PLACEHOLDER not in value and not value.strip()]
    unfilled = []
    if holding:
        unfilled.append(
            keys_phrase(holding, f"still holds {PLACEHOLDER}", f"still hold {PLACEHOLDER}")
        )
    if empty:
        unfilled.append(keys_phrase(empty, "is empty", "are empty"))
    if unfilled:
        name = lookup(secret, "metadata", "name")
        plural = "s" if len(holding) + len(empty) > 1 else ""
        refuse(f"{path}: Secret {name}: {'; '.join(unfilled)}: expected the real value{plural}")


def secret_keys_read(objects: list[dict]) -> set[tuple[str, str]]:
    """(Secret, key) of every value the pods of ``objects`` read and cannot do without."""
    read = set()
    for obj in objects:
        pod = lookup(obj, "spec", "template", "spec") if obj["kind"] in POD_OWNERS else None
        for container in (lookup(pod, "containers") or []) + (lookup(pod, "initContainers") or []):
            for item in container.get("env") or []:
                ref = lookup(item, "valueFrom", "secretKeyRef")
                if ref and not ref.get("optional"):
                    read.add((ref["name"], ref["key"]))
        for volume in lookup(pod, "volumes") or []:
            source = volume.get("secret")
            if source and not source.get("optional"):
                read |= {(source["secretName"], item["key"]) for item in source.get("items", [])}
    return read


def check_secrets(path: Path, manifests: Path, objects: list[dict]) -> list[dict]:
    """The Secrets of ``path``: git does not track it, every value is filled, and it holds
    every key the pods of ``objects`` read."""
    if not path.is_file():
        refuse(
            f"SECRETS={path}: no such file: copy {DEPLOY / 'secrets.example.yaml'} there (a "
            "git-ignored path) and replace every CHANGE-ME"
        )
    if tracked_by_git(path):
        refuse(
            f"SECRETS={path} is tracked by git: a filled secrets file is never committed; "
            "git rm --cached it, keep it git-ignored, and change the values it held"
        )
    secrets = documents(path)
    for secret in secrets:
        if secret["kind"] != "Secret":
            refuse(f"{path}: holds a {secret['kind']}: expected Secrets only")
        check_filled(path, secret)
    given = {
        (lookup(secret, "metadata", "name"), key)
        for secret in secrets
        for key in secret_values(secret)
    }
    for name, key in sorted(secret_keys_read(objects) - given):
        refuse(
            f"{path}: lacks key {key} of Secret {name}, which {manifests.name} reads: expected "
            "every key of secrets.example.yaml"
        )
    return secrets


def in_namespace(path: Path, obj: dict, namespace: str) -> dict:
    """``obj`` placed in ``namespace``; one that names another is refused."""
    metadata = obj.setdefault("metadata", {})
    stated = metadata.get("namespace")
    if stated not in (None, namespace):
        refuse(
            f"{path}: {obj['kind']} {metadata.get('name')} names namespace {stated}: expected "
            f"KUBE_NAMESPACE ({namespace}) or none"
        )
    metadata["namespace"] = namespace
    return obj


def check_object(path: Path, obj: dict) -> None:
    """The Kubernetes schema; a pod's hardening; a kind this tool applies. A Secret's schema
    error shows where and what was expected, never the value."""
    kind, name = obj["kind"], lookup(obj, "metadata", "name")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "the top level"
        expected = (
            f"expected {exc.validator} {exc.validator_value}" if kind == "Secret" else exc.message
        )
        refuse(
            f"{path}: {kind} {name} fails Kubernetes {KUBERNETES_VERSION} validation at "
            f"{where}: {expected}"
        )
    except Exception as exc:  # an unknown kind or apiVersion
        refuse(f"{path}: {kind} {name} cannot be validated: {first_line(exc)}")
    if kind in POD_OWNERS and (problems := pod_problems(lookup(obj, "spec", "template", "spec"))):
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        refuse(f"{path}: {kind} {name}: {problems[0]}{more}")
    if patch_method(obj) is None:
        refuse(
            f"{path}: {kind} {name} ({obj['apiVersion']}) is not an object this applies: "
            "expected namespaced objects of apiVersion " + ", ".join(APIS)
        )


def patch_method(obj: dict) -> str | None:
    """The kubernetes client's API class and method that patch ``obj`` in a namespace
    (``NetworkingV1Api.patch_namespaced_network_policy``), None for another object."""
    from kubernetes import client

    api = APIS.get(obj["apiVersion"])
    method = "patch_namespaced_" + re.sub(r"(?<!^)(?=[A-Z])", "_", obj["kind"]).lower()
    return f"{api}.{method}" if api and hasattr(getattr(client, api), method) else None


def apply(objects: list[dict], context: str, values: dict[str, str]) -> None:
    """Server-side apply of each object, in order; the first refusal is one line."""
    import urllib3
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(context=context)
    except (ConfigException, OSError) as exc:
        refuse(f"kube context {context} cannot be loaded: {first_line(exc)}")
    for obj in objects:
        kind, metadata = obj["kind"], obj["metadata"]
        api, method = str(patch_method(obj)).split(".")
        patch = getattr(getattr(client, api)(api_client), method)
        try:
            patch(
                name=metadata["name"],
                namespace=metadata["namespace"],
                body=obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )
        except client.ApiException as exc:
            try:
                message = json.loads(exc.body or "{}").get("message", "")
            except (ValueError, AttributeError):  # not the API server's JSON Status
                message = ""
            reason = redact(f"{exc.status} {exc.reason}: {message}", values)
            refuse(f"the cluster refused {kind} {metadata['name']}: {reason.splitlines()[0]}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            refuse(f"the API server of context {context} does not answer: {first_line(exc)}")
        print(f"applied {kind} {metadata['name']}", flush=True)


def main() -> int:
    env = os.environ
    secrets_path = Path(env.get("SECRETS") or DEPLOY / "secrets.yaml")
    manifests = Path(env.get("SERVER_MANIFESTS") or DEPLOY / "tracking-server.yaml")
    namespace = env.get("KUBE_NAMESPACE") or "mlflow"
    dry_run = env.get("DRY_RUN", "") not in ("", "0")
    objects = documents(manifests)
    secrets = check_secrets(secrets_path, manifests, objects)
    ordered = [in_namespace(secrets_path, s, namespace) for s in secrets]
    ordered += [in_namespace(manifests, obj, namespace) for obj in objects]
    for obj in ordered:
        check_object(secrets_path if obj["kind"] == "Secret" else manifests, obj)
    context, found = kube_context(env.get("KUBE_CONTEXT", ""))
    if not (found or dry_run):
        refuse(no_context(context) + ", or DRY_RUN=1")
    context = context or "none"
    print(f"Deploy: context {context}, namespace {namespace}, {secrets_path}, {manifests}")
    if dry_run:
        for obj in ordered:
            print(f"would apply {obj['kind']} {obj['metadata']['name']}")
        print(
            f"Dry run: {len(ordered)} objects valid for Kubernetes {KUBERNETES_VERSION}; "
            "nothing applied"
        )
        return 0
    values = {
        f"SECRET {key}": value for secret in secrets for key, value in secret_values(secret).items()
    }
    apply(ordered, context, values)
    print(
        f"Jobs reach the server from the namespaces labelled {TRAINING_LABEL}=true: "
        f"kubectl label namespace {namespace} {TRAINING_LABEL}=true (each that runs Jobs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
