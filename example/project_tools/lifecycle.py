"""Stop a training run cleanly on SIGTERM, SIGINT, or when the `mlflow run` that started it dies.

``mlflow run`` starts the entry point as a plain child (``bash -c "<command>"``, bash exec'ing
python in local mode, or ``bash -c "activate && python ..."`` with uv, virtualenv and conda), and
MLflow cancels it on Ctrl-C (KeyboardInterrupt) only. So SIGTERM to ``mlflow run`` alone kills
it at once and leaves the training re-parented to pid 1 (or a Docker container training), and
SIGTERM to the process group kills the training mid-step with its run RUNNING forever.
:class:`Stopper` turns all of these into one request that the training loop checks after each
step: it stops, saves its checkpoint, and ends the run KILLED.

- SIGTERM and SIGINT are recorded, not acted on inside the handler. Later signals are ignored
  (Ctrl-C reaches the training and `mlflow run`, which then sends SIGTERM too); a timer ends the
  process after ``grace`` seconds if stopping hangs (e.g. on a tracking server that is gone).
- The launcher is watched: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux for the parent, and a
  thread that polls the parent and, through ``bash -c`` shells, the process that started them.
- :meth:`Stopper.end_launcher` ends a still-waiting ``mlflow run`` after the run is recorded
  KILLED: mlflow 3.17.2 marks the run FAILED when its child exits (its "already ended?" check
  compares a status string with status numbers, docs/upstream.md), which would overwrite KILLED.

A process that waits on children instead of looping over steps (the torchrun launcher, the
sweep) cannot check a flag: :func:`raise_once_on_signal` turns the first SIGTERM or SIGINT into
an exception there, which its code handles by stopping the children; :func:`descendants` and
:func:`end_all` let it wait until every process below a child has ended.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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


def _running(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (a zombie has ended)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0] != "Z" and fields[19] == started


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, from /proc (none without it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        if (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (stat := _stat(child)) is not None:
            found.append((child, stat[2]))
        todo += children.get(child, [])
    return found


def end_all(family: list[tuple[int, str]], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM what is left of ``family`` ((pid, start time) pairs); SIGKILL what is left of
    it after ``grace`` seconds."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        family = [(pid, started) for pid, started in family if _running(pid, started)]
        for pid, _ in family:
            with suppress(OSError):
                os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while family and time.monotonic() < deadline:
            time.sleep(0.1)
            family = [(pid, started) for pid, started in family if _running(pid, started)]


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

    def __init__(
        self, prog: str, grace: float = GRACE_SECONDS, handle_signals: bool = True
    ) -> None:
        self.prog = prog
        self.grace = grace
        # False: only watch the launcher, whose death sends this process a SIGTERM for a
        # handler of the caller's (see raise_once_on_signal).
        self.handle_signals = handle_signals
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
            # A launcher that ended is gone even while its own parent has yet to reap it.
            gone = os.getppid() != self._parent or any(
                not _running(pid, started) for pid, started in self._watched
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
        if self.handle_signals:
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
        """Once the run is recorded KILLED: end a still-waiting ``mlflow run`` before its own
        status check overwrites KILLED with FAILED (mlflow 3.17.2, docs/upstream.md)."""
        for pid, started in self._watched:
            if _running(pid, started) and is_mlflow_run(pid):
                with suppress(OSError):
                    os.kill(pid, signal.SIGTERM)

    def __enter__(self) -> Stopper:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


def raise_once(
    make: Callable[[signal.Signals], BaseException], signals: tuple[int, ...] = SIGNALS
) -> dict[int, object]:
    """From now on, the first of ``signals`` (SIGTERM, SIGINT) raises ``make(signal)`` in the
    main thread and later ones do nothing, so that stopping (the children, a server) is not cut
    short; SIGKILL still ends the process. The handlers replaced are returned.

    A second signal is common: ``kill -TERM -<group>`` under `make` reaches a recipe once from
    the sender and once more from `make`, which passes it on. The later ones stay with a Python
    handler rather than SIG_IGN: a signal received while the handler is swapped would be
    reported by CPython as "Signal 15 ignored due to race condition", with a traceback."""
    raised = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise make(signal.Signals(signum))

    return {signum: signal.signal(signum, interrupt) for signum in signals}


@contextmanager
def raise_once_on_signal(
    make: Callable[[signal.Signals], BaseException], signals: tuple[int, ...] = SIGNALS
) -> Iterator[None]:
    """Meanwhile, :func:`raise_once` (main thread only); then the handlers it replaced again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = raise_once(make, signals)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
