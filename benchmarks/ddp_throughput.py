"""Training throughput of the distributed entry point of projects/mnist-conda with 1 and N
processes, and the scaling.

    python -m benchmarks.ddp_throughput [--device cpu|cuda] [--epochs 2] [--batch-size 128]

By default (``--device cpu``, what `make benchmark` runs) it measures the CPU, then the GPUs
where CUDA is present, and says so where there is none. ``--device cuda`` measures the GPUs alone.

Each configuration runs the project's own entry point (``python -m mnist.distributed.launch``:
torchrun, DistributedDataParallel, gloo on the CPU, nccl on CUDA) on the bundled digits,
recording into a throwaway tracking store. Its figure is rank 0's ``train_images_per_second``
(the images all ranks trained in an epoch over the epoch's time), the median over the epochs
after the first, and the best of ``--repeats`` runs taken in turns with the other configurations
(other work on a shared machine only ever slows a run down).

On the CPU: 1 and 2 processes, each with half the cores as threads, so that the efficiency
(images/s with 2 processes over twice images/s with 1) measures what data parallelism costs:
the gradient all-reduce and the waits between ranks. A last row gives one process all the
cores, the way mnist-conda trains. On CUDA: one process per GPU, 1 and then all of them, so
the nccl scaling row needs 2 GPUs or more (with 1, the output says that only its row ran).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from mlflow.tracking import MlflowClient

from mlflow_project_store.layout import PROJECTS
from mlflow_project_store.project_tools.cli import OneLineParser, number

PROJECT = PROJECTS / "mnist-conda"
METRIC = "train_images_per_second"


class Config(NamedTuple):
    processes: int
    threads: int  # per process; 0 on CUDA


class Result(NamedTuple):
    config: Config
    images_per_second: float


def configs(device: str) -> list[Config]:
    if device == "cuda":
        gpus = torch.cuda.device_count()
        return [Config(1, 0)] + ([Config(gpus, 0)] if gpus > 1 else [])
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    return [Config(1, half), Config(2, half), Config(1, cores)]


def devices(requested: str) -> list[str]:
    """What to measure: the GPUs when asked for; else the CPU, and the GPUs where CUDA is."""
    if requested == "cuda":
        return ["cuda"]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def gpu_note(measured: list[str]) -> str | None:
    """Why a table of nccl figures is missing or short, if it is."""
    if "cuda" not in measured:
        return "no GPU present: gloo on the CPU only (the nccl rows need CUDA)"
    if torch.cuda.device_count() == 1:
        return "1 GPU: nccl with 1 process only; its scaling row needs 2 GPUs or more"
    return None


def measure(
    config: Config, device: str, args: argparse.Namespace, store: Path, attempt: int
) -> Result:
    """Run the entry point once on ``device``; rank 0's images/s over the epochs after the
    first."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    name = f"{device}-{config.processes}x{config.threads}-{attempt}"
    client.create_experiment(name, artifact_location=(store / name).as_uri())
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": name}
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    command = [
        sys.executable,
        "-m",
        "mnist.distributed.launch",
        f"--nproc-per-node={config.processes}",
        f"--epochs={args.epochs}",
        f"--batch-size={args.batch_size}",
        f"--device={device}",
    ]
    done = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        sys.exit(f"ddp_throughput: error: {name} failed: {done.stderr[-2000:]}")
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    history = [m.value for m in client.get_metric_history(run.info.run_id, METRIC)]
    return Result(config, statistics.median(history[1:] or history))


def best_of_rounds(device: str, args: argparse.Namespace, store: Path) -> list[Result]:
    """Each configuration of ``device`` measured ``args.repeats`` times in turns; its best."""
    rounds = [
        [measure(config, device, args, store, attempt) for config in configs(device)]
        for attempt in range(args.repeats)
    ]
    return [max(runs, key=lambda r: r.images_per_second) for runs in zip(*rounds, strict=True)]


def table(results: list[Result], backend: str) -> list[str]:
    base = results[0].images_per_second
    lines = [
        "| processes | threads per process | backend | images/s | speedup | efficiency |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (processes, threads), speed in results:
        speedup = speed / base
        # Efficiency compares processes with the same threads each as the first row.
        same = threads == results[0].config.threads
        efficiency = f"{speedup / processes:.0%}" if same else "-"
        shown = threads or "-"
        lines.append(
            f"| {processes} | {shown} | {backend} | {speed:.0f} | {speedup:.2f}x | {efficiency} |"
        )
    return lines


def main() -> None:
    parser = OneLineParser(prog="benchmarks.ddp_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--epochs", type=number(int, 1), default=2)
    parser.add_argument("--batch-size", type=number(int, 1), default=128, help="the global batch")
    parser.add_argument(
        "--repeats", type=number(int, 1), default=2, help="runs of each configuration"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but CUDA is not available: expected cpu")
    measured = devices(args.device)
    where = [f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"]
    if "cuda" in measured:
        where.append(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    print(
        f"torch {torch.__version__}, {'; '.join(where)}; {args.epochs} epochs of the 7,200 "
        f"bundled training digits, global batch {args.batch_size}, best of {args.repeats}"
    )
    if note := gpu_note(measured):
        print(note)
    # Other work on the machine skews CPU figures: show how busy it was before.
    print("load average before (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="ddp-throughput-") as folder:
        for device in measured:
            best = best_of_rounds(device, args, Path(folder))
            print("\n".join(["", *table(best, "nccl" if device == "cuda" else "gloo")]))


if __name__ == "__main__":
    main()
