"""Two MLflow project backends for the store's Docker and Kubernetes runs.

    mlflow run --backend store-docker --build-image -A network=host projects/mnist-docker
    mlflow run --backend store-kubernetes --build-image \\
        --backend-config projects/mnist-docker/kubernetes_config.json projects/mnist-docker

They are plugins of MLflow's ``mlflow.project_backend`` group (pyproject.toml), used when
``--backend`` names them; MLflow's ``local`` and ``kubernetes`` backends are left as they are.
Both build the image from the project folder with its ``.dockerignore`` honoured (images.py).
Beyond that, ``store-docker`` (a ``docker_env`` project in a local container):

- hands every variable to ``docker run`` by name (``-e NAME``, its value in the docker client's
  environment), so no credential is in a process's arguments or in the logged command (MLflow
  writes ``-e NAME=value``);
- names the container after the run and ties the docker client to ``mlflow run``
  (``PR_SET_PDEATHSIG``): if ``mlflow run`` dies, even by SIGKILL, the client gets SIGTERM and
  forwards it to the container, whose training then stops KILLED with its checkpoint.

``store-kubernetes`` reads ``kube-job-template-path`` relative to the project folder (MLflow
reads it from the current folder), says which context and namespace it submits to, keeps a
password of the tracking URI out of the Job's plain env (the pod reads its credentials from a
Secret), and cancels a Job with its pods (MLflow deletes the Job and leaves them).

Both wait for their run themselves: ``mlflow run`` starts a plugin backend asynchronously (it
waits only for ``local`` and ``kubernetes``). While waiting, SIGTERM or Ctrl-C cancels the run,
which ends KILLED; a run keeps the status its command recorded (MLflow's own check overwrites
KILLED with FAILED, docs/upstream.md); a run that did not finish raises ExecutionException, so
``mlflow run`` exits 1 with one line.

They call names that MLflow does not document (``_get_docker_command``; the Job rendering
``_get_kubernetes_job_definition``, ``_get_run_command`` and ``_load_kube_context`` of
``mlflow.projects.kubernetes``; ``KubernetesSubmittedRun``'s fields): ``require_mlflow`` checks
the version they were written for.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import urllib.parse
from pathlib import Path

import kubernetes
import yaml
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException
from mlflow.projects import kubernetes as mlflow_kubernetes
from mlflow.projects._project_spec import Project
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.backend.local import _get_docker_command
from mlflow.projects.docker import validate_docker_env
from mlflow.projects.submitted_run import SubmittedRun
from mlflow.projects.utils import (
    PROJECT_BUILD_IMAGE,
    PROJECT_DOCKER_ARGS,
    PROJECT_STORAGE_DIR,
    fetch_and_validate_project,
    get_entry_point_command,
    get_or_create_run,
    get_run_env_vars,
    load_project,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENV

from mlflow_project_store.images import build_image
from mlflow_project_store.mlflow_version import version_problem
from mlflow_project_store.project_tools.lifecycle import raise_once_on_signal
from mlflow_project_store.project_tools.tracking import git_source_tags

PR_SET_PDEATHSIG = 1
STOP_SECONDS = 60  # how long a cancelled container has to save its checkpoint
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def require_mlflow(backend: str) -> None:
    problem = version_problem(backend, "mlflow.projects' docker and kubernetes internals")
    if problem:
        raise ExecutionException(problem)


class Interrupted(Exception):
    """SIGTERM or SIGINT while waiting: the run is to be cancelled."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


class StoppedElsewhere(Exception):
    """The run was stopped by someone else (its Job deleted): nothing left to cancel."""


def wait_for(submitted: SubmittedRun) -> SubmittedRun:
    """Wait for ``submitted``; cancel it on SIGTERM or Ctrl-C; end its MLflow run with the
    outcome unless its command already did; raise ExecutionException unless it finished."""
    client = MlflowClient()
    run_id = submitted.run_id
    outcome = "FINISHED"
    with raise_once_on_signal(Interrupted):  # a second signal does not cut the cancel short
        try:
            if not submitted.wait():
                outcome = "FAILED"
        except Interrupted as stop:
            print(f"=== Run (ID '{run_id}') stopped by {stop}: cancelling it ===", flush=True)
            submitted.cancel()
            outcome = "KILLED"
        except StoppedElsewhere as stop:
            print(f"=== Run (ID '{run_id}') stopped: {stop} ===", flush=True)
            outcome = "KILLED"
        status = client.get_run(run_id).info.status
        if status not in TERMINAL:
            client.set_terminated(run_id, outcome)
            status = outcome
    if status != "FINISHED":
        raise ExecutionException(f"Run (ID '{run_id}') ended {status}")
    print(f"=== Run (ID '{run_id}') succeeded ===", flush=True)
    return submitted


class StoreBackend(AbstractBackend):
    """What both backends do around their own ``launch``: fetch and check a ``docker_env``
    project, create its run (tagged ``docker``), end it FAILED if launching fails (MLflow's own
    backends leave it RUNNING), then wait for it."""

    name = ""

    def run(
        self, project_uri, entry_point, params, version, backend_config, tracking_uri, experiment_id
    ):
        require_mlflow(self.name)
        work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        project = load_project(work_dir)
        if not project.docker_env:
            raise ExecutionException(
                f"{self.name} runs docker_env projects; {project_uri} has none: use "
                "--env-manager local, uv or conda with the local backend"
            )
        validate_docker_env(project)
        if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
            raise ExecutionException(
                "no Docker daemon answers (docker info failed): start dockerd or Docker Desktop"
            )
        run = get_or_create_run(
            None, project_uri, experiment_id, work_dir, version, entry_point, params
        )
        tags = {MLFLOW_PROJECT_ENV: "docker", **git_source_tags(work_dir)}  # none in a container
        for key, value in tags.items():
            MlflowClient().set_tag(run.info.run_id, key, value)
        command = get_entry_point_command(
            project, entry_point, params, backend_config[PROJECT_STORAGE_DIR]
        )
        with raise_once_on_signal(Interrupted):
            try:
                submitted = self.launch(work_dir, project, run, command, backend_config)
            except Interrupted as stop:
                MlflowClient().set_terminated(run.info.run_id, "KILLED")
                message = f"Run (ID '{run.info.run_id}') stopped by {stop}"
                raise ExecutionException(message) from None
            except BaseException:
                MlflowClient().set_terminated(run.info.run_id, "FAILED")
                raise
        return wait_for(submitted)

    def launch(
        self, work_dir: str, project: Project, run: Run, command: list[str], config: dict
    ) -> SubmittedRun:
        """Build what the run needs and start ``command`` (MLflow's entry point command)."""
        raise NotImplementedError


def by_name(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """``command`` with each ``-e NAME=value`` as ``-e NAME``, and the values by name."""
    named, values = [], {}
    for before, word in zip(["", *command], command, strict=False):
        if before == "-e" and "=" in word:
            name, _, value = word.partition("=")
            named.append(name)
            values[name] = value
        else:
            named.append(word)
    return named, values


def die_with_parent() -> None:
    """In the docker client: SIGTERM when the process that started it (mlflow run) ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ContainerRun(SubmittedRun):
    """The docker client of one run; cancelling forwards SIGTERM to its container."""

    def __init__(self, run_id: str, process: subprocess.Popen, container: str) -> None:
        super().__init__()
        self._run_id, self.process, self.container = run_id, process, container

    @property
    def run_id(self) -> str:
        return self._run_id

    def wait(self) -> bool:
        return self.process.wait() == 0

    def get_status(self) -> str:
        code = self.process.poll()
        return "RUNNING" if code is None else "FINISHED" if code == 0 else "FAILED"

    def cancel(self) -> None:
        """SIGTERM to the container (docker run forwards it); SIGKILL after STOP_SECONDS."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            subprocess.run(["docker", "kill", self.container], capture_output=True, check=False)
            self.process.wait()


class DockerBackend(StoreBackend):
    """``--backend store-docker``: see the module docstring."""

    name = "store-docker"

    def launch(
        self, work_dir: str, project: Project, run: Run, command: list[str], config: dict
    ) -> SubmittedRun:
        run_id = run.info.run_id
        container = f"mlflow-{run_id}"
        image = build_image(
            work_dir, project.name, project.docker_env["image"], run_id, config[PROJECT_BUILD_IMAGE]
        )
        docker, values = by_name(
            _get_docker_command(
                image=DockerImage(image),
                active_run=run,
                docker_args=config[PROJECT_DOCKER_ARGS],
                volumes=project.docker_env.get("volumes"),
                user_env_vars=project.docker_env.get("environment"),
            )
        )
        argv = [*docker[:3], "--name", container, *docker[3:], *shlex.split(command[0])]
        print(f"=== Running command '{shlex.join(argv)}' in run {run_id} ===", flush=True)
        process = subprocess.Popen(
            argv, cwd=work_dir, env={**os.environ, **values}, preexec_fn=die_with_parent
        )
        return ContainerRun(run_id, process, container)


class DockerImage:
    """What ``_get_docker_command`` reads of an image: its tags."""

    def __init__(self, uri: str) -> None:
        self.tags = [uri]


class JobRun(mlflow_kubernetes.KubernetesSubmittedRun):
    """MLflow's Job handle, cancelled with its pods (``propagationPolicy: Foreground``); a Job
    deleted by someone else ends the wait (MLflow's raises the API's 404)."""

    def wait(self) -> bool:
        try:
            return super().wait()
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
            raise StoppedElsewhere(f"Job {self._job_name} was deleted") from None

    def cancel(self) -> None:
        try:
            self._kube_api.delete_namespaced_job(
                name=self._job_name,
                namespace=self._job_namespace,
                body=kubernetes.client.V1DeleteOptions(propagation_policy="Foreground"),
            )
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:  # gone already
                raise


def kubernetes_config(backend_config: dict, work_dir: str) -> dict:
    """The backend config with its Job template loaded; a relative template path is read
    from the project folder."""
    missing = [k for k in ("kube-job-template-path", "repository-uri") if not backend_config.get(k)]
    if missing:
        raise ExecutionException(f"the backend config names no {' and no '.join(missing)}")
    template = Path(work_dir, backend_config["kube-job-template-path"])
    try:
        job = yaml.safe_load(template.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExecutionException(f"cannot read the Job template {template}: {exc}") from None
    return {**backend_config, "kube-job-template": job}


class KubernetesBackend(StoreBackend):
    """``--backend store-kubernetes``: see the module docstring."""

    name = "store-kubernetes"

    def launch(
        self, work_dir: str, project: Project, run: Run, command: list[str], config: dict
    ) -> SubmittedRun:
        run_id = run.info.run_id
        kube = kubernetes_config(config, work_dir)
        job = kube["kube-job-template"]
        context = kube.get("kube-context") or "the current context"
        namespace = job["metadata"].get("namespace", "default")
        print(f"=== Submitting to kube context {context}, namespace {namespace} ===", flush=True)
        image = build_image(
            work_dir,
            kube["repository-uri"],
            project.docker_env["image"],
            run_id,
            config[PROJECT_BUILD_IMAGE],
        )
        digest = mlflow_kubernetes.push_image_to_registry(image)
        job = mlflow_kubernetes._get_kubernetes_job_definition(
            project.name,
            image,
            digest,
            mlflow_kubernetes._get_run_command(command),
            get_run_env_vars(run_id=run_id, experiment_id=run.info.experiment_id),
            job,
        )
        without_uri_password(job)
        mlflow_kubernetes._load_kube_context(context=kube.get("kube-context"))
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        kubernetes.client.BatchV1Api().create_namespaced_job(namespace=namespace, body=job)
        return JobRun(run_id, name, namespace)


def without_uri_password(job: dict) -> None:
    """Take a ``user:password@`` out of the pod's MLFLOW_TRACKING_URI: a Job's plain env is
    readable by whoever can read the Job. The pod takes its credentials from the Secret that
    the template names (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."""
    for item in job["spec"]["template"]["spec"]["containers"][0].get("env", []):
        value = item.get("value")
        if item["name"] == "MLFLOW_TRACKING_URI" and value:
            parts = urllib.parse.urlsplit(value)
            if parts.password is not None:
                host = parts.netloc.rpartition("@")[2]
                item["value"] = urllib.parse.urlunsplit(parts._replace(netloc=host))
                print(
                    "=== The pod's MLFLOW_TRACKING_URI carries no password: it reads "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from its Secret ===",
                    flush=True,
                )
