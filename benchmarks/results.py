"""The shared results file of `make benchmark`: benchmarks/results.json, and its table.

Each benchmark module measures its figures side by side in one run and calls ``record`` with
rows of plain values; ``record`` merges them into results.json under the module's name, with
the machine they were measured on (cores, CPU model, torch, GPU, load average), and prints
them. ``python -m benchmarks.results`` prints every recorded section as Markdown tables.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from mlflow_project_store.project_tools.cli import OneLineParser

RESULTS = Path(__file__).with_name("results.json")

Row = dict[str, object]


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the architecture elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "gpu": gpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def load() -> dict[str, object]:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"machine": {}, "benchmarks": {}}


def record(name: str, rows: list[Row], notes: str = "", command: str = "") -> None:
    """Store ``rows`` as the section ``name`` of results.json, and print them as a table.

    The load average before and after tells a reader how busy the shared machine was.
    """
    results = load()
    results["machine"] = machine()
    results["benchmarks"][name] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command or f"python -m benchmarks.{name}",
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "notes": notes,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(section(name, results["benchmarks"][name]))


def cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def table(rows: list[Row]) -> list[str]:
    """A Markdown table with a column for every key any row has, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def section(name: str, entry: dict) -> str:
    head = f"\n## {name} ({entry['measured_at']}, load after {entry['load_average_after']})"
    notes = [entry["notes"]] if entry.get("notes") else []
    return "\n".join([head, *notes, *table(entry["rows"]), f"`{entry['command']}`"])


def describe(info: dict[str, object]) -> str:
    gpu = info.get("gpu") or "no GPU"
    return f"{info.get('cores')} cores, {info.get('cpu')}, torch {info.get('torch')}, {gpu}"


def main(argv: list[str] | None = None) -> None:
    OneLineParser(prog="benchmarks.results", description=__doc__.splitlines()[0]).parse_args(argv)
    results = load()
    print(f"# make benchmark: {describe(results['machine'])}")
    for name, entry in results["benchmarks"].items():
        print(section(name, entry))
    print(f"\nAll figures: {RESULTS}")


if __name__ == "__main__":
    main()
