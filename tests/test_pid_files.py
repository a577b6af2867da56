"""Pid files of `make server` and `make registry`: a stop signals only the process started.

A pid file outlives its process (the server ended, the machine restarted) and its pid may then
name any process. Each test leaves an unrelated process (``sleep``, in a session of its own)
under the recorded pid, as if the number had been taken again, and runs the real make targets;
the last one calls stop_group itself, for the second signal of a stop, which no make run can time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlflow_project_store.ready_for_mlflow.servers import Started, free_port, start, stop_group
from tests.helpers.commands import make, wait_until
from tests.helpers.components import require

# make target, its state-folder variable, the name of the process it records.
SERVER_STOP = ("server-stop", "SERVER_STATE", "mlflow")
REGISTRY_STOP = ("registry-stop", "STATE", "registry")
SLEEP = ("sleep", "300")


@contextmanager
def unrelated_process(log: Path, command: tuple[str, ...] = SLEEP) -> Iterator[Started]:
    """A long-lived process that no make target started, in a session of its own; killed at
    the end. ``command`` runs ``sleep 300`` in the end (``exec``)."""
    process = start(list(command), log)

    def sleeping() -> Started | None:
        """The process once it is ``sleep 300`` (exec'd: an instant after Popen returns)."""
        started = Started.now(process.pid)
        return started if started is not None and started.command == SLEEP else None

    try:
        yield wait_until(sleeping, 10, "sleep 300 has started")
    finally:
        process.kill()
        process.wait()


def leave_pid_file(state: Path, name: str, pid: int, record: dict | None) -> Path:
    """``<name>.pid`` as a make target writes it, and the record beside it unless None."""
    state.mkdir(exist_ok=True)
    if record is not None:
        (state / f"{name}.process.json").write_text(json.dumps(record))
    pid_file = state / f"{name}.pid"
    pid_file.write_text(f"{pid}\n")
    return pid_file


def earlier_process(state: Path, name: str, holder: Started) -> dict:
    """The record of the process that held ``holder``'s pid before it: the server as started,
    one clock tick earlier."""
    command = {
        "mlflow": [".venv/bin/python", ".venv/bin/mlflow", "server", "--port", "5001"],
        "registry": ["docker-registry", "serve", str(state / "registry.yml")],
    }[name]
    return {"pid": holder.pid, "start_time": holder.start_time - 1, "command": command}


@pytest.mark.parametrize("target", [SERVER_STOP, REGISTRY_STOP], ids=lambda t: t[0])
@pytest.mark.parametrize("form", ["record-of-another-process", "pid-alone"])
def test_stop_leaves_the_process_that_took_a_stale_pid(
    tmp_path: Path, target: tuple[str, str, str], form: str
) -> None:
    """A pid file whose pid now names another process, or that holds the pid alone (the
    older form, which cannot be checked): removed with a line, nothing signalled."""
    goal, variable, name = target
    state = tmp_path / "state"
    with unrelated_process(tmp_path / "sleep.log") as unrelated:
        record = earlier_process(state, name, unrelated) if form != "pid-alone" else None
        pid_file = leave_pid_file(state, name, unrelated.pid, record)

        stopped = make(goal, f"{variable}={state}", timeout=120)

        alive = unrelated.alive()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert alive, f"make {goal} signalled pid {unrelated.pid}: {stopped.stdout}"
    assert not pid_file.exists() and not (state / f"{name}.process.json").exists()
    kind = "stale" if form != "pid-alone" else "unverifiable"
    line = next(
        (line for line in stopped.stdout.splitlines() if line.startswith(f"{kind} pid file")), ""
    )
    assert line.startswith(f"{kind} pid file {pid_file}: "), stopped.stdout
    assert "not signalled" in line and f"pid {unrelated.pid} (`sleep 300`" in line, line
    assert f"stopped {name}" not in stopped.stdout, stopped.stdout


@pytest.mark.server
def test_make_registry_starts_over_a_stale_pid_file_and_registry_stop_stops_it(
    tmp_path: Path,
) -> None:
    """`make registry` over a stale pid file starts the registry (the file was stale, not a
    running registry); `make registry-stop` then stops the registry it recorded."""
    require(
        "docker-registry",
        shutil.which("docker-registry") is not None,
        "apt-get install docker-registry",
    )
    state = tmp_path / "state"
    registry: Started | None = None
    with unrelated_process(tmp_path / "sleep.log") as unrelated:
        record = earlier_process(state, "registry", unrelated)
        pid_file = leave_pid_file(state, "registry", unrelated.pid, record)
        try:
            port = free_port()
            started = make("registry", f"REGISTRY_PORT={port}", f"STATE={state}", timeout=120)
            assert started.returncode == 0, started.stdout + started.stderr
            assert f"stale pid file {pid_file}: " in started.stdout, started.stdout
            registry = Started.now(int(pid_file.read_text()))
            assert registry is not None and registry.command[0] == "docker-registry", registry
            assert json.loads((state / "registry.process.json").read_text()) == {
                "pid": registry.pid,
                "start_time": registry.start_time,
                "command": list(registry.command),
            }

            stopped = make("registry-stop", f"STATE={state}", timeout=120)

            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert f"stopped registry (pid {registry.pid})" in stopped.stdout, stopped.stdout
            assert not registry.alive()
            assert not pid_file.exists() and not (state / "registry.process.json").exists()
            assert unrelated.alive()
        finally:
            if registry is not None and registry.alive():
                os.killpg(registry.pid, signal.SIGKILL)


def test_the_second_signal_spares_a_process_that_took_the_pid(tmp_path: Path) -> None:
    """The recorded leader ended while its group was stopped and its pid was taken: the
    SIGKILL that follows the SIGTERM is not sent (here the new holder ignores SIGTERM)."""
    ignores_term = ("bash", "-c", f"trap '' TERM; exec {' '.join(SLEEP)}")
    with unrelated_process(tmp_path / "sleep.log", ignores_term) as holder:
        leader = Started(holder.pid, holder.start_time - 1, ("docker-registry", "serve"))
        stop_group(holder.pid, leader.gone, timeout=1, leader=leader)
        time.sleep(1)  # a signal sent is delivered within milliseconds
        assert holder.alive()
