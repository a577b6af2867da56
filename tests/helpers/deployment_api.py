"""A stand-in for the part of a Kubernetes API server that `make deploy-model` talks to.

No cluster can run here (tests/helpers/cluster.py says why). This answers, on loopback, the
calls of ``rollout.Cluster``: reading a Deployment, server-side apply (PATCH) of a Service or a
Deployment, and reading the Deployment's status, which reports every replica updated and
available (``ready``) or, to stand for pods that never pass their readiness probe, one new
replica that never becomes available. It runs no pod: the tests run the image by digest
themselves (tests/helpers/serving.py).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import yaml

from mlflow_project_store.ready_for_mlflow.servers import HOST, free_port
from tests.helpers.cluster import JsonHandler

OBJECT = re.compile(
    r"/api(?:s/apps)?/v1/namespaces/(?P<ns>[^/]+)/(?P<kind>deployments|services)/(?P<name>[^/?]+)"
    r"(?P<status>/status)?"
)
CONTEXT = "lab"


@dataclass
class Applied:
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: dict


class DeploymentApi(ThreadingHTTPServer):
    def __init__(self, ready: bool) -> None:
        super().__init__((HOST, free_port()), Handler)
        self.ready = ready
        self.objects: dict[str, dict] = {}
        self.applied: list[Applied] = []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def status(self, deployment: dict) -> dict:
        replicas = deployment["spec"].get("replicas", 1)
        generation = deployment["metadata"]["generation"]
        if self.ready:
            counts = {"updatedReplicas": replicas, "availableReplicas": replicas}
            return {"observedGeneration": generation, "replicas": replicas, **counts}
        return {
            "observedGeneration": generation,
            "replicas": replicas + 1,
            "updatedReplicas": 1,
            "availableReplicas": replicas,
            "unavailableReplicas": 1,
        }


class Handler(JsonHandler):
    server: DeploymentApi

    def found(self) -> tuple[str, dict | None, bool]:
        match = OBJECT.fullmatch(self.path.partition("?")[0])
        assert match, f"the stand-in API server has no {self.path}"
        key = f"{match['ns']}/{match['kind']}/{match['name']}"
        return key, self.server.objects.get(key), bool(match["status"])

    def do_GET(self) -> None:
        _, obj, status = self.found()
        if obj is None:
            self.reply(404, {"kind": "Status", "status": "Failure", "code": 404})
        else:
            self.reply(200, {**obj, "status": self.server.status(obj)} if status else obj)

    def do_PATCH(self) -> None:
        key, before, _ = self.found()
        path, _, query = self.path.partition("?")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.applied.append(
            Applied(path, parse_qs(query), self.headers["Content-Type"], body)
        )
        generation = (before or {}).get("metadata", {}).get("generation", 0) + 1
        body["metadata"] = {**body["metadata"], "generation": generation}
        self.server.objects[key] = body
        self.reply(200, body)


@contextmanager
def deployment_api(workdir: Path, ready: bool = True) -> Iterator[tuple[DeploymentApi, Path]]:
    """The stand-in API server, and a kubeconfig whose context ``lab`` is it."""
    api = DeploymentApi(ready)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    kubeconfig = workdir / "kubeconfig"
    cluster = {"name": CONTEXT, "cluster": {"server": api.url}}
    context = {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT}}
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": CONTEXT,
                "clusters": [cluster],
                "users": [{"name": CONTEXT, "user": {}}],
                "contexts": [context],
            }
        )
    )
    try:
        yield api, kubeconfig
    finally:
        api.shutdown()
        api.server_close()
