"""A quick look at the tracking server before any work, and where a run's code came from.

MLflow's HTTP client retries a refused connection for minutes (the long retry that lets a run
survive a server restarted mid-training). At start that only hides a typo or a server that was
never started, so each entry point and tool asks the server once, briefly, and stops with one
line naming the URI (its password masked) when it does not answer.

`mlflow run` records a run's git commit, but not whether the tree had changes that the commit
does not hold: :func:`record_source` adds that, so that `make reproduce` can tell whether the
commit re-creates the run.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import mlflow

from .cli import fail
from .redaction import redact

# Seconds to wait for the server's /health answer at start.
START_TIMEOUT = 10.0
# MLflow's name for it (mlflow.utils.mlflow_tags.MLFLOW_GIT_DIRTY), which `mlflow run` leaves unset.
DIRTY_TAG = "mlflow.source.git.dirty"


def shown_store() -> str:
    """The tracking store in use, as printed: any password in its URI masked."""
    return redact(mlflow.get_tracking_uri())


# An API call that a basic-auth server answers only for valid credentials (/health it answers
# to anyone).
AUTHENTICATED_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"


def server_problem(uri: str, timeout: float = START_TIMEOUT) -> str | None:
    """Why the HTTP tracking server at ``uri`` cannot be used now, or None when it answers and
    takes the credentials that MLflow's client would send. Non-HTTP stores (SQLite, a folder,
    Databricks) are not checked here. MLflow's TLS settings are honoured: the CA bundle of
    ``MLFLOW_TRACKING_SERVER_CERT_PATH``, ``MLFLOW_TRACKING_INSECURE_TLS=true``."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(
            request_to(uri, AUTHENTICATED_PATH), timeout=timeout, context=tls_context()
        ):
            return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return refused(uri, error.code)
        return f"answered HTTP {error.code} on {AUTHENTICATED_PATH.partition('?')[0]}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (
                f"has a TLS certificate this machine does not trust ({reason.verify_message}): "
                "set MLFLOW_TRACKING_SERVER_CERT_PATH to its CA bundle"
            )
        return f"did not answer ({reason})"


def tls_context() -> ssl.SSLContext | None:
    """What MLflow's client would trust: its CA bundle setting, or nothing when told so."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cafile := os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        return ssl.create_default_context(cafile=cafile)
    return None


def credentials(uri: str) -> tuple[str, str] | None:
    """(user, password) as MLflow's client sends them: from the environment, else the URI."""
    parts = urllib.parse.urlsplit(uri)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or parts.username
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or parts.password
    if user is None:
        return None
    return urllib.parse.unquote(user), urllib.parse.unquote(password or "")


def refused(uri: str, code: int) -> str:
    given = credentials(uri)
    if given is None:
        return (
            f"asks for credentials (HTTP {code}): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD"
        )
    return (
        f"refused the credentials of user {given[0]!r} (HTTP {code}): check "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def request_to(uri: str, path: str) -> urllib.request.Request:
    """GET ``uri`` + ``path`` with the credentials MLflow's client would send as basic auth (a
    ``user:password@`` in the URI is not left in it, where urllib would take it for the host)."""
    parts = urllib.parse.urlsplit(uri.rstrip("/"))
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)) + path)
    if given := credentials(uri):
        token = base64.b64encode(":".join(given).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def require_tracking_server(prog: str, uri: str | None = None) -> None:
    """Stop ``prog`` with one line (exit 1) when the tracking server does not answer, or
    refuses the credentials.

    ``uri`` defaults to the tracking URI that MLflow would use (``MLFLOW_TRACKING_URI``); the
    line shows it with its password masked.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    problem = server_problem(uri)
    if problem:
        answered = "credentials" in problem or "MLFLOW_TRACKING_SERVER_CERT_PATH" in problem
        start_it = "; start it (make server) or set MLFLOW_TRACKING_URI to a running one"
        hint = "" if answered else start_it
        fail(prog, f"tracking server {redact(uri)} {problem}{hint}", status=1)


def git_source_tags(folder: str = ".") -> dict[str, str]:
    """Whether the git repository holding ``folder`` has uncommitted changes (untracked files
    too); {} outside a git work tree (a container, an exported copy that is not a repository)
    or without git."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if status.returncode != 0:
        return {}
    return {DIRTY_TAG: "true" if status.stdout.strip() else "false"}


def record_source() -> None:
    """Tag the active run with :func:`git_source_tags` of the current folder (where `mlflow run`
    starts the entry point: the project folder)."""
    if tags := git_source_tags():
        mlflow.set_tags(tags)
