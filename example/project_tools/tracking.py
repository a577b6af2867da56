"""A quick look at the tracking server before any work.

MLflow's HTTP client retries a refused connection for minutes (the long retry that lets a run
survive a server restarted mid-training). At start that only hides a typo or a server that was
never started, so each entry point and tool asks the server once, briefly, and stops with one
line naming the URI when it does not answer.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import mlflow
from mlflow.tracking.request_header.abstract_request_header_provider import (
    RequestHeaderProvider,
)

from project_tools.cli import OneLineParser, fail

# Seconds to wait for the server's /health answer at start.
START_TIMEOUT = 10.0


def server_problem(uri: str, timeout: float = START_TIMEOUT) -> str | None:
    """Why the HTTP tracking server at ``uri`` cannot be used now, or None when it answers.

    Non-HTTP stores (SQLite, a folder, Databricks) are not checked here.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    url = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):  # basic auth: the server is there
            return None
        return f"answered HTTP {error.code} on /health"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"did not answer ({reason})"


def require_tracking_server(prog: str, uri: str | None = None) -> None:
    """Stop ``prog`` with one line (exit 1) when the tracking server does not answer.

    ``uri`` defaults to the tracking URI that MLflow would use (``MLFLOW_TRACKING_URI``).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    problem = server_problem(uri)
    if problem:
        fail(
            prog,
            f"tracking server {uri} {problem}; start it (make server) or set "
            "MLFLOW_TRACKING_URI to a running one",
            status=1,
        )


class ServerCheckAtStart(RequestHeaderProvider):
    """The ``mlflow.request_header_provider`` entry point: in the ``mlflow`` command (``mlflow
    run``, ``mlflow models serve``), the first request to the tracking server checks it once, so
    that a server that is down at start costs seconds and one line, not minutes of retries.
    Later requests keep MLflow's long retry for a server that goes away mid-run."""

    checked: ClassVar[set[str]] = set()

    def in_context(self) -> bool:
        uri = mlflow.get_tracking_uri()
        if Path(sys.argv[0]).name == "mlflow" and uri not in self.checked:
            self.checked.add(uri)
            require_tracking_server("mlflow", uri)
        return False

    def request_headers(self) -> dict[str, str]:
        return {}


def main(argv: list[str] | None = None) -> None:
    """``python -m project_tools.tracking [--prog NAME] [URI]``: the check alone (make targets)."""
    parser = OneLineParser(prog="tracking", description=main.__doc__)
    parser.add_argument("uri", nargs="?", help="default: the URI MLflow would use")
    parser.add_argument("--prog", default="make", help="the name the error line starts with")
    args = parser.parse_args(argv)
    require_tracking_server(args.prog, args.uri)


if __name__ == "__main__":
    main()
