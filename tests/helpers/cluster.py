"""A stand-in for the one thing that cannot run here: a Kubernetes cluster.

No cluster can run on this machine (no kind or k3s images or binaries can be fetched), so the
tests of `make run-k8s` give `mlflow run --backend store-kubernetes` a kube context whose API
server is :class:`JobCluster`: an HTTP server on loopback that answers the three calls MLflow
makes of a cluster (create a Job, read its status every 5 s, delete it) and runs the Job's pods
the kubelet's way in Docker: the container image pulled from the real registry by digest, the
rendered command, the env with literal values and the Secrets it was given (an optional Secret
that does not exist is left out), the securityContext as the kubelet applies it (the user, no
new privileges, the dropped capabilities, ``--read-only`` for ``readOnlyRootFilesystem``), each
emptyDir volume as an empty tmpfs at its mountPath (other volume kinds are refused), one
container per completion index of an Indexed Job with the pod's JOB_COMPLETION_INDEX, hostname
``<job>-<index>`` and the names of the headless Service (``--add-host``, standing in for the
cluster's DNS); only MASTER_PORT is added, since the containers share the host's ports.
Deleting the Job stops its pods (SIGTERM, then SIGKILL after 30 s). NetworkPolicies are not
enforced (the containers share the host's network): tests check them with
tests/helpers/kubernetes.py's ``allowed``. A server-side apply (PATCH, `make deploy-server`) is
recorded in ``applied`` and answered with the object, nothing more. Everything else is real:
the image build with .dockerignore, the push, the Job rendered from the template, the tracking
server the pods record into.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import yaml

from mlflow_project_store.ready_for_mlflow.servers import HOST, free_port

JOBS = re.compile(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/?]+))?(/status)?")
CONTEXT = "lab"
STOP_SECONDS = 30


@dataclass
class Pod:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    log: str = ""


@dataclass
class Applied:
    """A server-side apply the API server received (``make deploy-server``): recorded, and
    answered with the object."""

    path: str
    query: dict[str, list[str]]
    content_type: str
    body: dict


@dataclass
class Job:
    manifest: dict
    pods: list[Pod] = field(default_factory=list)
    started: str = ""
    deleted: bool = False

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    def condition(self) -> str | None:
        codes = [pod.process.poll() if pod.process else None for pod in self.pods]
        if any(code not in (0, None) for code in codes):
            return "Failed"
        return "Complete" if codes and all(code == 0 for code in codes) else None


def container_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_value(container: dict, name: str) -> str:
    """The literal value of ``name`` in a container's env."""
    (value,) = [item["value"] for item in container["env"] if item["name"] == name]
    return value


def pod_env(container: dict, secrets: dict[str, dict[str, str]]) -> list[str]:
    """`docker run -e` flags, resolved as the kubelet would (missing optional Secrets: left out)."""
    flags = []
    for item in container.get("env", []):
        if "value" in item:
            flags += ["-e", f"{item['name']}={item['value']}"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional") is True, f"Secret {ref['name']} is missing and required"
            continue
        flags += ["-e", f"{item['name']}={value}"]
    return flags


def pod_security(pod: dict, container: dict) -> list[str]:
    """`docker run` flags of the pod's and the container's securityContext (the container's
    fields win), as the kubelet applies them; the runtime's default seccomp profile is Docker's."""
    merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    flags = []
    if "runAsUser" in merged:
        group = f":{merged['runAsGroup']}" if "runAsGroup" in merged else ""
        flags += ["--user", f"{merged['runAsUser']}{group}"]
    if merged.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    for capability in merged.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", capability]
    if merged.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    return flags


def pod_volumes(pod: dict, container: dict) -> list[str]:
    """`docker run` flags that mount each of the container's emptyDir volumes: an empty tmpfs,
    writable by any user as an emptyDir is, of the volume's sizeLimit."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    flags = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"the stand-in kubelet mounts emptyDir volumes only: {volume}"
        options = ["ro" if mount.get("readOnly") else "rw", "mode=1777"]
        if limit := volume["emptyDir"].get("sizeLimit"):
            options.append(f"size={limit.removesuffix('i').lower()}")  # 2Gi -> size=2g
        flags += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
    return flags


def pod_commands(job: dict, secrets: dict[str, dict[str, str]]) -> list[tuple[str, list[str]]]:
    """(pod name, `docker run` command) of each pod of ``job``, as Kubernetes would start it."""
    spec, container = job["spec"], container_of(job)
    name = job["metadata"]["name"]
    indexed = spec.get("completionMode") == "Indexed"
    if indexed:
        assert spec["completions"] == spec["parallelism"], "an Indexed Job starts all pods at once"
    pods, master_port = [], free_port()
    for index in range(spec.get("completions", 1)):
        pod = f"{name}-{index}"
        extra = []
        if indexed:
            subdomain = spec["template"]["spec"]["subdomain"]
            extra = ["--hostname", pod, "-e", f"JOB_COMPLETION_INDEX={index}"]
            # The containers share the host's ports, where pods have their own.
            extra += ["-e", f"MASTER_PORT={master_port}"]
            for host in (f"{name}-0.{subdomain}", pod, f"{pod}.{subdomain}"):
                extra += ["--add-host", f"{host}:127.0.0.1"]
        run = ["docker", "run", "--rm", "--name", pod, "--network", "host", *extra]
        pod_spec = spec["template"]["spec"]
        run += pod_security(pod_spec, container) + pod_volumes(pod_spec, container)
        run += pod_env(container, secrets)
        run += ["--entrypoint", container["command"][0], container["image"]]
        pods.append((pod, run + container["command"][1:]))
    return pods


class JobCluster(ThreadingHTTPServer):
    """The Job API of a cluster on loopback, with a kubelet that runs pods in Docker."""

    def __init__(self, secrets: dict[str, dict[str, str]], workdir: Path) -> None:
        super().__init__((HOST, free_port()), JobHandler)
        self.secrets, self.workdir = secrets, workdir
        self.jobs: dict[str, Job] = {}
        self.applied: list[Applied] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def create(self, manifest: dict) -> Job:
        job = Job(manifest, started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        image = container_of(manifest)["image"]
        # The kubelet pulls the image by digest: from the registry, which must hold it.
        pulled = subprocess.run(["docker", "pull", "-q", image], capture_output=True, text=True)
        assert pulled.returncode == 0, f"the registry has no {image}: {pulled.stderr}"
        for name, command in pod_commands(manifest, self.secrets):
            log = self.workdir / f"{name}.log"
            with log.open("w") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            job.pods.append(Pod(name, command, process, str(log)))
        with self.lock:
            self.jobs[job.name] = job
        return job

    def delete(self, name: str) -> None:
        job = self.jobs[name]
        job.deleted = True
        names = [pod.name for pod in job.pods if pod.process and pod.process.poll() is None]
        if names:
            subprocess.run(["docker", "stop", "-t", str(STOP_SECONDS), *names], capture_output=True)

    def pod_logs(self, job: Job) -> list[str]:
        for pod in job.pods:
            if pod.process:
                pod.process.wait(timeout=STOP_SECONDS + 30)
        return [Path(pod.log).read_text() for pod in job.pods]


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler of a stand-in API server that answers JSON."""

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class JobHandler(JsonHandler):
    server: JobCluster

    def job_or_404(self) -> tuple[Job | None, bool]:
        found = JOBS.match(self.path.split("?")[0])
        job = self.server.jobs.get(found.group(2)) if found and found.group(2) else None
        if job is None or job.deleted:
            self.reply(404, {"kind": "Status", "status": "Failure", "code": 404})
            return None, False
        return job, True

    def do_POST(self) -> None:
        manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        job = self.server.create(manifest)
        self.reply(201, job.manifest)

    def do_GET(self) -> None:
        job, found = self.job_or_404()
        if not found:
            return
        status = {"startTime": job.started}
        if condition := job.condition():
            status["conditions"] = [
                {"type": condition, "status": "True", "message": f"Job {condition.lower()}"}
            ]
        self.reply(200, {**job.manifest, "status": status})

    def do_PATCH(self) -> None:
        path, _, query = self.path.partition("?")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content_type = self.headers["Content-Type"]
        self.server.applied.append(Applied(path, parse_qs(query), content_type, body))
        self.reply(200, body)

    def do_DELETE(self) -> None:
        job, found = self.job_or_404()
        if found:
            self.server.delete(job.name)
            self.reply(200, {"kind": "Status", "status": "Success"})


@contextmanager
def job_cluster(
    workdir: Path, secrets: dict[str, dict[str, str]] | None = None
) -> Iterator[tuple[JobCluster, Path]]:
    """The stand-in cluster, and a kubeconfig whose context ``lab`` is it."""
    cluster = JobCluster(secrets or {}, workdir)
    thread = threading.Thread(target=cluster.serve_forever, daemon=True)
    thread.start()
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": CONTEXT,
                "clusters": [{"name": CONTEXT, "cluster": {"server": cluster.url}}],
                "users": [{"name": CONTEXT, "user": {}}],
                "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT}}],
            }
        )
    )
    try:
        yield cluster, kubeconfig
    finally:
        for job in list(cluster.jobs.values()):
            cluster.delete(job.name)
        cluster.shutdown()
        cluster.server_close()
