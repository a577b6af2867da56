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
The provider itself adds no tag.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider

# Environment variables whose value is a credential (matched anywhere in the name).
SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|SESSION_KEY|PRIVATE_KEY|API_KEY|CONNECTION_STRING"
    r"|CREDENTIAL",
    re.IGNORECASE,
)
# user:password@ in a URL (a tracking URI or a database URI).
URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://[^/@\s:]+):[^/@\s]+@")
# Files that hold credentials: never copied into an image (the .gitignore patterns).
SECRET_FILES = (".env", ".env.*", "*.env", "basic_auth.ini", "secrets-*.yaml", ".netrc")
# Templates that hold no credential (kept in git on purpose).
TEMPLATE_FILES = (".env.example", "*.example", "*.example.*")
MASK = "***"


def secret_values(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of credential variables, longest first (a value inside another is masked
    with it). Values under 4 characters are not masked: they would mask ordinary text."""
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """``text`` with every credential value of ``environ`` and every URL password masked."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return URL_PASSWORD.sub(rf"\g<scheme>:{MASK}@", text)


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


def _guard(docker) -> None:
    if not getattr(docker.build_docker_image, "refusing", False):
        docker.build_docker_image = _refusing_secret_files(docker.build_docker_image)


class _GuardOnImport(importlib.abc.MetaPathFinder):
    """Wraps MLflow's Docker module when it is imported: this module is loaded while
    ``import mlflow`` is still running, too early to import it here."""

    def find_spec(self, name, path, target=None):  # type: ignore[override]
        if name != DOCKER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            execute(module)
            _guard(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Install both guards in this process (once)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacting", False):
        logging.setLogRecordFactory(_redacting(factory))
    if DOCKER_MODULE in sys.modules:
        _guard(sys.modules[DOCKER_MODULE])
    elif not any(isinstance(f, _GuardOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _GuardOnImport())


class SecretsGuard(RunContextProvider):
    """The ``mlflow.run_context_provider`` entry point: loading it installs the guards."""

    def in_context(self) -> bool:
        return False

    def tags(self) -> dict[str, str]:
        return {}


install()
