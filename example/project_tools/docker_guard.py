"""Stop a containerized run before training when its model would be lost or cannot be written.

MLflow's Docker backend mounts only the run's artifact folder into the container, but MLflow 3
writes a logged model under the experiment's artifact root (``<root>/models/m-...``). With a
local artifact store that folder is then inside the container, and the model goes with it when
the container ends, while the run still ends FINISHED. In a Kubernetes pod, a local artifact
root is the pod's own disk. Each entry point calls :func:`require_kept_artifacts` first, so
such a run fails in a second with one line that says what to add.

Outside a container, or with artifacts on a tracking server or in an object store, it does
nothing. It reads the mounts (``/proc/self/mountinfo``), not ``/.dockerenv``: a development
machine that is itself a container keeps its files, while MLflow's Docker backend is recognized
by the run's artifact folder (or the SQLite store) being a mount of its own.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from .cli import fail

MOUNTINFO = Path("/proc/self/mountinfo")
# Docker, containerd and Kubernetes bind-mount these into every container.
CONTAINER_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points(mountinfo: Path = MOUNTINFO) -> list[str]:
    """The mount points of this process (field 5 of ``/proc/self/mountinfo``), or [] when
    the file cannot be read (not Linux)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    return [
        _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
        for line in lines
        if len(line.split()) > 4
    ]


def mount_of(path: str, mounts: list[str]) -> str:
    """The mount point that holds ``path``: the longest mount point above or at it."""
    path = os.path.realpath(path)
    inside = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(inside, key=len, default="/")


def local_path(uri: str | None) -> str | None:
    """The local folder of a ``file:`` URI or plain path; None for a server or object store."""
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme == "" or re.fullmatch(r"[A-Za-z]", parsed.scheme):
        return uri
    return None


def artifact_problem(
    run_artifacts: str,
    experiment_root: str,
    mounts: list[str],
    in_pod: bool,
    store: str | None = None,
) -> str | None:
    """Why a model logged under ``experiment_root`` would be lost or the store cannot be
    written, or None. ``store`` is the SQLite file of the tracking store, if any."""
    if not mounts:
        return None
    run_dir, root = local_path(run_artifacts), local_path(experiment_root)
    # MLflow's Docker backend mounts the run's local artifact folder, and a SQLite store's
    # file, each as a mount of its own.
    mounted = [p for p in (run_dir, store) if p and mount_of(p, mounts) == os.path.realpath(p)]
    if not (mounted or in_pod):
        return None
    where = "this container" if mounted else "this pod"
    if root is not None and mount_of(os.path.join(root, "models"), mounts) == "/":
        return (
            f"the model would be lost: MLflow writes it under {root}/models, which is not "
            f"mounted into {where}; add -A v={root}:{root} to `mlflow run` (or mount the "
            "store's mlruns folder), or record into a tracking server "
            "(MLFLOW_TRACKING_URI=http://...)"
        )
    # SQLite writes a journal beside its file: that folder must be writable too.
    needed = [run_dir, root, *([store, os.path.dirname(store)] if store else [])]
    for path in filter(None, needed):
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return (
                f"the mounted store {path} is not writable by user {os.getuid()} in "
                f"{where}: add -A user=$(id -u):$(id -g) to `mlflow run`"
            )
    return None


def require_kept_artifacts(prog: str) -> None:
    """Stop ``prog`` with one line (exit 2) when this run's model would be lost.

    Reads the run that ``mlflow run`` started (``MLFLOW_RUN_ID``); without one it does nothing.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    mounts = mount_points()
    if not run_id or not set(CONTAINER_FILES) & set(mounts):
        return  # not a container: nothing to ask the tracking store
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    in_pod = "KUBERNETES_SERVICE_HOST" in os.environ
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    problem = artifact_problem(
        run.info.artifact_uri, experiment.artifact_location, mounts, in_pod, store
    )
    if problem:
        fail(prog, problem)
