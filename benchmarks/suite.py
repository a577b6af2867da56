"""The test suite's wall time and its slowest 10 tests.

    python -m benchmarks.suite [--all]

`make test` (the quick part) or, with ``--all``, `make test-all`, with ``--durations=10`` and
a JUnit report from which the slowest tests are read. Failures are recorded, not fatal.

It also reads how many CPU-seconds the whole machine was busy meanwhile (/proc/stat: the
tests, their servers, Docker builds in dockerd): divided by the cores, that is the shortest
wall time any overlap of the same work could reach on this machine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.results import record
from mlflow_project_store.layout import ROOT
from mlflow_project_store.project_tools.cli import OneLineParser


def busy_cpu_seconds() -> float:
    """CPU-seconds the machine has spent busy since boot (user, nice, system, irq, softirq;
    not idle, I/O wait or time the host gave to other machines)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split()[1:8]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    return busy / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = OneLineParser(prog="benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="make test-all instead of make test")
    args = parser.parse_args()
    target = "test-all" if args.all else "test"
    with tempfile.TemporaryDirectory(prefix="suite-") as folder:
        report = Path(folder) / "junit.xml"
        pytest_args = f"PYTEST_ARGS=--durations=10 -q -p no:cacheprovider --junitxml={report}"
        busy, start = busy_cpu_seconds(), time.perf_counter()
        done = subprocess.run(["make", "--no-print-directory", target, pytest_args], cwd=ROOT)
        wall, busy = time.perf_counter() - start, busy_cpu_seconds() - busy
        cases = ET.parse(report).getroot().iter("testcase")
        timed = sorted(
            ((float(c.get("time", 0)), f"{c.get('classname')}::{c.get('name')}") for c in cases),
            reverse=True,
        )
        suite = ET.parse(report).getroot().find("testsuite")
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
    cores = os.cpu_count() or 1
    rows = [
        {"test": f"make {target} (wall)", "seconds": round(wall, 1), **counts},
        {"test": "machine busy (CPU-seconds)", "seconds": round(busy, 1)},
        {"test": f"busy / {cores} cores (floor of any overlap)", "seconds": round(busy / cores, 1)},
    ]
    rows += [{"test": name, "seconds": round(seconds, 1)} for seconds, name in timed[:10]]
    notes = f"exit status {done.returncode}; target for make test: <= 180 s warm on 2 cores"
    record("suite", rows, notes, f"python -m benchmarks.suite{' --all' if args.all else ''}")


if __name__ == "__main__":
    main()
