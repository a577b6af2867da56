"""Start the data-parallel MNIST training on this node: torchrun, one process per rank.

    python -m mnist.distributed.launch --nproc-per-node=2 --nnodes=1 --epochs=3 ...

Every parameter is checked before any process starts (one line, exit 2). Then torchrun
(``torch.distributed.run``, in this process) starts ``--nproc-per-node`` processes of
``mnist.distributed.train``, each given the other arguments. With one node, torchrun's
``--standalone`` rendezvous. With several, the static rendezvous at rank 0's node:

- this node's rank is JOB_COMPLETION_INDEX (a Kubernetes Indexed Job sets it), else NODE_RANK;
  JOB_COMPLETIONS, where the Job template sets it, must equal nnodes;
- rank 0's address is MASTER_ADDR, else, in an Indexed Job, the index-0 pod's name under the
  headless Service that DDP_SERVICE names: a pod's hostname is ``<job name>-<index>``, so the
  pod ``<job>-1`` finds rank 0 at ``<job>-0.<service>``;
- the port is MASTER_PORT, else 29500.

When a rank fails, torchrun stops the others (SIGTERM), and this launcher prints the failed
rank's error on one line (exit 1). A rank that only lost its peers is taken for a consequence,
not the cause. On the node of rank 0, the launcher also tags rank 0's MLflow run ``failure``
with that error and ends it FAILED where rank 0 could not (killed, or stopped by torchrun), so
the run is never left RUNNING.

SIGTERM or SIGINT to this launcher (Ctrl-C in a terminal reaches it beside ``mlflow run``;
Kubernetes deleting the pod sends SIGTERM), or the death of the ``mlflow run`` that started it
(project_tools.lifecycle's launcher watch), stops every rank the same way, and the run ends
KILLED. Later signals are ignored until the ranks are stopped (torchrun's own handler would
let a second one cut that short).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from project_tools.cli import OneLineParser, fail, number
from project_tools.lifecycle import Stopper, raise_once_on_signal

from . import train

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

PROG = "mnist.distributed.launch"
TRAINING_MODULE = "mnist.distributed.train"
DEFAULT_PORT = "29500"
FAILURE_TAG = "failure"
NO_ERROR_FILE = "<N/A>"  # torch's ProcessFailure.error_file when a rank wrote none
# torchrun handles these; SIGTERM and SIGINT are this launcher's (run_torchrun).
TORCHRUN_SIGNALS = "--signals-to-handle=SIGHUP,SIGQUIT"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this launcher's arguments, the training's arguments as given)."""
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], allow_abbrev=False)
    add = parser.add_argument
    add("--nproc-per-node", type=number(int, 1, 1024), help="processes on this node")
    add("--nnodes", type=number(int, 1, 1024), help="nodes (pods) in all")
    parser.use_mlproject_defaults(__file__, train.ENTRY_POINT)
    return parser.parse_known_args(argv)


def master_address(hostname: str, index: int, service: str) -> str:
    """Rank 0's address, from the hostname ``<job>-<index>`` of an Indexed Job's pod."""
    suffix = f"-{index}"
    if not hostname.endswith(suffix) or hostname == suffix:
        raise ValueError(
            f"hostname {hostname!r} is not <job name>-{index}: expected the pod of an Indexed Job "
            "(completionMode: Indexed), or set MASTER_ADDR"
        )
    return f"{hostname.removesuffix(suffix)}-0.{service}"


def node_rank(nnodes: int, env: Mapping[str, str]) -> int:
    """JOB_COMPLETION_INDEX, else NODE_RANK (else 0 for one node). An Indexed Job's pod is
    checked even with one node: a second pod would train a second model into the same run;
    and where the Job template says how many pods it starts (JOB_COMPLETIONS), nnodes must
    be that, or the pods would wait for each other forever, or train alone."""
    pods = env.get("JOB_COMPLETIONS")
    if pods is not None and pods != str(nnodes):
        raise ValueError(
            f"nnodes={nnodes} but the Job starts {pods} pods (JOB_COMPLETIONS): run it with "
            f"-P nnodes={pods}"
        )
    default = "0" if nnodes == 1 else env.get("NODE_RANK")
    text = env.get("JOB_COMPLETION_INDEX", default)
    if text is None:
        raise ValueError(
            f"nnodes={nnodes} needs this node's rank: run as an Indexed Job "
            "(JOB_COMPLETION_INDEX), or set NODE_RANK"
        )
    if not text.isdigit() or int(text) >= nnodes:
        raise ValueError(
            f"this node's rank is {text!r}: expected an integer below nnodes={nnodes} (in "
            "Kubernetes, completions and parallelism must equal nnodes)"
        )
    return int(text)


def rendezvous(nnodes: int, rank: int, env: Mapping[str, str], hostname: str) -> list[str]:
    """torchrun's rendezvous flags for node ``rank``."""
    if nnodes == 1:
        return ["--standalone", "--nnodes=1"]
    address = env.get("MASTER_ADDR")
    if not address:
        service = env.get("DDP_SERVICE")
        if not service:
            raise ValueError(
                f"nnodes={nnodes} needs rank 0's address: set MASTER_ADDR, or DDP_SERVICE to "
                "the headless Service of an Indexed Job's pods"
            )
        address = master_address(hostname, rank, service)
    port = env.get("MASTER_PORT", DEFAULT_PORT)
    return [
        f"--nnodes={nnodes}",
        f"--node-rank={rank}",
        f"--master-addr={address}",
        f"--master-port={port}",
    ]


def check_data(args: argparse.Namespace) -> None:
    """The MNIST files are there (a wrong folder fails here, not in every rank)."""
    from data_loader.mnist_files import idx_paths

    if args.data_dir != train.BUNDLED and not args.download:
        for split in ("train", "test"):
            idx_paths(Path(args.data_dir), split)


def error_of(failure: ProcessFailure) -> str:
    """A failed rank's error: from its error file, else how it ended."""
    if failure.error_file != NO_ERROR_FILE:
        message = failure.message
        # torch's record() writes {"message": "Type: text", "extraInfo": {...}}
        return message.get("message", "") if isinstance(message, dict) else message
    if failure.exitcode < 0:
        return failure.message  # torchrun's "Signal 9 (SIGKILL) received by PID ..."
    return f"exit code {failure.exitcode}"


def root_cause(failures: dict[int, ProcessFailure]) -> str:
    """The failure that caused the others: not a lost peer, and the earliest."""
    rank, failure = min(
        failures.items(),
        key=lambda item: (bool(train.PEER_LOST.search(error_of(item[1]))), item[1].timestamp),
    )
    return f"rank {rank} failed: {error_of(failure)}"


def record_end(run_id_file: Path, status: str, failure: str = "") -> None:
    """End rank 0's MLflow run ``status`` unless rank 0 ended it; tag it with the ``failure``."""
    run_id = os.environ.get("MLFLOW_RUN_ID") or run_id_file.read_text().strip()
    if not run_id:
        return  # rank 0 stopped before starting its run
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if failure:
            client.set_tag(run_id, FAILURE_TAG, failure)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except Exception as exc:  # an unreachable store: the error line below still tells it
        print(f"{PROG}: could not end run {run_id} {status}: {exc}", file=sys.stderr)


def stopped_by(received: signal.Signals) -> SignalException:
    """What torchrun's own handler raises, except that the ranks always get SIGTERM: a rank
    stopped by SIGINT (KeyboardInterrupt) would end the run FAILED itself."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    stop = SignalException(f"stopped by {received.name}", sigval=signal.SIGTERM)
    stop.received = received  # type: ignore[attr-defined]
    return stop


def run_torchrun(flags: list[str], rank_zero_node: bool) -> int:
    """torchrun with ``flags``; a failure ends in one line and exit 1, a stop by a signal in
    one line and 128 + its number; either is recorded in MLflow on the node of rank 0."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args as torchrun_args
    from torch.distributed.run import run

    with tempfile.TemporaryDirectory(prefix="mnist-ddp-") as folder:
        run_id_file = Path(folder, "run_id")
        run_id_file.touch()
        os.environ[train.RUN_ID_FILE] = str(run_id_file)  # the ranks inherit it
        # Until the outcome is recorded: a second signal (mlflow run's cancel after a group
        # SIGTERM) must not end this process before the run does.
        with raise_once_on_signal(stopped_by):
            stopper = Stopper(PROG, handle_signals=False)  # the launcher's death: a SIGTERM
            try:
                with stopper:
                    run(torchrun_args(flags))
            except ChildFailedError as exc:
                message = root_cause(exc.failures)
                if rank_zero_node:
                    record_end(run_id_file, "FAILED", message)
                fail(PROG, message, 1)
            except SignalException as exc:  # torchrun stopped the ranks (SIGTERM, 30 s, SIGKILL)
                received = getattr(exc, "received", exc.sigval)
                if rank_zero_node:
                    record_end(run_id_file, "KILLED")
                    stopper.end_launcher()
                fail(PROG, f"stopped by {received.name}: the run is KILLED", 128 + received)
    return 0


def main(argv: list[str] | None = None) -> int:
    args, training_argv = parse_args(sys.argv[1:] if argv is None else argv)
    training = train.parse_args(training_argv, prog=PROG)
    try:
        train.per_process_batch(training.batch_size, args.nproc_per_node * args.nnodes)
        check_data(training)
        rank = node_rank(args.nnodes, os.environ)
        flags = rendezvous(args.nnodes, rank, os.environ, socket.gethostname())
    except (ValueError, FileNotFoundError) as exc:
        fail(PROG, str(exc))
    flags += [f"--nproc-per-node={args.nproc_per_node}", TORCHRUN_SIGNALS]
    flags += ["-m", TRAINING_MODULE, *training_argv]
    print(f"{PROG}: torchrun {shlex.join(flags)}", file=sys.stderr, flush=True)
    return run_torchrun(flags, rank_zero_node=rank == 0)


if __name__ == "__main__":
    sys.exit(main())
