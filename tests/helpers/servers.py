"""The servers only the tests (and benchmarks/tracking_load) start: a throwaway PostgreSQL
cluster, and the image registry of `make registry` on a free port, for the session fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow_project_store.ready_for_mlflow.servers import HOST, free_port, start_registry, stop


def postgres_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (PATH first, then Debian's versioned folders)."""
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("pg_ctl")).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@contextmanager
def postgres(bin_dir: Path, user: str = "mlflow", password: str = "local-test") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields a SQLAlchemy URI.

    PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user.
    """
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="mlflow-pg-"))
    port = free_port()
    try:
        (data / "pw").write_text(password)
        if as_user:
            shutil.chown(data, "postgres")
            shutil.chown(data / "pw", "postgres")
        cluster = data / "cluster"
        run = [*as_user, str(bin_dir / "initdb"), "-D", str(cluster), "-U", user]
        subprocess.run(
            [*run, f"--pwfile={data / 'pw'}", "--auth=scram-sha-256"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-c listen_addresses={HOST} -p {port} -k {data}"
        pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(cluster), "-l", str(data / "log")]
        subprocess.run([*pg_ctl, "-o", options, "-w", "-t", "60", "start"], check=True, timeout=90)
        try:
            uri = f"postgresql+psycopg2://{user}:{password}@{HOST}:{port}/postgres"
            yield uri
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=False, timeout=60)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def docker_registry(workdir: Path, storage: Path) -> Iterator[str]:
    """:func:`start_registry` on a free port; yields its address, ``host:port``."""
    port = free_port()
    process = start_registry(port, storage, workdir)
    try:
        yield f"{HOST}:{port}"
    finally:
        stop(process)
