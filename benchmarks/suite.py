"""The test suite's wall time and its slowest 10 tests.

    python -m benchmarks.suite [--all]

`make test` (the quick part) or, with ``--all``, `make test-all`, with ``--durations=10`` and
a JUnit report from which the slowest tests are read. Failures are recorded, not fatal.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.results import record
from project_tools.cli import OneLineParser
from scaffold.layout import ROOT


def main() -> None:
    parser = OneLineParser(prog="benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="make test-all instead of make test")
    args = parser.parse_args()
    target = "test-all" if args.all else "test"
    with tempfile.TemporaryDirectory(prefix="suite-") as folder:
        report = Path(folder) / "junit.xml"
        pytest_args = f"PYTEST_ARGS=--durations=10 -q -p no:cacheprovider --junitxml={report}"
        start = time.perf_counter()
        done = subprocess.run(["make", "--no-print-directory", target, pytest_args], cwd=ROOT)
        wall = time.perf_counter() - start
        cases = ET.parse(report).getroot().iter("testcase")
        timed = sorted(
            ((float(c.get("time", 0)), f"{c.get('classname')}::{c.get('name')}") for c in cases),
            reverse=True,
        )
        suite = ET.parse(report).getroot().find("testsuite")
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
    rows = [{"test": f"make {target} (wall)", "seconds": round(wall, 1), **counts}]
    rows += [{"test": name, "seconds": round(seconds, 1)} for seconds, name in timed[:10]]
    notes = f"exit status {done.returncode}; target for make test: <= 180 s warm on 2 cores"
    record("suite", rows, notes, f"python -m benchmarks.suite{' --all' if args.all else ''}")


if __name__ == "__main__":
    main()
