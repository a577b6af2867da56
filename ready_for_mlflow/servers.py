"""Local servers on loopback: an S3 endpoint (moto), `mlflow server`, and the image registry
that Kubernetes pods pull from (Debian's docker-registry).

Every process starts in its own process group and is stopped with its children; a process
that a make target recorded is signalled only while its pid still names it (see ``Started``).
Only the *server* gets S3 credentials: clients reach artifacts through the server's proxy.

`make server`, `make server-stop`, `make registry` and `make registry-stop` run the command
line at the end of this module; `make screenshots` and the tests start the same servers with
the context managers (the tests' own servers, PostgreSQL among them, are in
tests/helpers/servers.py)::

    python -m mlflow_project_store.ready_for_mlflow.servers start|stop [--port N --s3-port N ...]
    python -m mlflow_project_store.ready_for_mlflow.servers registry start|stop [--port N]
        [--state DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import boto3
from dotenv import dotenv_values

from mlflow_project_store.project_tools.cli import OneLineParser, fail, number
from mlflow_project_store.project_tools.lifecycle import raise_once
from mlflow_project_store.project_tools.redaction import redact

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


def start(
    command: list[str], log: Path, env: dict[str, str] | None = None, **popen: object
) -> subprocess.Popen:
    """Start ``command`` in a new session (its own process group), output to ``log``;
    ``popen`` adds options of :class:`subprocess.Popen` (``cwd``, ``preexec_fn``...)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **popen,
        )


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group (server workers included), SIGKILL after ``timeout``."""

    def exited(seconds: float) -> bool:
        try:
            process.wait(seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    stop_group(process.pid, exited, timeout)


def stop_group(
    pgid: int, exited: Callable[[float], bool], timeout: float, leader: Started | None = None
) -> None:
    """SIGTERM the group ``pgid``; SIGKILL what is left once its leader ``exited`` or timed out.

    ``leader``: the group's leader when it is not a child of ours (a recorded process). Once it
    has ended, its pid is free for another process; the group is killed only while the pid
    names no other process (members left over from the group do not hold it)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    exited(timeout)
    if leader is not None and running(pgid) and not leader.alive():
        return
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    exited(timeout)


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Wait until ``url`` answers (any HTTP status), or fail with the server's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}; log {log}:\n{tail(log)}"
            )
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s; log {log}:\n{tail(log)}")


def launch(
    command: list[str], log: Path, url: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``start`` the command and ``wait_http`` for ``url``; stop it again if it never answers."""
    process = start(command, log, env)
    try:
        wait_http(url, process, log, timeout)
    except BaseException:
        stop(process)
        raise
    return process


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


def start_moto(port: int, bucket: str, log: Path) -> tuple[subprocess.Popen, S3]:
    """moto's S3 server on ``port``, answering, with ``bucket`` created."""
    endpoint = f"http://{HOST}:{port}"
    command = [str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(port)]
    process = launch(command, log, f"{endpoint}/moto-api/", timeout=30)
    s3 = S3(endpoint, bucket)
    try:
        s3.client().create_bucket(Bucket=bucket)
    except BaseException:
        stop(process)
        raise
    return process, s3


@contextmanager
def moto_s3(workdir: Path, bucket: str = "mlflow") -> Iterator[S3]:
    """moto's S3 server on a free loopback port, with ``bucket`` created."""
    process, s3 = start_moto(free_port(), bucket, workdir / "moto.log")
    try:
        yield s3
    finally:
        stop(process)


@dataclass(frozen=True)
class TrackingServer:
    url: str
    artifacts: str  # s3://bucket/prefix
    log: Path


def mlflow_server_command(
    backend_store_uri: str, artifacts: str, port: int, *extra_args: str
) -> list[str]:
    """``mlflow server`` on loopback ``port``, proxying artifacts to ``artifacts`` (s3://...)."""
    return [
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
        *extra_args,
    ]


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
    command = mlflow_server_command(
        backend_store_uri, artifacts, port, "--workers", "1", *extra_args
    )
    env = {**os.environ, **s3.server_env, **NO_JOB_RUNNERS, **(extra_env or {})}
    url = f"http://{HOST}:{port}"
    process = launch(command, log, f"{url}/health", timeout=90, env=env)
    try:
        yield TrackingServer(url, artifacts, log)
    finally:
        stop(process)


def registry_config(storage: Path, port: int) -> str:
    """docker-registry's configuration: layers in ``storage``, HTTP on loopback ``port``."""
    return (
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: {HOST}:{port}\n"
    )


def start_registry(port: int, storage: Path, workdir: Path) -> subprocess.Popen:
    """Debian's docker-registry on loopback ``port`` (Docker trusts 127.0.0.0/8 over plain HTTP),
    keeping its layers in ``storage``, answering; its config and log go in ``workdir``."""
    config = workdir / "registry.yml"
    config.write_text(registry_config(storage, port))
    command = ["docker-registry", "serve", str(config)]
    return launch(command, workdir / "registry.log", f"http://{HOST}:{port}/v2/", timeout=30)


# The command line of `make server` / `make server-stop`. Each setting is an option whose default
# is the environment variable of the same name (ready_for_mlflow/server.mk sets them).
PROG = "make server"
ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "ready_for_mlflow" / ".server"
# The server's S3 settings; an empty value (e.g. a blank line of .env) means "not set".
S3_SETTINGS = (
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
S3_DESTINATION = re.compile(r"s3://([^/]+)(/.*)?")


def running(pid: int) -> bool:
    """Running, not gone and not a zombie (whose parent, init here, has yet to reap it)."""
    return Started.now(pid) is not None


# A pid file holds the pid alone, as other tools read one; beside it, ``<name>.process.json``
# records which process that pid was: its start time and command line. A pid alone names
# whatever process holds the number now (after the server ended, or the machine restarted, it
# may be any process), so nothing is signalled unless both still match.
PID_FILE = "{}.pid"
RECORD_FILE = "{}.process.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Started:
    """A process as the kernel knows it: its pid, its start time (clock ticks after boot,
    field 22 of ``/proc/<pid>/stat``) and its command line. Two processes that held the same
    pid since boot differ in start time; the command line tells most of those of two boots
    apart."""

    pid: int
    start_time: int
    command: tuple[str, ...]

    @classmethod
    def now(cls, pid: int) -> Started | None:
        """The process that holds ``pid`` now; None when none does (or only a zombie)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after the name: field 3 onwards
        if fields[0] == "Z":
            return None
        command = tuple(os.fsdecode(arg) for arg in cmdline.split(b"\0")[:-1])
        return cls(pid, int(fields[19]), command)

    def alive(self) -> bool:
        """Whether ``pid`` still names this very process."""
        return Started.now(self.pid) == self

    def gone(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for this process (not a child of ours) to end; whether it did."""
        deadline = time.monotonic() + seconds
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.alive()

    def describe(self) -> str:
        """``pid 12 (`sleep 300`, started 5.2 s after boot)``, the command shortened."""
        command = shlex.join(self.command) or "?"
        command = command if len(command) <= 120 else command[:117] + "..."
        seconds = self.start_time / CLOCK_TICKS
        return f"pid {self.pid} (`{command}`, started {seconds:.1f} s after boot)"


def record(state: Path, name: str, process: subprocess.Popen) -> None:
    """Write ``<name>.pid`` and, first, the record of which process it is."""
    if started := Started.now(process.pid):
        fields = {"pid": started.pid, "start_time": started.start_time, "command": started.command}
        (state / RECORD_FILE.format(name)).write_text(json.dumps(fields, indent=2) + "\n")
    (state / PID_FILE.format(name)).write_text(f"{process.pid}\n")


def read_record(state: Path, name: str) -> Started | None:
    """The record beside ``<name>.pid``; None when there is none (a pid file of the old form,
    the pid alone) or it does not parse."""
    try:
        fields = json.loads((state / RECORD_FILE.format(name)).read_text())
        return Started(int(fields["pid"]), int(fields["start_time"]), tuple(fields["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget(state: Path, name: str) -> None:
    for pattern in (PID_FILE, RECORD_FILE):
        (state / pattern.format(name)).unlink(missing_ok=True)


def recorded(state: Path, only: str | None = None) -> tuple[dict[str, Started], list[str]]:
    """The processes recorded in ``state`` (``<name>.pid``; only the one named ``only``) that
    still run, by name; and a line for each other pid file, which is removed without any
    signal: its process has ended, its pid now names another process, or nothing records
    which process it was."""
    alive: dict[str, Started] = {}
    notes = []
    for pid_file in sorted(state.glob(PID_FILE.format(only or "*"))):
        name, text = pid_file.stem, pid_file.read_text().strip()
        now = Started.now(int(text)) if text.isdigit() else None
        started = read_record(state, name)
        if not text.isdigit():
            notes.append(f"stale pid file {pid_file}: holds {text[:40]!r}, not a pid; removed")
        elif now is None:
            notes.append(f"stale pid file {pid_file}: pid {text} has ended; removed")
        elif started is None or started.pid != now.pid:
            notes.append(
                f"unverifiable pid file {pid_file}: nothing records which process pid {text} was "
                f"({RECORD_FILE.format(name)} is missing or does not match); not signalled, "
                f"removed. It is now {now.describe()}; if that is the {name}, stop it with "
                f"kill -- -{text}"
            )
        elif now != started:
            notes.append(
                f"stale pid file {pid_file}: the {name} recorded, {started.describe()}, has "
                f"ended; the pid now names another process, {now.describe()}: not signalled, "
                "removed"
            )
        else:
            alive[name] = started
            continue
        forget(state, name)
    return alive, notes


def stop_recorded(state: Path, only: str | None = None) -> list[str]:
    """Stop every process group recorded in ``state`` (or only the one named ``only``) whose
    leader is still the process started; forget their pid files; say what stopped and which
    pid files were stale."""
    alive, lines = recorded(state, only)
    for name, started in alive.items():
        stop_group(started.pid, started.gone, timeout=15, leader=started)
        forget(state, name)
        lines.append(f"stopped {name} (pid {started.pid})")
    return lines


def port_busy(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def load_env_file(path: Path) -> None:
    """Export the KEY=VALUE lines of ``path``, as `set -a; . path` would; empty means unset."""
    for key, value in dotenv_values(path).items():
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
    for key in S3_SETTINGS:
        if not os.environ.get(key):
            os.environ.pop(key, None)


def one_line(error: BaseException) -> str:
    """The first and last lines of ``error`` (a header and its log's last line), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))[:600] or type(error).__name__


def start_servers(args: argparse.Namespace) -> None:
    """`make server`: moto when no S3 is configured, then `mlflow server`, both detached."""
    state: Path = args.state
    store, artifacts = args.backend_store_uri, args.artifacts_destination
    if not (VENV_BIN / "mlflow").exists():
        fail(PROG, f"no {VENV_BIN / 'mlflow'}; run make setup", status=1)
    state.mkdir(parents=True, exist_ok=True)
    alive, notes = recorded(state)
    for note in notes:
        print(note)
    if alive:
        names = ", ".join(f"{name} (pid {started.pid})" for name, started in alive.items())
        fail(PROG, f"already running: {names}; make server-stop first", status=1)
    if args.env_file and Path(args.env_file).is_file():
        load_env_file(Path(args.env_file))
    destination = S3_DESTINATION.fullmatch(artifacts)
    if not destination:
        fail(PROG, f"ARTIFACTS_DESTINATION must be s3://bucket[/path], got {artifacts!r}", status=1)
    if port_busy(args.port):
        fail(PROG, f"port {args.port} on {HOST} is in use; set SERVER_PORT=...", status=1)
    local_s3 = not any(os.environ.get(k) for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"))
    if local_s3 and port_busy(args.s3_port):
        fail(PROG, f"port {args.s3_port} on {HOST} is in use; set S3_PORT=...", status=1)

    env = dict(os.environ)
    url = f"http://{HOST}:{args.port}"
    # SIGTERM, SIGHUP or Ctrl-C while waiting stops what has started; a second one does not cut
    # that short.
    raise_once(
        lambda signum: SystemExit(128 + signum), (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    )
    try:
        if local_s3:
            moto, s3 = start_moto(args.s3_port, destination[1], state / "s3.log")
            record(state, "s3", moto)
            env |= s3.server_env
            # The local endpoint keeps objects in memory: start the default store empty to match.
            (state / "mlflow.db").unlink(missing_ok=True)
            print(f"local S3 endpoint: {s3.endpoint} (in memory; objects go when it stops)")
        command = mlflow_server_command(store, artifacts, args.port)
        server = launch(command, state / "mlflow.log", f"{url}/health", timeout=120, env=env)
        record(state, "mlflow", server)
    except BaseException as error:
        for line in stop_recorded(state):
            print(line)
        if isinstance(error, Exception):
            fail(PROG, one_line(error), status=1)
        raise
    print(f"tracking server: {url} (store {redact(store)}, artifacts {artifacts})")
    print(f"clients need no S3 key: export MLFLOW_TRACKING_URI={url}")
    print(f"logs and pids in {state}; stop with: make server-stop")


def stop_servers(args: argparse.Namespace) -> None:
    """`make server-stop`: stop every process group that `make server` recorded."""
    lines = stop_recorded(args.state)
    if not any(line.startswith("stopped ") for line in lines):
        lines.append(f"nothing to stop: no running server recorded in {args.state}")
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=PROG,
        description="Start or stop a local tracking server (SQL store, artifacts proxied to S3).",
    )
    parser.add_argument("action", choices=("start", "stop"))

    def setting(option: str, name: str, default: str, kind: Callable[[str], object] = str) -> None:
        """``option``, by default the environment variable ``name`` when set and not empty."""
        value = os.environ.get(name) or default
        parser.add_argument(option, type=kind, default=value, help=f"${name}, else {default!r}")

    port = number(int, 1, 65535)
    setting("--state", "SERVER_STATE", str(STATE), Path)
    setting("--port", "SERVER_PORT", "5001", port)
    setting("--s3-port", "S3_PORT", "9100", port)
    setting("--backend-store-uri", "BACKEND_STORE_URI", "sqlite:///<state>/mlflow.db")
    setting("--artifacts-destination", "ARTIFACTS_DESTINATION", "s3://mlflow/artifacts")
    # ENV_FILE= (set, empty) reads no file.
    env_file = os.environ.get("ENV_FILE", str(ROOT / ".env"))
    parser.add_argument("--env-file", default=env_file, help="$ENV_FILE (empty: none), else .env")
    args = parser.parse_args(argv)
    args.state = args.state.absolute()
    args.backend_store_uri = args.backend_store_uri.replace("<state>", str(args.state))
    return args


# The command line of `make registry` / `make registry-stop`: the layers are kept in
# <state>/registry, beside the pid file, config and log.
REGISTRY_PROG = "make registry"
REGISTRY = "registry"


def start_registry_detached(args: argparse.Namespace) -> None:
    """`make registry`: the image registry on ``args.port``, detached."""
    state: Path = args.state
    if shutil.which("docker-registry") is None:
        missing = "docker-registry is not installed: apt-get install docker-registry"
        fail(REGISTRY_PROG, missing, status=1)
    state.mkdir(parents=True, exist_ok=True)
    alive, notes = recorded(state, only=REGISTRY)
    for note in notes:
        print(note)
    if started := alive.get(REGISTRY):
        busy = f"already running (pid {started.pid}); make registry-stop first"
        fail(REGISTRY_PROG, busy, status=1)
    if port_busy(args.port):
        busy = f"port {args.port} on {HOST} is in use; set REGISTRY_PORT=..."
        fail(REGISTRY_PROG, busy, status=1)
    try:
        process = start_registry(args.port, state / REGISTRY, state)
    except Exception as error:
        fail(REGISTRY_PROG, one_line(error), status=1)
    record(state, REGISTRY, process)
    print(
        f"registry on {HOST}:{args.port} (pid {process.pid}, log {state / 'registry.log'}); "
        "stop with make registry-stop"
    )


def stop_registry(args: argparse.Namespace) -> None:
    """`make registry-stop`: stop the registry that `make registry` recorded."""
    lines = stop_recorded(args.state, only=REGISTRY)
    if not any(line.startswith("stopped ") for line in lines):
        lines.append(f"nothing to stop: no running registry recorded in {args.state}")
    print("\n".join(lines))


def parse_registry_args(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(
        prog=REGISTRY_PROG,
        description="Start or stop a local image registry (docker-registry) on loopback.",
    )
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--port", type=number(int, 1, 65535), default=5050)
    parser.add_argument(
        "--state", type=Path, default=ROOT / ".run", help="pid, config, log and layers"
    )
    args = parser.parse_args(argv)
    args.state = args.state.absolute()
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [REGISTRY]:
        args = parse_registry_args(argv[1:])
        (start_registry_detached if args.action == "start" else stop_registry)(args)
        return
    args = parse_args(argv)
    (start_servers if args.action == "start" else stop_servers)(args)


if __name__ == "__main__":
    main()
