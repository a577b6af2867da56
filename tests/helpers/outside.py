"""What a user outside this repository has: an mlflow of their own, and the store's git URL.

- :func:`make_launcher`: a virtualenv holding only mlflow and uv, at this repository's pins
  (no install of the repository, none of its plugins), whose ``mlflow`` runs projects that
  were exported or fetched from git, each in the environment it declares.
- :func:`git_daemon`: ``git daemon`` (Debian's git package) serving a bare clone of this
  repository's committed HEAD on loopback, as a team's git server serves the store.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from mlflow_project_store.layout import ROOT
from mlflow_project_store.ready_for_mlflow.servers import HOST, free_port, start, stop

VENV_BIN = Path(sys.executable).parent


def pin(name: str) -> str:
    """``name==version`` as requirements.txt or pyproject.toml pins it."""
    for path in (ROOT / "requirements.txt", ROOT / "pyproject.toml"):
        if found := re.search(rf"(?m)^\W*({re.escape(name)}==[\w.]+)", path.read_text()):
            return found.group(1)
    raise AssertionError(f"{name} is not pinned in requirements.txt or pyproject.toml")


def make_launcher(folder: Path) -> Path:
    """A virtualenv in ``folder`` with only mlflow and uv; returns its bin folder."""
    uv = str(VENV_BIN / "uv")
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(folder)], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(folder / "bin" / "python"),
            pin("mlflow"),
            pin("uv"),
        ],
        check=True,
        timeout=900,
    )
    return folder / "bin"


class GitStore(NamedTuple):
    url: str  # git://host:port/store.git
    commit: str  # the HEAD it serves


@contextmanager
def git_daemon(workdir: Path) -> Iterator[GitStore]:
    """A bare clone of this repository's HEAD in ``workdir``, served by ``git daemon``."""
    bare = workdir / "store.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(bare)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(bare), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    daemon = start(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={workdir}",
            f"--listen={HOST}",
            f"--port={port}",
            str(workdir),
        ],
        workdir / "git-daemon.log",
    )
    url = f"git://{HOST}:{port}/store.git"
    try:
        for _ in range(50):  # until it answers
            probe = subprocess.run(["git", "ls-remote", url], capture_output=True, check=False)
            if probe.returncode == 0:
                break
            subprocess.run(["sleep", "0.2"], check=False)
        yield GitStore(url, commit)
    finally:
        stop(daemon)
