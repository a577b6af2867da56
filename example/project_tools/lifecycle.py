"""Stop a training run cleanly on SIGTERM, SIGINT, or when the `mlflow run` that started it dies.

``mlflow run`` starts the entry point as a plain child (``bash -c "<command>"``, bash exec'ing
python in local mode, or ``bash -c "activate && python ..."`` with uv, virtualenv and conda) and
installs no signal handler. So SIGTERM to ``mlflow run`` alone kills it at once and leaves the
training re-parented to pid 1, and SIGTERM to the process group kills the training mid-step with
its run RUNNING forever. :class:`Stopper` turns all of these into one request that the training
loop checks after each step: it stops, saves its checkpoint, and ends the run KILLED.

- SIGTERM and SIGINT are recorded, not acted on inside the handler. Later signals are ignored
  (Ctrl-C reaches the training and `mlflow run`, which then sends SIGTERM too); a timer ends the
  process after ``grace`` seconds if stopping hangs (e.g. on a tracking server that is gone).
- The launcher is watched: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux for the parent, and a
  thread that polls the parent and, through ``bash -c`` shells, the process that started them.
- :meth:`Stopper.end_launcher` ends a still-waiting ``mlflow run`` after the run is recorded
  KILLED: mlflow 3.17.2 marks the run FAILED when its child exits (its "already ended?" check
  compares a status string with status numbers), which would overwrite KILLED.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import suppress
from itertools import pairwise
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG = 1
SHELLS = {"bash", "sh", "dash", "zsh"}
POLL_SECONDS = 0.5
GRACE_SECONDS = 30.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(command name, parent pid, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[1]), fields[19]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_mlflow_run(pid: int) -> bool:
    """Whether ``pid`` is an ``mlflow run`` command-line process."""
    args = _cmdline(pid)
    return any(Path(a).name == "mlflow" and b == "run" for a, b in pairwise(args))


def launchers(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, start time) of the parent, and of each process above it while it is a ``sh -c``.

    The process that started a ``bash -c "activate && python ..."`` is the one whose death
    matters (the shell itself outlives it, waiting on python).
    """
    found: list[tuple[int, str]] = []
    current = os.getppid() if pid is None else pid
    while current > 1 and (stat := _stat(current)) is not None:
        name, parent, started = stat
        found.append((current, started))
        if name not in SHELLS or "-c" not in _cmdline(current):
            break
        current = parent
    return found


class Stopper:
    """Record a stop request from a signal or from the launcher's death; see the module doc."""

    def __init__(self, prog: str, grace: float = GRACE_SECONDS) -> None:
        self.prog = prog
        self.grace = grace
        self.signum: int | None = None
        self.reason = ""
        # What the forced exit reports (e.g. where a checkpoint was saved locally).
        self.note = ""
        self._previous: dict[int, object] = {}
        self._watched: list[tuple[int, str]] = []
        self._parent = os.getppid()
        self._done = threading.Event()
        self._pdeathsig = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by ``signum``: 128 + signal number."""
        return 128 + (self.signum or signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        self.reason = self.reason or signal.Signals(signum).name
        print(
            f"{self.prog}: stopping on {self.reason}: saving a checkpoint "
            f"(forced exit in {self.grace:g} s)",
            file=sys.stderr,
            flush=True,
        )
        timer = threading.Timer(self.grace, self._force_exit)
        timer.daemon = True
        timer.start()

    def _force_exit(self) -> None:
        note = f"; {self.note}" if self.note else ""
        print(
            f"{self.prog}: error: stopping took longer than {self.grace:g} s{note}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(self.exit_status)

    def _watch(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            gone = os.getppid() != self._parent or any(
                (_stat(pid) or ("", 0, ""))[2] != started for pid, started in self._watched
            )
            if gone:
                if self.signum is None:
                    self.reason = "the end of the process that started it"
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def install(self) -> Stopper:
        """Handle SIGTERM/SIGINT and watch the launcher (main thread only; else a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if sys.platform == "linux":
            libc = ctypes.CDLL(None, use_errno=True)
            self._pdeathsig = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
            self._watched = launchers()
        if os.getppid() != self._parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=self._watch, name="launcher-watch", daemon=True).start()
        return self

    def restore(self) -> None:
        """Undo :meth:`install` (for callers that run ``main`` in-process, such as tests)."""
        self._done.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._pdeathsig:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)

    def end_launcher(self) -> None:
        """After a signal stop: end a still-waiting ``mlflow run`` before it overwrites KILLED."""
        if not self.requested:
            return
        for pid, started in self._watched:
            if (_stat(pid) or ("", 0, ""))[2] == started and is_mlflow_run(pid):
                with suppress(OSError):
                    os.kill(pid, signal.SIGTERM)

    def __enter__(self) -> Stopper:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
