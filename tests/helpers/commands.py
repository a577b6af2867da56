"""Running the repository's commands as a user would: `mlflow run`, `make`, a one-line error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS, ROOT
from mlflow_project_store.ready_for_mlflow.servers import client_env, start

VENV_BIN = Path(sys.executable).parent


def in_project(project: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``project`` on PYTHONPATH: its packages (its code, and data_loader and
    project_tools through its links) import as `mlflow run` imports them from that folder."""
    return {**env, "PYTHONPATH": str(project)}


def mlflow_run_command(
    project: Path,
    params: dict[str, object] | None = None,
    env_manager: str = "local",
    experiment: str = "tests",
    extra_args: list[str] | None = None,
) -> list[str]:
    """The ``mlflow run`` command line of ``project`` in ``experiment``, ``-P`` per param."""
    command = [
        str(VENV_BIN / "mlflow"),
        "run",
        str(project),
        "--env-manager",
        env_manager,
        "--experiment-name",
        experiment,
        *(extra_args or []),
    ]
    for key, value in (params or {}).items():
        command += ["-P", f"{key}={value}"]
    return command


def mlflow_run_env(tracking_uri: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (this environment by default) with the tracking URI and the venv on PATH."""
    base = os.environ if base is None else base
    return {
        **base,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
    }


def mlflow_run(
    project: Path,
    tracking_uri: str,
    params: dict[str, object] | None = None,
    env_manager: str = "local",
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
    timeout: int = 1200,
    experiment: str = "tests",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``mlflow run`` on ``project`` as a user would, in ``experiment``.

    ``env`` replaces the whole client environment (the tracking URI and PATH are still set).
    """
    command = mlflow_run_command(project, params, env_manager, experiment, extra_args)
    return subprocess.run(
        command,
        cwd=cwd,
        env=mlflow_run_env(tracking_uri, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def only_run(tracking_uri: str, experiment: str = "tests") -> Run:
    """The single top-level run that a test's `mlflow run` recorded in ``experiment`` (a
    sweep's trials, nested under it by ``mlflow.parentRunId``, are not counted)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"mlflow run created no experiment {experiment!r}"
    runs = [
        run
        for run in client.search_runs([found.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0]


def make_command(*args: str) -> list[str]:
    """The ``make ARGS`` command line, without make's "Entering directory" lines."""
    return ["make", "--no-print-directory", *args]


def make(
    *args: str, cwd: Path = ROOT, timeout: int = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` in ``cwd`` with ``env`` added to this environment."""
    return subprocess.run(
        make_command(*args),
        cwd=cwd,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_reason(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The failed command printed exactly one stderr line starting with ``prefix``."""
    assert result.returncode != 0, result.stdout[-2000:]
    reasons = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(reasons) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return reasons[0]


def assert_one_line_error(
    parse_args: Callable[[list[str]], object], argv: list[str], message: str, stderr_of
) -> None:
    """``parse_args(argv)`` exits 2 with exactly one stderr line that contains ``message``."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    stderr = stderr_of()
    assert stderr.count("\n") == 1 and message in stderr, stderr


def run_project(
    tracking_uri: str,
    experiment: str,
    params: dict[str, object],
    project: Path = PROJECTS / "mnist-conda",
) -> subprocess.CompletedProcess[str]:
    """``mlflow run --env-manager local`` from a client without any S3 credential."""
    return mlflow_run(
        project, tracking_uri, params, experiment=experiment, env=client_env(tracking_uri)
    )


def start_mlflow_run(
    project: Path,
    tracking_uri: str,
    params: dict[str, object],
    log: Path,
    mark: str,
    experiment: str = "tests",
    extra_args: list[str] | None = None,
) -> subprocess.Popen:
    """Start ``mlflow run --env-manager local`` in a session of its own, as a terminal would.

    Every process it starts inherits ``LIFECYCLE_MARK=mark`` (see :func:`marked_processes`).
    SIGINT is reset to its default, which a shell without job control would have ignored.
    """
    return start(
        mlflow_run_command(project, params, experiment=experiment, extra_args=extra_args),
        log,
        client_env(tracking_uri, LIFECYCLE_MARK=mark),
        cwd=log.parent,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def processes_with_env(name: str, value: str) -> list[int]:
    """The live processes of this user whose environment holds ``name=value`` (from /proc)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat[stat.rindex(")") + 2] != "Z":  # a zombie has ended
                    found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def marked_processes(mark: str) -> list[int]:
    """The live processes whose environment holds ``LIFECYCLE_MARK=mark``."""
    return processes_with_env("LIFECYCLE_MARK", mark)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` every 0.5 s until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:g} s: {what}")
