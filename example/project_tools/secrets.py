"""Keep credentials out of what `mlflow run` prints and out of the images it builds.

Two things MLflow 3.17 does on its own in the process that runs `mlflow run`:

- Its Docker backend hands credentials to the container as ``docker run -e NAME=VALUE`` (the
  S3 keys for an ``s3://`` artifact root, whatever ``docker_env.environment`` or ``-A env``
  names) and logs that whole command at INFO, so the values reach the terminal and CI logs.
- ``--build-image`` copies the whole project folder into the image (``shutil.copytree``,
  no ``.dockerignore``), so a ``.env`` dropped there is baked into an image that may be pushed.

MLflow imports every ``mlflow.run_context_provider`` plugin when it starts (``import mlflow``
loads the run-context registry), so this module, declared there in ``pyproject.toml``, is
loaded by every ``mlflow`` command of an environment where this repository is installed (a
raw ``mlflow run`` too, and ``make run-docker`` / ``make run-k8s``). On import it installs
:func:`redact` as a log-record factory (every logger of the process, the command line of
``docker run`` included, prints ``NAME=***`` for a credential) and refuses to build an image
from a folder that holds a credential file (:data:`SECRET_FILES`), with one line, the run FAILED.
The provider itself adds no tag. It also applies ``project_tools.lifecycle.guard_mlflow_run``:
SIGTERM cancels ``mlflow run``'s run as Ctrl-C does (a Docker container included).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider

from project_tools.lifecycle import guard_mlflow_run
from project_tools.redaction import redact

# Files that hold credentials: never copied into an image (the .gitignore patterns).
SECRET_FILES = (".env", ".env.*", "*.env", "basic_auth.ini", "secrets-*.yaml", ".netrc")
# Templates that hold no credential (kept in git on purpose).
TEMPLATE_FILES = (".env.example", "*.example", "*.example.*")


def secret_files(folder: Path) -> list[Path]:
    """Credential files under ``folder`` (links followed, as MLflow's copy follows them)."""
    found = []
    for directory, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__", "mlruns")]
        for name in filenames:
            secret = any(fnmatch.fnmatch(name, p) for p in SECRET_FILES)
            if secret and not any(fnmatch.fnmatch(name, p) for p in TEMPLATE_FILES):
                found.append(Path(directory, name))
    return sorted(found)


def _redacting(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    @functools.wraps(factory)
    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if getattr(record, "redacted", False):
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it as it would have
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        record.redacted = True
        return record

    make_record.redacting = True  # type: ignore[attr-defined]
    return make_record


def _refusing_secret_files(build: Callable) -> Callable:
    """Wrap MLflow's ``build_docker_image``: a folder with a credential file is not built."""

    @functools.wraps(build)
    def build_docker_image(work_dir, repository_uri, base_image, run_id, build_image, *a, **kw):
        found = secret_files(Path(work_dir)) if build_image else []
        if found:
            from mlflow.exceptions import ExecutionException
            from mlflow.tracking import MlflowClient

            MlflowClient().set_terminated(run_id, "FAILED")
            raise ExecutionException(
                f"{found[0]} holds credentials and --build-image would copy it into the image "
                f"(MLflow ignores .dockerignore): move it out of {work_dir}"
            )
        return build(work_dir, repository_uri, base_image, run_id, build_image, *a, **kw)

    build_docker_image.refusing = True  # type: ignore[attr-defined]
    return build_docker_image


DOCKER_MODULE = "mlflow.projects.docker"
PROJECTS_MODULE = "mlflow.projects"


def _guard(docker) -> None:
    if not getattr(docker.build_docker_image, "refusing", False):
        docker.build_docker_image = _refusing_secret_files(docker.build_docker_image)


class _GuardOnImport(importlib.abc.MetaPathFinder):
    """Applies ``guard`` to MLflow's module ``name`` when it is imported: this module is loaded
    while ``import mlflow`` is still running, too early to import it here."""

    def __init__(self, name: str, guard: Callable) -> None:
        self.name = name
        self.guard = guard

    def find_spec(self, name, path, target=None):  # type: ignore[override]
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            execute(module)
            self.guard(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _guard_module(name: str, guard: Callable) -> None:
    """``guard(module)`` now if ``name`` is imported already, else when it is."""
    if name in sys.modules:
        guard(sys.modules[name])
    elif not any(isinstance(f, _GuardOnImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _GuardOnImport(name, guard))


def install() -> None:
    """Install the guards in this process (once)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacting", False):
        logging.setLogRecordFactory(_redacting(factory))
    _guard_module(DOCKER_MODULE, _guard)
    _guard_module(PROJECTS_MODULE, guard_mlflow_run)


class SecretsGuard(RunContextProvider):
    """The ``mlflow.run_context_provider`` entry point: loading it installs the guards."""

    def in_context(self) -> bool:
        return False

    def tags(self) -> dict[str, str]:
        return {}


install()
