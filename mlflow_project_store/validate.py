"""Check every project under ``projects/`` against the repository's conventions.

    python -m mlflow_project_store.validate [--projects-dir DIR]      (``make validate``)

Every folder under DIR must hold an ``MLproject``; the repository is DIR's parent (links must
stay inside it). For each project it checks:

- ``MLproject`` loads with MLflow's own loader, has a ``main`` entry point, its parameter types
  are MLflow's, each command's ``python -m pkg.mod`` / ``python script.py`` names a file that
  exists in the project folder (links followed, as MLflow copies them), and no default names a
  path outside the folder (a project runs wherever it is taken);
- a project that links to another's code package states the same entry points as that one
  (MLflow has no include: the code's own MLproject is where the defaults are written);
- the environment file parses and pins ``mlflow==``: ``conda.yaml``'s pip list,
  ``python_env.yaml``'s dependencies; a ``docker_env`` project's Dockerfile, ``.dockerignore``
  and Kubernetes files are checked by validate_containers.py;
- every file and folder of the project can be read, a text file (``TEXT_NAMES``,
  ``TEXT_SUFFIXES``) as UTF-8, and every link resolves without a loop, is relative, stays
  inside the repository and does not lead back to a folder that holds it; a project where one
  does not gets one problem per such file and no other check (they, and MLflow, would fail or
  hang on it);
- ``smoke.yaml`` has the keys and types that ``tests/helpers/projects.py`` reads;
- ``README.md`` has a parameter table for each entry point, matching ``MLproject``, unless the
  project takes its entry points from the project whose code it links (its README says so).

A README table. Its header starts ``| parameter | type | default |`` (more columns may follow),
then one row per parameter, in any order: the name, its MLflow type and its default as MLflow
passes it to the command (``str(default)``: ``5``, ``1e-3``, ``bundled``). Backticks are
ignored; an empty-string default is written ``""``; a parameter without a default (``-P`` must
give it) is written ``required``. Cells must not contain ``|``. A table is for ``main`` unless
the heading above it names another entry point in backticks (``## Parameters of `distributed```).

A table goes to stdout (project, variant, status, problems); each problem goes to stderr as
``validate: <project>/<file>: <what is wrong>: <what is expected>``. Exit status 1 when any
problem is found, else 0.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import shlex
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mlflow.projects import env_type
from mlflow.projects._project_spec import Project as Spec
from mlflow.projects._project_spec import load_project

from mlflow_project_store.layout import (
    FILE_TYPES,
    HELDOUT,
    MLFLOW_PARAM_TYPES,
    PROJECTS,
    ROOT,
    SHARED_PACKAGES,
    split_folder,
)
from mlflow_project_store.mlflow_version import version_problem
from mlflow_project_store.project_tools.cli import OneLineParser, folder
from mlflow_project_store.validate_containers import (
    MLFLOW_PIN,
    check_dockerfile,
    check_dockerignore,
    check_kubernetes,
    first_line,
    read_yaml,
)

PROG = "validate"
MAIN = "main"
README_HEADER = ("parameter", "type", "default")
REQUIRED = "required"
PYTHON = re.compile(r"python(3(\.\d+)?)?")
SMOKE_REQUIRED = {"parameters": dict, "metrics": list, "heldout": str, "min_score": float}
SMOKE_OPTIONAL = {"run_args": list, "markers": list}
HEADING_ENTRY = re.compile(r"^#+ .*`(\w+)`")


@dataclass(frozen=True)
class Project:
    """A project folder, the repository it is in, and its MLproject as MLflow loads it (None
    when it does not load: the checks that need it then say nothing more)."""

    folder: Path
    root: Path
    spec: Spec | None

    @property
    def entry_points(self) -> dict:
        """Entry point name -> MLflow's EntryPoint ({} when the MLproject does not load)."""
        return {} if self.spec is None else self.spec._entry_points


def main_parameters(project: Project) -> dict | None:
    """The ``main`` entry point's parameters (MLflow ``Parameter`` objects), or None."""
    point = project.entry_points.get(MAIN)
    return None if point is None else point.parameters


def listing(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values)


def type_name(value: object) -> str:
    return type(value).__name__


# --- MLproject ------------------------------------------------------------------------------


def load_spec(folder: Path) -> tuple[Spec | None, list[str]]:
    """The project as MLflow loads it, or the first line of MLflow's error."""
    try:
        return load_project(str(folder)), []
    except Exception as exc:  # MLflow raises several kinds; each one means "does not load"
        return None, [f"MLproject: does not load: {first_line(exc)}"]


def check_main_entry_point(project: Project) -> list[str]:
    if project.spec is None or main_parameters(project) is not None:
        return []
    return [f"MLproject: no entry point '{MAIN}': `mlflow run` starts '{MAIN}' by default"]


def check_parameter_types(project: Project) -> list[str]:
    if project.spec is None:
        return []
    return [
        f"MLproject: parameter '{name}' of entry point '{entry}' has type '{param.type}': "
        f"expected one of {listing(MLFLOW_PARAM_TYPES)}"
        for entry, point in project.entry_points.items()
        for name, param in point.parameters.items()
        if param.type not in MLFLOW_PARAM_TYPES
    ]


def python_targets(command: str) -> list[tuple[str, str]]:
    """(``-m``, module) and (``script``, path) of each ``python`` a command starts."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    targets = []
    for i, token in enumerate(tokens):
        if not PYTHON.fullmatch(os.path.basename(token)):
            continue
        rest = iter(tokens[i + 1 :])
        for arg in rest:
            if arg == "-m":
                targets.append(("-m", next(rest, "")))
            elif arg.startswith("-"):
                if arg == "-c":
                    break
                continue
            else:
                targets.append(("script", arg))
            break
    return [(kind, target) for kind, target in targets if target and "{" not in target]


def check_commands(project: Project) -> list[str]:
    if project.spec is None:
        return []
    problems = []
    for entry, point in project.entry_points.items():
        for kind, target in python_targets(point.command or ""):
            if kind == "-m":
                module = target.replace(".", "/")
                candidates = [f"{module}.py", f"{module}/__main__.py"]
                expected = f"{candidates[0]} (or {candidates[1]})"
            else:
                candidates = [target]
                expected = target
            if not any((project.folder / path).is_file() for path in candidates):
                shown = f"python -m {target}" if kind == "-m" else f"python {target}"
                problems.append(
                    f"MLproject: entry point '{entry}' runs `{shown}`: "
                    f"expected {expected} in the project folder"
                )
    return problems


def check_paths(project: Project) -> list[str]:
    """A default that names a path outside the folder breaks the project where it is taken."""
    return [
        f"MLproject: parameter '{name}' of entry point '{entry}' defaults to {param.default!r}, "
        "outside the project folder: expected a path inside it (a project runs wherever it "
        "is taken)"
        for entry, point in project.entry_points.items()
        for name, param in point.parameters.items()
        if isinstance(param.default, str)
        and (param.default.startswith("../") or os.path.isabs(param.default))
        and os.path.exists(project.folder / param.default)
    ]


def code_home(project: Project) -> Path | None:
    """The project whose code package this one links to (``pkg -> ../<home>/pkg``), if any."""
    for entry in sorted(project.folder.iterdir()):
        if entry.is_symlink() and entry.name not in SHARED_PACKAGES:
            target = (entry.parent / os.readlink(entry)).resolve()
            home = target.parent
            if (home / "MLproject").is_file() and home.parent == project.folder.parent.resolve():
                return home
    return None


def entry_point_terms(spec: Spec) -> dict:
    return {
        name: (
            point.command,
            {p: (param.type, param.default) for p, param in point.parameters.items()},
        )
        for name, point in spec._entry_points.items()
    }


def check_shared_code(project: Project) -> list[str]:
    home = code_home(project)
    if project.spec is None or home is None:
        return []
    try:
        theirs = entry_point_terms(load_project(str(home)))
    except Exception:  # the home project is reported on its own
        return []
    ours = entry_point_terms(project.spec)
    return [
        f"MLproject: entry point '{name}' differs from that of {home.name}, whose code it runs: "
        f"expected the same parameters, defaults and command as {home.name}/MLproject"
        for name in sorted(set(ours) | set(theirs))
        if ours.get(name) != theirs.get(name)
    ]


# --- Environment ----------------------------------------------------------------------------


def check_environment(project: Project) -> list[str]:
    spec = project.spec
    if spec is None:
        return []
    if spec.env_type == env_type.DOCKER:
        return []  # the Dockerfile: validate_containers.check_dockerfile
    if spec.env_config_path is None:
        return [
            "MLproject: names no environment: expected conda_env, python_env or docker_env, "
            "with mlflow pinned in it"
        ]
    path = Path(spec.env_config_path)
    content, problem = read_yaml(path)
    if problem:
        return [problem]
    if not isinstance(content, dict):
        return [f"{path.name}: is a {type_name(content)}: expected a mapping"]
    if spec.env_type == env_type.CONDA:
        what = "pip list"
        entries = [
            entry
            for item in content.get("dependencies") or []
            if isinstance(item, dict)
            for entry in item.get("pip") or []
        ]
    else:
        what = "dependencies"
        entries = content.get("dependencies") or []
    if not any(isinstance(e, str) and MLFLOW_PIN.fullmatch(e.strip()) for e in entries):
        return [f"{path.name}: mlflow is not pinned in its {what}: expected mlflow==<version>"]
    return []


# --- Files and links ------------------------------------------------------------------------

# Files that MLflow, Python and these checks read as text: they must decode as UTF-8.
TEXT_NAMES = ("MLproject", "Dockerfile", ".dockerignore")
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt", ".cfg", ".ini", ".sh")
READER = "the user who runs make validate and mlflow run"
MAX_LINKS = 40  # the kernel's limit on links followed in one path (ELOOP beyond it)


def link_chain(link: Path) -> str:
    """``a -> b -> a``: the names a looping link leads through, until one repeats."""
    names, path = [link.name], link
    while path.is_symlink() and len(names) <= MAX_LINKS:
        path = path.parent / os.readlink(path)
        names.append(os.path.relpath(path, link.parent))
        if names[-1] in names[:-1]:
            break
    return " -> ".join(names)


def link_problem(link: Path, root: Path) -> str | None:
    """What is wrong with the link ``link`` in a project of the repository ``root``, if anything."""
    target = os.readlink(link)
    if os.path.isabs(target):
        return (
            f"link -> {target} is absolute: expected a relative link, which resolves in every clone"
        )
    try:
        os.stat(link)
    except (FileNotFoundError, NotADirectoryError):
        return f"dangling link -> {target}: nothing there"
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return f"link loop {link_chain(link)}: expected a link that ends at a file or folder"
    resolved = Path(os.path.realpath(link))
    if not resolved.is_relative_to(root):
        return f"link -> {target} points outside the repository: expected a target under {root}"
    if resolved.is_dir() and link.parent.resolve().is_relative_to(resolved):
        return (
            f"link -> {target} leads back to a folder that holds it: expected a target that "
            "does not hold the link (MLflow copies a project with its links followed, which "
            "would never end)"
        )
    return None


def is_text(path: Path) -> bool:
    return path.name in TEXT_NAMES or path.suffix in TEXT_SUFFIXES


def content_problem(path: Path) -> str | None:
    """What keeps the file at ``path`` (a link followed) from being read, if anything: it is
    not a regular file, or it is a text file that is not UTF-8. Raises OSError when it cannot
    be opened."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        kind = FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")
        return f"is {kind}: expected a regular file or folder"
    # Not blocking: a file that turned into a FIFO since the stat above must not hang the check.
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
        data = file.read() if is_text(path) else file.read(1)
    if is_text(path):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = f"0x{data[exc.start]:02x}"
            return f"byte {byte} at offset {exc.start} is not UTF-8: expected UTF-8 text"
    return None


def unreadable(error: OSError, kind: str) -> str:
    return f"cannot be read ({error.strerror}): expected a {kind} that {READER} can read"


def check_files(folder: Path, root: Path) -> list[str]:
    """One problem per file, folder or link of the project folder that cannot be read as the
    other checks and MLflow read it. A link to a folder is checked, not walked into: what it
    leads to is checked where it lives (another project, or a shared package)."""
    problems = []
    root = root.resolve()

    def folder_name(path: str | Path) -> str:
        """``mnist/`` for a folder of the project; ``""`` for the project folder itself, which
        validate's line names (``validate: <project>/: ...``)."""
        relative = Path(path).relative_to(folder).as_posix()
        return "" if relative == "." else f"{relative}/"

    def not_listed(error: OSError) -> None:
        problems.append(f"{folder_name(error.filename)}: {unreadable(error, 'folder')}")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=not_listed):
        try:
            os.stat(os.path.join(dirpath, "."))  # listed, but can its entries be reached?
        except OSError as exc:
            problems.append(f"{folder_name(dirpath)}: {unreadable(exc, 'folder')}")
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            shown = path.relative_to(folder).as_posix()
            try:
                problem = link_problem(path, root) if path.is_symlink() else None
                problem = problem or content_problem(path)
            except OSError as exc:
                problem = unreadable(exc, "folder" if name in dirnames else "file")
            if problem:
                problems.append(f"{shown}: {problem}")
    return problems


# --- smoke.yaml -----------------------------------------------------------------------------


def declared_markers(root: Path) -> list[str]:
    """pytest markers of ``root/pyproject.toml``, else of this repository's."""
    path = root / "pyproject.toml"
    if not path.is_file():
        path = ROOT / "pyproject.toml"
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    markers = config.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", [])
    return [marker.split(":")[0].strip() for marker in markers]


def smoke_type_problem(key: str, value: object, kind: type) -> str | None:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"smoke.yaml: {key} is {value!r}: expected a number"
    elif not isinstance(value, kind):
        return f"smoke.yaml: {key} is a {type_name(value)}: expected a {kind.__name__}"
    elif kind is list and not all(isinstance(item, str) for item in value):
        return f"smoke.yaml: {key} is {value!r}: expected a list of strings"
    return None


def check_smoke(project: Project) -> list[str]:
    path = project.folder / "smoke.yaml"
    if not path.is_file():
        return [f"smoke.yaml: missing: expected {listing(list(SMOKE_REQUIRED))}"]
    config, problem = read_yaml(path)
    if problem:
        return [problem]
    if not isinstance(config, dict):
        return [f"smoke.yaml: is a {type_name(config)}: expected a mapping"]
    kinds = SMOKE_REQUIRED | SMOKE_OPTIONAL
    problems = [f"smoke.yaml: lacks '{key}'" for key in SMOKE_REQUIRED if key not in config]
    for key, value in config.items():
        if key not in kinds:
            problems.append(f"smoke.yaml: unknown key '{key}': expected {listing(list(kinds))}")
        elif problem := smoke_type_problem(key, value, kinds[key]):
            problems.append(problem)
        elif key == "heldout" and value not in HELDOUT:
            problems.append(f"smoke.yaml: heldout '{value}' is not one of {listing(HELDOUT)}")
        elif key == "markers":
            declared = declared_markers(project.root)
            problems += [
                f"smoke.yaml: marker '{marker}' is not declared in pyproject.toml "
                f"[tool.pytest.ini_options] markers: expected one of {listing(declared)}"
                for marker in value
                if marker not in declared
            ]
    params = main_parameters(project)
    given = config.get("parameters")
    if params is not None and isinstance(given, dict):
        problems += [
            f"smoke.yaml: parameter '{name}' is not a parameter of entry point '{MAIN}'"
            for name in given
            if name not in params
        ]
        problems += [
            f"smoke.yaml: parameters lack '{name}', which has no default in MLproject"
            for name, param in params.items()
            if param.default is None and name not in given
        ]
    return problems


# --- README.md ------------------------------------------------------------------------------


def cells(line: str) -> list[str]:
    return [cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")]


def readme_tables(text: str, entry_points: dict) -> dict[str, list[list[str]]]:
    """Entry point -> the rows of its parameter table (header and separator left out)."""
    lines, tables, entry = text.splitlines(), {}, MAIN
    for i, line in enumerate(lines):
        if (heading := HEADING_ENTRY.match(line)) and heading.group(1) in entry_points:
            entry = heading.group(1)
        header = [c.lower() for c in cells(line)[: len(README_HEADER)]]
        if line.lstrip().startswith("|") and header == list(README_HEADER):
            rows = []
            for row in lines[i + 1 :]:
                if not row.lstrip().startswith("|"):
                    break
                if not all(re.fullmatch(r":?-+:?", c) for c in cells(row)):
                    rows.append(cells(row))
            tables[entry] = rows
    return tables


def documented_default(default: object) -> str:
    if default is None:
        return REQUIRED
    return '""' if default == "" else str(default)


def check_table(entry: str, rows: list[list[str]], params: dict) -> list[str]:
    problems, seen = [], set()
    for row in rows:
        if len(row) < len(README_HEADER):
            problems.append(f"README.md: parameter table row {row!r}: expected name, type, default")
            continue
        name, kind, default = row[: len(README_HEADER)]
        seen.add(name)
        param = params.get(name)
        if param is None:
            problems.append(
                f"README.md: parameter table row '{name}' is not a parameter of entry point "
                f"'{entry}'"
            )
            continue
        if kind != param.type:
            problems.append(
                f"README.md: parameter '{name}' has type '{kind}': expected '{param.type}' "
                "(MLproject)"
            )
        if default != documented_default(param.default):
            problems.append(
                f"README.md: parameter '{name}' has default '{default}': expected "
                f"'{documented_default(param.default)}' (MLproject)"
            )
    return problems + [
        f"README.md: parameter table lacks '{name}': expected a row for each parameter of "
        f"entry point '{entry}'"
        for name in params
        if name not in seen
    ]


def check_readme(project: Project) -> list[str]:
    path = project.folder / "README.md"
    if not path.is_file():
        return ["README.md: missing: expected the project, its parameter table and how to run it"]
    if code_home(project) is not None:
        return []  # its parameters are those of the project whose code it runs
    tables = readme_tables(path.read_text(), project.entry_points)
    if MAIN not in tables:
        return [
            "README.md: no parameter table: expected a header line starting "
            "'| parameter | type | default |'"
        ]
    problems = [
        f"README.md: no parameter table of entry point '{entry}': expected one under a heading "
        f"that names `{entry}`"
        for entry in project.entry_points
        if entry not in tables
    ]
    for entry, rows in tables.items():
        if entry in project.entry_points:
            problems += check_table(entry, rows, project.entry_points[entry].parameters)
    return problems


# --- Running --------------------------------------------------------------------------------

CHECKS = (
    check_main_entry_point,
    check_parameter_types,
    check_commands,
    check_paths,
    check_shared_code,
    check_environment,
    check_dockerfile,
    check_dockerignore,
    check_kubernetes,
    check_smoke,
    check_readme,
)


def validate(folder: Path, root: Path) -> list[str]:
    """Every problem of the project in ``folder``, each as ``<file>: <problem>``.

    The checks of content run once every file of the project reads (they and MLflow would
    fail, hang or name the file twice): until then, one problem per file that does not."""
    if problems := check_files(folder, root):
        return problems
    if not (folder / "MLproject").is_file():
        return ["MLproject: missing: every folder under projects/ is an MLflow project"]
    spec, problems = load_spec(folder)
    project = Project(folder, root, spec)
    for check in CHECKS:
        problems += check(project)
    return problems


def project_folders(projects_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in projects_dir.iterdir()
        if path.is_dir() and not path.name.startswith((".", "__"))
    )


def print_table(results: dict[str, list[str]]) -> None:
    width = max([len("project"), *map(len, results)])
    print(f"{'project':<{width}}  {'variant':<7}  {'status':<6}  problems")
    for name, problems in results.items():
        variant = split_folder(name)[1] or "-"
        status = "FAIL" if problems else "ok"
        print(f"{name:<{width}}  {variant:<7}  {status:<6}  {len(problems)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--projects-dir",
        type=folder,
        default=PROJECTS,
        help="the folder of projects; its parent is the repository (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = version_problem(PROG, "mlflow.projects._project_spec")
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    projects_dir = args.projects_dir.absolute()
    # MLflow logs each rendering step at INFO; only the problems belong on stderr.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    results = {
        folder.name: validate(folder, projects_dir.parent)
        for folder in project_folders(projects_dir)
    }
    print_table(results)
    for name, problems in results.items():
        for problem in problems:
            print(f"{PROG}: {name}/{problem}", file=sys.stderr)
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
