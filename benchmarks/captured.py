"""Run a benchmark module that prints Markdown tables, and record its tables in results.json.

    python -m benchmarks.captured mnist_recipes [ARGS...]

For the benchmarks that print their own tables (mnist_recipes, ddp_throughput): their output
is shown as it comes, and every table row in it becomes a row of the module's section, with
the wall time and the peak RSS of the module's process beside it.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from benchmarks.results import Row, record
from mlflow_project_store.project_tools.cli import OneLineParser, fail

PROG = "benchmarks.captured"
# The benchmarks that print their results as Markdown tables.
TABLE_MODULES = ("mnist_recipes", "ddp_throughput")


def table_rows(lines: list[str]) -> list[Row]:
    """The rows of every Markdown table in ``lines``, keyed by their table's header."""
    rows: list[Row] = []
    header: list[str] | None = None
    for line in lines:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=TABLE_MODULES, help="the benchmark to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    parsed = parse_args(argv)
    module, args = parsed.module, parsed.args
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    if process.wait() != 0:
        fail(PROG, f"{module} exited with {process.returncode}", status=1)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    notes = " ".join(line for line in lines if line and not line.startswith("|"))[:500]
    rows = table_rows(lines)
    rows.append({"wall time of the module (s)": round(seconds, 1), "peak RSS (MB)": round(peak_mb)})
    record(module, rows, notes=notes, command=" ".join(["python -m benchmarks." + module, *args]))


if __name__ == "__main__":
    main()
