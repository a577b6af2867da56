"""``make run-k8s``'s checks and its backend config, before ``mlflow run`` starts anything.

    python -m mlflow_project_store.kubernetes     (settings from the environment, as make sets them)

Reads ``K8S_PROJECT``, ``ENTRY_POINT``, ``REGISTRY``, ``KUBE_CONTEXT``, ``STATE`` and
``MLFLOW_TRACKING_URI``. Each problem is one line naming the setting and what is expected, exit
1: a project without the Kubernetes config of that entry point, a kube context that does not
exist, a tracking store the pod cannot reach (not a server), a registry that does not answer, a
dependency image that was not built. Then it says which context and namespace the Job goes to,
and writes ``STATE/kubernetes_config.json``: the project's config (``kubernetes_config.json``
for ``main``, ``kubernetes_<entry point>_config.json`` for another) with the context and the
repository ``REGISTRY/<project>`` filled in, for ``mlflow run --backend store-kubernetes``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from mlflow_project_store.manifests import kube_context, no_context
from mlflow_project_store.project_tools.cli import fail
from mlflow_project_store.project_tools.redaction import redact

PROG = "make run-k8s"


def config_name(entry_point: str) -> str:
    """``kubernetes_config.json`` for ``main``, ``kubernetes_<entry point>_config.json`` else."""
    return (
        "kubernetes_config.json"
        if entry_point == "main"
        else f"kubernetes_{entry_point}_config.json"
    )


def registry_answers(registry: str) -> None:
    host = registry.split("/")[0]
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
    try:
        socket.create_connection((name, int(port)), timeout=5).close()
    except (OSError, ValueError):
        fail(
            PROG,
            f"registry {registry} does not answer on {name}:{port}: start one with make "
            "registry, or set REGISTRY=",
            status=1,
        )


def main() -> int:
    env = os.environ
    project = Path(env.get("K8S_PROJECT", "projects/mnist-docker"))
    entry = env.get("ENTRY_POINT", "main")
    path = project / config_name(entry)
    if not path.is_file():
        fail(
            PROG,
            f"{project} has no {path.name} for entry point {entry!r}: set K8S_PROJECT= to a "
            "project with Kubernetes files (projects/<name>-docker) or ENTRY_POINT=",
            status=1,
        )
    context, found = kube_context(env.get("KUBE_CONTEXT", ""))
    if not found:
        fail(PROG, no_context(context), status=1)
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        fail(
            PROG,
            f"the pod needs a tracking server, not {redact(uri)}: set TRACKING_URI=http(s)://...",
            status=1,
        )
    registry = env.get("REGISTRY", "localhost:5050")
    registry_answers(registry)
    image = yaml.safe_load((project / "MLproject").read_text())["docker_env"]["image"]
    present = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    if present.returncode != 0:
        fail(PROG, f"image {image} is missing: run make docker-images", status=1)
    config = json.loads(path.read_text())
    template = yaml.safe_load((project / config["kube-job-template-path"]).read_text())
    namespace = template.get("metadata", {}).get("namespace", "default")
    print(f"Kubernetes: context {context}, namespace {namespace}, {project}/{path.name}")
    config |= {"kube-context": context, "repository-uri": f"{registry}/{project.name}"}
    state = Path(env.get("STATE", ".run"))
    state.mkdir(parents=True, exist_ok=True)
    (state / "kubernetes_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
