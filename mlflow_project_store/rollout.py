"""``make deploy-model``: run a registered model version on Kubernetes, by its image's digest.

    make deploy-model MODEL=models:/mnist@champion REGISTRY=... KUBE_CONTEXT=... [DRY_RUN=1]
    python -m mlflow_project_store.rollout      (settings from the environment, as make sets them)

Reads ``MODEL``, ``REGISTRY``, ``KUBE_CONTEXT``, ``KUBE_NAMESPACE`` (mlflow), ``DRY_RUN``,
``MANIFEST`` (.run/model-serving.yaml), ``ROLLOUT_TIMEOUT`` (600 s), ``ALLOW_PICKLE`` and
``SERVING_DEPS_IMAGE``. It says first where the model goes (the kube context and namespace,
or, with DRY_RUN=1, the manifest file), then builds and pushes the version's serving image
(serving_image.py) and renders ready_for_mlflow/deploy/model-serving.yaml with it: names
``<model>-serving``, the image by digest, the version in annotations; checked against the
Kubernetes schema and the pod hardening of ``validate_containers.pod_problems``. Then:

- DRY_RUN=1: the manifest is written to MANIFEST (replacing the file at once, never half
  written); no cluster is contacted.
- otherwise: the Service and the Deployment are applied through the kubernetes client
  (server-side apply, as `make deploy-server` applies) and the rollout is waited for. The
  Deployment replaces pods only once new ones answer /ping (maxUnavailable 0), so a version
  that never gets ready leaves the old one serving; this then says so, exit 1.

A version already deployed (same version, same files) is left as it is. Any failure before the
manifest is written or applied (an alias that does not exist, a refused model, a build or push
that fails) leaves the deployed version running: one line, exit 1. The rollout receiver
(rollout_receiver.py) calls :func:`roll` whenever the ``champion`` alias moves.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlflow_project_store.deploy import APPLY_PATCH, FIELD_MANAGER
from mlflow_project_store.layout import KUBERNETES_VERSION, ROOT, STATE
from mlflow_project_store.manifests import kube_context, no_context, pod_problems
from mlflow_project_store.project_tools.cli import OneLineParser, fail
from mlflow_project_store.project_tools.redaction import redact
from mlflow_project_store.serving_image import (
    LABEL,
    ServingImage,
    ServingImageError,
    model_uri_problem,
    serving_image,
    serving_name,
)

PROG = "make deploy-model"
TEMPLATE = ROOT / "ready_for_mlflow" / "deploy" / "model-serving.yaml"
NAME_LABEL = "app.kubernetes.io/name"


class RolloutError(Exception):
    """Why the model could not be rolled out, worded for the user; what ran keeps running."""


@dataclass(frozen=True)
class Target:
    """Where a model goes: a cluster (context, namespace) or, for a dry run, a manifest file."""

    registry: str = "localhost:5050"
    context: str = ""
    namespace: str = "mlflow"
    dry_run: bool = False
    manifest: Path = STATE / "model-serving.yaml"
    timeout: float = 600
    allow_pickle: bool = False
    deps_image: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ = os.environ) -> Target:
        timeout = env.get("ROLLOUT_TIMEOUT") or "600"
        if not timeout.isdigit() or int(timeout) < 1:
            raise RolloutError(f"ROLLOUT_TIMEOUT={timeout!r}: expected whole seconds >= 1")
        return cls(
            registry=env.get("REGISTRY") or "localhost:5050",
            context=env.get("KUBE_CONTEXT", ""),
            namespace=env.get("KUBE_NAMESPACE") or "mlflow",
            dry_run=env.get("DRY_RUN", "") not in ("", "0"),
            manifest=Path(env.get("MANIFEST") or STATE / "model-serving.yaml"),
            timeout=int(timeout),
            allow_pickle=env.get("ALLOW_PICKLE") == "1",
            deps_image=env.get("SERVING_DEPS_IMAGE", ""),
        )

    def describe(self) -> str:
        if self.dry_run:
            return f"dry run: the manifest goes to {self.manifest}, no cluster is contacted"
        return f"Kubernetes: context {self.context}, namespace {self.namespace}"


def render(image: ServingImage, template: Path = TEMPLATE) -> list[dict]:
    """The Deployment and Service of ``template`` for ``image``: named ``<model>-serving``, the
    container on the image's digest reference, the version's labels as annotations."""
    name = serving_name(image.labels[LABEL + "name"])
    documents = [copy.deepcopy(doc) for doc in yaml.safe_load_all(template.read_text()) if doc]
    for doc in documents:
        doc["metadata"]["name"] = name
        doc["metadata"].setdefault("labels", {})[NAME_LABEL] = name
        spec = doc["spec"]
        if doc["kind"] == "Service":
            spec["selector"][NAME_LABEL] = name
            continue
        spec["selector"]["matchLabels"][NAME_LABEL] = name
        pod = spec["template"]
        pod["metadata"]["labels"][NAME_LABEL] = name
        doc["metadata"]["annotations"] = dict(image.labels)
        pod["metadata"]["annotations"] = dict(image.labels)
        pod["spec"]["containers"][0]["image"] = image.pushed
    return documents


def check(documents: list[dict]) -> None:
    """The Kubernetes schema, and the pod's hardening, before anything is written or applied."""
    import kubernetes_validate

    for doc in documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise RolloutError(
                f"{TEMPLATE}: {doc['kind']} fails Kubernetes {KUBERNETES_VERSION} validation: "
                f"{exc.message}"
            ) from None
    if problems := pod_problems(deployment_of(documents)["spec"]["template"]["spec"]):
        raise RolloutError(f"{TEMPLATE}: {problems[0]}")


def deployment_of(documents: list[dict]) -> dict:
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    return deployment


def same_model(annotations: dict[str, str] | None, image: ServingImage) -> bool:
    """Whether ``annotations`` (a deployed Deployment's) name the version and files of ``image``."""
    keys = (LABEL + "name", LABEL + "version", LABEL + "source-digest")
    return bool(annotations) and all(annotations.get(k) == image.labels[k] for k in keys)


def written_annotations(manifest: Path) -> dict[str, str] | None:
    """The annotations of the Deployment in a manifest written by a dry run, if any."""
    try:
        documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
        return deployment_of(documents)["metadata"].get("annotations")
    except (OSError, yaml.YAMLError, ValueError, KeyError, TypeError):
        return None


def write_manifest(documents: list[dict], manifest: Path) -> None:
    """Replace ``manifest`` with ``documents`` in one step: a reader sees the old or the new."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{manifest.name}.", dir=manifest.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            yaml.safe_dump_all(documents, stream, sort_keys=False)
        os.chmod(temporary, 0o644)
        os.replace(temporary, manifest)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Cluster:
    """The kubernetes client on one context and namespace: apply, read, wait."""

    def __init__(self, context: str, namespace: str) -> None:
        import kubernetes

        self.namespace = namespace
        self.client = kubernetes.config.new_client_from_config(context=context)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    def annotations(self, name: str) -> dict[str, str] | None:
        """The annotations of the Deployment ``name``, None when there is none."""
        from kubernetes.client import ApiException

        try:
            found = self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found.metadata.annotations or {}

    def apply(self, documents: list[dict]) -> None:
        """Server-side apply of each document: created when missing, else updated."""
        for doc in sorted(documents, key=lambda d: d["kind"] != "Service"):
            patch = (
                self.core.patch_namespaced_service
                if doc["kind"] == "Service"
                else self.apps.patch_namespaced_deployment
            )
            patch(
                doc["metadata"]["name"],
                self.namespace,
                doc,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )

    def wait(self, name: str, timeout: float) -> None:
        """Until every replica of Deployment ``name`` runs its newest template and is ready."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.apps.read_namespaced_deployment_status(name, self.namespace)
            status, wanted = found.status, found.spec.replicas or 0
            for condition in status.conditions or []:
                if condition.reason == "ProgressDeadlineExceeded":
                    raise RolloutError(f"Deployment {name}: {condition.message}{KEPT}")
            if (
                (status.observed_generation or 0) >= (found.metadata.generation or 0)
                and (status.updated_replicas or 0) >= wanted
                and (status.available_replicas or 0) >= wanted
                and (status.replicas or 0) == wanted
            ):
                return
            if time.monotonic() > deadline:
                raise RolloutError(
                    f"Deployment {name} did not finish its rollout within {timeout:g} s "
                    f"({status.updated_replicas or 0} of {wanted} replicas updated){KEPT}"
                )
            time.sleep(2)


KEPT = "; the pods of the previous version keep serving (maxUnavailable 0)"


def deploy(image: ServingImage, target: Target) -> str:
    """Write or apply the rendered manifest of ``image``; what happened, in one line."""
    documents = render(image)
    check(documents)
    name = deployment_of(documents)["metadata"]["name"]
    version = f"{image.labels[LABEL + 'name']} version {image.version}"
    if target.dry_run:
        if same_model(written_annotations(target.manifest), image):
            return f"{target.manifest} already runs {version}"
        write_manifest(documents, target.manifest)
        return f"wrote {target.manifest}: Deployment {name} runs {version} as {image.pushed}"
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    try:
        cluster = Cluster(target.context, target.namespace)
        if same_model(cluster.annotations(name), image):
            return f"Deployment {name} already runs {version}"
        cluster.apply(documents)
        cluster.wait(name, target.timeout)
    except ApiException as exc:
        raise RolloutError(f"the cluster refused {name}: HTTP {exc.status} {exc.reason}") from None
    except (HTTPError, OSError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise RolloutError(
            f"context {target.context}: the cluster is unreachable ({reason})"
        ) from None
    return f"Deployment {name} in {target.namespace} runs {version} as {image.pushed}"


def roll(model_uri: str, target: Target) -> str:
    """Build and push the image of ``model_uri``'s version, then deploy it to ``target``."""
    image = serving_image(model_uri, target.registry, target.allow_pickle, target.deps_image)
    print(image.pushed, flush=True)
    return deploy(image, target)


def checked_target(env: dict[str, str] | os._Environ = os.environ) -> Target:
    """The target of the environment, its kube context checked; said first."""
    target = Target.from_env(env)
    if not target.dry_run:
        context, found = kube_context(target.context)
        if not found:
            raise RolloutError(no_context(context) + ", or DRY_RUN=1 for the manifest only")
        target = Target(**{**target.__dict__, "context": context})
    print(target.describe(), flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    model_uri = os.environ.get("MODEL", "")
    if not model_uri:
        fail(PROG, "set MODEL=<registered model>, e.g. MODEL=models:/mnist@champion", 2)
    if problem := model_uri_problem(model_uri):
        fail(PROG, problem, 2)
    try:
        target = checked_target()
        print(roll(model_uri, target))
    except (ServingImageError, RolloutError) as exc:
        fail(PROG, redact(str(exc)), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
