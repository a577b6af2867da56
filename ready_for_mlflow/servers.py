"""Local servers on loopback: an S3 endpoint (moto), PostgreSQL, `mlflow server`.

Every process starts in its own process group and is stopped with its children in teardown.
Only the *server* gets S3 credentials: clients reach artifacts through the server's proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3


VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
FAKE_S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "local-test-key",
    "AWS_SECRET_ACCESS_KEY": "local-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_CLIENT_VARS = ("MLFLOW_S3_ENDPOINT_URL",)
# The server's background job runners (huey consumers, for GenAI jobs) are not needed here
# and cost CPU time on a 2-core machine.
NO_JOB_RUNNERS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in a new session (its own process group), output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group (server workers included), SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Wait until ``url`` answers (any HTTP status), or fail with the server's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s: {tail(log)}")


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def client_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """The environment of a client that holds no S3 endpoint and no AWS credential at all."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in S3_CLIENT_VARS
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | {"MLFLOW_TRACKING_URI": tracking_uri} | extra


@dataclass(frozen=True)
class S3:
    """A local S3 endpoint with one bucket."""

    endpoint: str
    bucket: str

    @property
    def server_env(self) -> dict[str, str]:
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, **FAKE_S3_KEYS}

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=FAKE_S3_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name=FAKE_S3_KEYS["AWS_DEFAULT_REGION"],
        )

    def object_keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, as the S3 API lists them."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def moto_s3(workdir: Path, bucket: str = "mlflow") -> Iterator[S3]:
    """moto's S3 server on a free loopback port, with ``bucket`` created."""
    port = free_port()
    log = workdir / "moto.log"
    process = start([str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(port)], log)
    try:
        endpoint = f"http://{HOST}:{port}"
        wait_http(f"{endpoint}/moto-api/", process, log, timeout=30)
        s3 = S3(endpoint, bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        stop(process)


@dataclass(frozen=True)
class TrackingServer:
    url: str
    artifacts: str  # s3://bucket/prefix
    log: Path


@contextmanager
def mlflow_server(
    workdir: Path,
    backend_store_uri: str,
    s3: S3,
    prefix: str = "artifacts",
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Iterator[TrackingServer]:
    """``mlflow server`` with proxied artifacts in ``s3``; only this process holds S3 keys."""
    port = free_port()
    log = workdir / f"mlflow-server-{port}.log"
    artifacts = f"s3://{s3.bucket}/{prefix}"
    command = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        *extra_args,
    ]
    env = {**os.environ, **s3.server_env, **NO_JOB_RUNNERS, **(extra_env or {})}
    process = start(command, log, env)
    try:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/health", process, log)
        yield TrackingServer(url, artifacts, log)
    finally:
        stop(process)


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
