"""Trials as MLflow project runs: each environment built once, then every trial launched.

``prepare`` refuses a param that the trials' entry point does not declare (in its MLproject),
then builds what the trials share before the first one starts, with the same MLflow functions
(and so the same cache keys) that ``mlflow run`` uses:

- ``--env-manager uv|virtualenv``: ``mlflow.utils.virtualenv._create_virtualenv`` into the
  environment folder ``mlflow run`` would use; ``conda``: ``get_or_create_conda_env``. Each
  trial then runs with the same env manager, and MLflow finds the environment ready and only
  activates it, so parallel trials never race to build it (mlflow/mlflow#2201).
- A ``docker_env`` project with ``build_image``: ``mlflow.projects.docker.build_docker_image``
  builds the image (the project's code on its dependency image) once; on Kubernetes it is
  pushed once too. The trials run a copy of the MLproject whose ``docker_env`` image is that
  image, with ``build_image=False``, so MLflow runs it as it is (on Kubernetes MLflow still
  pushes it for each trial, which uploads nothing: the registry has every layer).

``launch`` starts one trial with ``mlflow.projects.run(..., synchronous=False)``, which returns
at once with a ``SubmittedRun`` that can be polled and cancelled: locally a ``mlflow run``
process in its own process group, on Kubernetes a Job.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow.projects
import yaml
from mlflow.projects import _parse_kubernetes_config, env_type
from mlflow.projects import docker as mlflow_docker
from mlflow.projects import kubernetes as mlflow_kubernetes
from mlflow.projects._project_spec import Project
from mlflow.projects.submitted_run import SubmittedRun
from mlflow.projects.utils import fetch_and_validate_project, load_project
from mlflow.utils import env_manager as em
from mlflow.utils.conda import get_or_create_conda_env
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.virtualenv import (
    _create_virtualenv,
    _get_mlflow_virtualenv_root,
    _get_virtualenv_name,
)

from . import BACKENDS

LOCAL, KUBERNETES = BACKENDS
# The mlflow version whose undocumented names (above, and mlflow.projects' internals) this module
# calls: prepare refuses another one in one line rather than fail inside MLflow.
WRITTEN_FOR = "3.17.2"
ENTRY_POINT = "main"
EXPERIMENT_NAME_VAR = "MLFLOW_EXPERIMENT_NAME"
# The prefix of MLflow's log lines ("2026/01/31 12:00:00 INFO mlflow.cli: ..."), and lines that
# say nothing about why a trial failed: the line `mlflow run` ends a failed run with, and
# progress bars.
MLFLOW_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ [\w.]+: ")
NOT_A_REASON = re.compile(r"=== Run \(ID '\w+'\) failed ===|\d+%\|")


class TrialSetupError(Exception):
    """The trials cannot start (bad project, backend config, environment or image)."""


@dataclass(frozen=True)
class Target:
    """What every trial runs and where: the project (a pinned copy when an image was built
    once), the backend and its settings."""

    uri: str
    source: str
    backend: str = LOCAL
    env_manager: str = em.LOCAL
    backend_config: dict = field(default_factory=dict)
    docker_args: dict = field(default_factory=dict)
    docker: bool = False  # trials run in local Docker containers


def prepare(
    project: str,
    trial_params: dict,
    searched: dict,
    backend: str,
    env_manager: str,
    build_image: bool,
    backend_config: str,
    docker_args: dict,
    run_id: str,
    workdir: Path,
) -> Target:
    """Fetch the project, check the params a trial gets, build its environment or image once,
    and say how to run trials.

    ``trial_params`` are the fixed params of every trial, ``searched`` those the search sets,
    at some value (MLflow checks that the project needs no others); ``run_id`` (the sweep's run)
    is tagged with the image that was built.
    """
    if mlflow.__version__ != WRITTEN_FOR:
        raise TrialSetupError(
            f"the sweep's trials were written for mlflow {WRITTEN_FOR} (they call names MLflow "
            f"does not document); this environment has {mlflow.__version__}: pin "
            f"mlflow=={WRITTEN_FOR} in conda.yaml"
        )
    try:
        work_dir = fetch_and_validate_project(project, None, ENTRY_POINT, trial_params | searched)
        spec = load_project(work_dir)
    except Exception as exc:  # MLflow raises several kinds; each one means "no such project"
        raise TrialSetupError(f"project {project!r}: {first_line(exc)}") from exc
    check_params(project, entry_point_params(Path(work_dir)), trial_params, list(searched))
    if backend == KUBERNETES:
        if not spec.docker_env:
            raise TrialSetupError(f"backend kubernetes runs docker_env projects; {project} is not")
        config = kube_config(backend_config, Path(work_dir))
        target = Target(work_dir, work_dir, KUBERNETES, em.LOCAL, backend_config=config)
        if not build_image:
            return target
        image = build_image_once(work_dir, spec, config["repository-uri"], run_id)
        mlflow_kubernetes.push_image_to_registry(image)
        return pinned(target, image, workdir)
    if spec.docker_env:
        target = Target(work_dir, work_dir, LOCAL, em.LOCAL, docker_args=docker_args, docker=True)
        if not build_image:
            return target
        return pinned(target, build_image_once(work_dir, spec, spec.name, run_id), workdir)
    build_environment(spec, Path(work_dir), env_manager)
    return Target(work_dir, work_dir, LOCAL, env_manager)


def mlproject_file(folder: Path) -> Path:
    """The MLproject file of the project in ``folder`` (MLflow takes any case of the name)."""
    return next(path for path in folder.iterdir() if path.name.lower() == "mlproject")


def entry_point_params(folder: Path) -> list[str]:
    """The params that the trials' entry point of the project in ``folder`` declares, read from
    its MLproject (MLflow has already checked the file and that the entry point is there)."""
    content = yaml.safe_load(mlproject_file(folder).read_text())
    return list(content["entry_points"][ENTRY_POINT].get("parameters") or {})


def check_params(
    project: str, declared: list[str], trial_params: dict, searched: list[str]
) -> None:
    """Refuse a param that the trials' entry point does not declare, before any trial.

    MLflow would pass it to the entry point's command as ``--name value`` (its rule for
    undeclared params), which a command like mnist-conda's refuses: every trial would fail
    the same way, one after the other.
    """
    where = f"entry point {ENTRY_POINT!r} of project {project!r}"
    if missing := [name for name in searched if name not in declared]:
        raise TrialSetupError(
            f"the search sets {', '.join(map(repr, missing))}, which {where} does not take: "
            f"expected a project whose entry point takes {', '.join(searched)}"
        )
    if unknown := [name for name in trial_params if name not in declared]:
        settable = sorted(name for name in declared if name not in searched)
        raise TrialSetupError(
            f"trial_params sets {', '.join(map(repr, unknown))}, which {where} does not take: "
            f"expected one of {', '.join(settable) or 'none (it takes only the searched ones)'}"
        )


def build_environment(spec: Project, work_dir: Path, env_manager: str) -> None:
    """Build the project's environment as ``mlflow run --env-manager X`` would (see
    mlflow.projects.backend.local), into the same place, under the same name."""
    if env_manager == em.LOCAL:
        return
    print(f"Building the {env_manager} environment of {work_dir} once, before the trials")
    try:
        if env_manager == em.CONDA:
            get_or_create_conda_env(spec.env_config_path)
            return
        if spec.env_type == env_type.CONDA:
            python_env = _PythonEnv.from_conda_yaml(spec.env_config_path)
        elif spec.env_config_path:
            python_env = _PythonEnv.from_yaml(spec.env_config_path)
        else:
            python_env = _PythonEnv()
        env_dir = Path(_get_mlflow_virtualenv_root()) / _get_virtualenv_name(python_env, work_dir)
        _create_virtualenv(
            local_model_path=work_dir,
            python_env=python_env,
            env_dir=env_dir,
            env_manager=env_manager,
        )
    except Exception as exc:  # conda, uv or pip failing, in their own words
        raise TrialSetupError(f"building the {env_manager} environment: {first_line(exc)}") from exc


def build_image_once(work_dir: str, spec: Project, repository_uri: str, run_id: str) -> str:
    """Build the project's image (its folder on its docker_env image) as ``mlflow run
    --build-image`` does; return the image's tag."""
    print(f"Building the image of {work_dir} once, before the trials")
    try:
        mlflow_docker.validate_docker_env(spec)
        mlflow_docker.validate_docker_installation()
        mlflow_docker.build_docker_image(
            work_dir=work_dir,
            repository_uri=repository_uri,
            base_image=spec.docker_env["image"],
            run_id=run_id,
            build_image=True,
            docker_auth=None,
        )
    except Exception as exc:  # Docker's errors, in its words
        raise TrialSetupError(f"building the image: {first_line(exc)}") from exc
    return mlflow_docker._get_docker_image_uri(repository_uri=repository_uri, work_dir=work_dir)


def pinned(target: Target, image: str, workdir: Path) -> Target:
    """``target`` running a copy of its MLproject whose docker_env image is ``image``.

    The image holds the project's code already, so the copy needs nothing else.
    """
    source = Path(target.uri)
    mlproject = mlproject_file(source)
    content = yaml.safe_load(mlproject.read_text())
    content["docker_env"]["image"] = image
    folder = workdir / source.name
    folder.mkdir(parents=True)
    (folder / mlproject.name).write_text(yaml.safe_dump(content, sort_keys=False))
    return replace(target, uri=str(folder))


def kube_config(path: str, project: Path) -> dict:
    """The Kubernetes backend config at ``path``, its Job template path made absolute.

    A relative template path is read from the trial project's folder, where the store keeps
    the template beside the config, else as MLflow reads it (from the current folder).
    """
    if not path:
        raise TrialSetupError("backend kubernetes needs backend_config (a kubernetes_config.json)")
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TrialSetupError(f"backend_config {path!r}: {first_line(exc)}") from exc
    template = Path(config.get("kube-job-template-path", ""))
    if not template.is_absolute() and (project / template).is_file():
        template = project / template
    config["kube-job-template-path"] = str(template.absolute())
    try:
        _parse_kubernetes_config(config)  # MLflow's own checks, now rather than per trial
    except Exception as exc:
        raise TrialSetupError(f"backend_config {path!r}: {first_line(exc)}") from exc
    return config


def launch(
    target: Target,
    params: dict,
    experiment_id: str,
    run_name: str,
    log: Path,
    container: str | None = None,
) -> SubmittedRun:
    """Start one trial; MLflow creates its run (tagged with the active run as its parent).

    ``container`` names the trial's Docker container, so that it can be removed when the
    trial is stopped (stopping ``docker run`` does not stop the container).
    """
    docker_args = dict(target.docker_args)
    if container:
        docker_args["name"] = container
    with output_to(log), without_env(EXPERIMENT_NAME_VAR):
        return mlflow.projects.run(
            target.uri,
            entry_point=ENTRY_POINT,
            parameters=params,
            docker_args=docker_args or None,
            experiment_id=experiment_id,
            backend=target.backend,
            backend_config=copy.deepcopy(target.backend_config),  # MLflow adds keys to it
            synchronous=False,
            run_name=run_name,
            env_manager=target.env_manager,
            build_image=False,
        )


@contextmanager
def without_env(name: str) -> Iterator[None]:
    """Leave ``name`` out of the environment meanwhile.

    MLflow gives a local trial's `mlflow run` the experiment as MLFLOW_EXPERIMENT_ID; an
    MLFLOW_EXPERIMENT_NAME inherited from the sweep's own environment would make it refuse
    to start ("Specify only one of 'experiment-name' or 'experiment-id'").
    """
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60, check=False)


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at ``path`` meanwhile.

    A process that MLflow starts for a trial inherits them, so each trial's output goes to its
    own log instead of interleaving with the other trials' on the console.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (log, *saved):
            os.close(fd)


def failure_reason(log: Path) -> str:
    """The last line of a trial's log that says why it failed."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    for line in reversed(lines):
        line = MLFLOW_LOG_PREFIX.sub("", line).strip()
        if line and not NOT_A_REASON.search(line):
            return line.strip("= ")
    return "no output"


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip() or type(exc).__name__
    return text.splitlines()[0]
