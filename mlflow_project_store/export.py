"""``make export``: a project folder that runs on its own, wherever it is taken.

    python -m mlflow_project_store.export [PROJECT] [DEST]     (make passes PROJECT and DEST)

Inside the repository a project reaches its shared code through relative links
(``data_loader -> ../../example/data_loader``, ``mnist -> ../mnist-conda/mnist``); here they
become copies, so ``DEST`` holds no link and names no path outside itself: the folder a team
commits into its own repository, or copies to a machine without this one. It then runs with
plain ``mlflow run DEST`` from any folder, in an environment that holds only what the project
declares (its ``conda.yaml`` through ``--env-manager uv`` or conda; its Dockerfile's image
through ``--build-image``). ``DEST`` must not exist yet, or be an empty folder; nothing is
written when a check fails. Local tracking stores and caches are left out.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from mlflow_project_store.project_tools.cli import OneLineParser, fail

PROG = "make export"
LEFT_OUT = shutil.ignore_patterns("__pycache__", "*.pyc", "mlruns", "mlartifacts", "mlflow.db")


def check(project_text: str, dest_text: str) -> tuple[Path, Path]:
    project, dest = Path(project_text), Path(dest_text).expanduser()
    if not (project / "MLproject").is_file():
        fail(
            PROG,
            f"PROJECT {project_text!r} is not an MLflow project: expected a folder with an "
            "MLproject file, e.g. PROJECT=projects/mnist-conda",
        )
    if not dest_text:
        fail(PROG, "DEST is empty: expected the folder to write, e.g. DEST=../my-exp")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        fail(PROG, f"DEST {str(dest)!r} exists and is not an empty folder: expected a new one")
    if dest.resolve().is_relative_to(project.resolve()):
        fail(PROG, f"DEST {str(dest)!r} is inside PROJECT: expected a folder outside it")
    return project, dest


def links_left(folder: Path) -> list[Path]:
    return [
        Path(where, name)
        for where, dirs, files in os.walk(folder)
        for name in dirs + files
        if Path(where, name).is_symlink()
    ]


def export(project: Path, dest: Path) -> int:
    """Copy ``project`` into ``dest`` with every link replaced by what it points to; return
    the number of files written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dest.parent) as staging:
        copy = Path(staging, "project")
        shutil.copytree(project, copy, symlinks=False, ignore=LEFT_OUT)
        if left := links_left(copy):  # a link into a folder that a link leads to again
            fail(PROG, f"{left[0].relative_to(copy)} is still a link after copying", status=1)
        if dest.exists():
            dest.rmdir()
        copy.rename(dest)
    return sum(len(files) for _, _, files in os.walk(dest))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", default=os.environ.get("PROJECT", ""))
    parser.add_argument("dest", nargs="?", default=os.environ.get("DEST", ""))
    args = parser.parse_args(argv)
    project, dest = check(args.project, args.dest)
    try:
        count = export(project, dest)
    except OSError as exc:
        fail(PROG, f"could not write {dest} ({exc}); nothing was kept", status=1)
    env = "--build-image" if (dest / "Dockerfile").is_file() else "--env-manager uv"
    print(f"Exported {project} to {dest}: {count} files, no links.")
    print(f"Run it from anywhere: mlflow run {env} {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
