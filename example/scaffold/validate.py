"""Check every project under ``projects/`` against the repository's conventions.

    python -m scaffold.validate [--projects-dir DIR]      (``make validate``)

Every folder under DIR must hold an ``MLproject``; the repository is DIR's parent (links must
stay inside it, and ``kube-job-template-path`` is relative to it). For each project it checks:

- ``MLproject`` loads with MLflow's own loader, has a ``main`` entry point, its parameter types
  are MLflow's, and each command's ``python -m pkg.mod`` / ``python script.py`` names a file
  that exists in the project folder (links followed, as MLflow copies them);
- the environment file parses and pins ``mlflow==``: ``conda.yaml``'s pip list,
  ``python_env.yaml``'s dependencies, or for ``docker_env`` the Dockerfile that builds the
  image (this folder's, else that of the folder whose MLproject names the same image; a shared
  Dockerfile's contents are checked with the project that holds it);
- a Dockerfile takes ``ARG BASE_IMAGE`` / ``FROM ${BASE_IMAGE}`` and sets no credential
  (no ENV or ARG of ``layout.CREDENTIAL_VARS``, no COPY or ADD of a ``.env`` file);
- a Kubernetes project (``kubernetes_config.json``): the config names the Job template and the
  repository URI, the template carries MLflow's placeholders, and the Job that MLflow's own code
  renders from it validates against the Kubernetes API schema (``layout.KUBERNETES_VERSION``);
  when ``main`` has an ``nnodes`` parameter (one pod per node), the Job's ``completions`` and
  ``parallelism`` equal its default;
- every link in the project resolves, is relative and stays inside the repository;
- ``smoke.yaml`` has the keys and types that ``tests/helpers/projects.py`` reads;
- ``README.md`` has a parameter table that matches the ``main`` entry point.

The README table. Its header starts ``| parameter | type | default |`` (more columns may
follow), then one row per parameter of ``main``, in any order: the name, its MLflow type and
its default as MLflow passes it to the command (``str(default)``: ``5``, ``1e-3``, ``bundled``).
Backticks are ignored; an empty-string default is written ``""``; a parameter without a
default (``-P`` must give it) is written ``required``. Cells must not contain ``|``.

A table goes to stdout (project, variant, status, problems); each problem goes to stderr as
``validate: <project>/<file>: <what is wrong>: <what is expected>``. Exit status 1 when any
problem is found, else 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shlex
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from mlflow.projects import env_type
from mlflow.projects import kubernetes as kb
from mlflow.projects._project_spec import Project as Spec
from mlflow.projects._project_spec import load_project
from mlflow.projects.utils import get_entry_point_command, get_run_env_vars

from project_tools.cli import OneLineParser, folder
from scaffold.layout import (
    CREDENTIAL_VARS,
    HELDOUT,
    K8S_FILES,
    K8S_PLACEHOLDERS,
    KUBERNETES_VERSION,
    MLFLOW_PARAM_TYPES,
    PROJECTS,
    ROOT,
    split_folder,
)

PROG = "validate"
MAIN = "main"
README_HEADER = ("parameter", "type", "default")
REQUIRED = "required"
# `mlflow==3.17.2` or `mlflow[extras]==3.17.2`, not `mlflow-skinny==...` nor `xmlflow==...`.
MLFLOW_PIN = re.compile(r"(?<![\w.-])mlflow(\[[^\]]*\])?==[0-9][\w.+-]*")
PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")
PYTHON = re.compile(r"python(3(\.\d+)?)?")
ENV_FILE = re.compile(r"(^|.*/)(\.env|\.env\..+|.+\.env)$")
ENV_MANAGERS = ("local", "conda", "virtualenv", "uv")
SMOKE_REQUIRED = {"parameters": dict, "metrics": list, "heldout": str, "min_score": float}
SMOKE_OPTIONAL = {"run_args": list, "markers": list, "env_manager": str, "covered_by": str}
FAKE_IMAGE = "registry.example.com/project:validate"
FAKE_DIGEST = "sha256:" + "0" * 64
FAKE_RUN_ID = "0" * 32
# Values for parameters without a default when a Job is rendered; a `path` parameter gets
# the project folder, since MLflow checks that a local path exists.
FAKE_VALUES = {"int": "1", "float": "0.5", "string": "x", "uri": "file:///tmp/x"}
# A distributed project's node count, and the Job fields that must equal its default.
NNODES = "nnodes"
POD_COUNTS = ("completions", "parallelism")


@dataclass(frozen=True)
class Project:
    """A project folder, the repository it is in, and its MLproject as MLflow loads it (None
    when it does not load: the checks that need it then say nothing more)."""

    folder: Path
    root: Path
    spec: Spec | None

    @property
    def projects_dir(self) -> Path:
        return self.folder.parent


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def read_yaml(path: Path) -> tuple[Any, str | None]:
    """(content, None), or (None, a problem naming the file) when it does not parse."""
    try:
        return yaml.safe_load(path.read_text()), None
    except (OSError, yaml.YAMLError) as exc:
        return None, f"{path.name}: does not parse as YAML: {first_line(exc)}"


def main_parameters(project: Project) -> dict | None:
    """The ``main`` entry point's parameters (MLflow ``Parameter`` objects), or None."""
    if project.spec is None or MAIN not in project.spec._entry_points:
        return None
    return project.spec._entry_points[MAIN].parameters


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
        for entry, point in project.spec._entry_points.items()
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
    for entry, point in project.spec._entry_points.items():
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


# --- Environment ----------------------------------------------------------------------------


def check_environment(project: Project) -> list[str]:
    spec = project.spec
    if spec is None:
        return []
    if spec.env_type == env_type.DOCKER:
        return check_docker_image(project)
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


def image_of(folder: Path) -> str | None:
    """The docker_env image that ``folder/MLproject`` names, if any."""
    try:
        content = yaml.safe_load((folder / "MLproject").read_text())
        return content["docker_env"]["image"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return None


def dockerfile_for(project: Project, image: str) -> Path | None:
    """This folder's Dockerfile, else that of a folder whose MLproject names the same image."""
    own = project.folder / "Dockerfile"
    if own.is_file():
        return own
    for mlproject in sorted(project.projects_dir.glob("*/MLproject")):
        folder = mlproject.parent
        if (folder / "Dockerfile").is_file() and image_of(folder) == image:
            return folder / "Dockerfile"
    return None


def check_docker_image(project: Project) -> list[str]:
    image = project.spec.docker_env["image"]
    dockerfile = dockerfile_for(project, image)
    if dockerfile is None:
        return [
            f"MLproject: no Dockerfile builds image '{image}': expected a Dockerfile here, or "
            f"in a folder under {project.projects_dir.name}/ whose MLproject names that image"
        ]
    if dockerfile.parent != project.folder:
        return []  # checked with the project that holds it
    runs = [args for keyword, args in dockerfile_instructions(dockerfile) if keyword == "RUN"]
    if not any(PIP_INSTALL.search(run) and MLFLOW_PIN.search(run) for run in runs):
        return [
            "Dockerfile: does not pip-install a pinned mlflow: "
            "expected RUN pip install ... mlflow==<version>"
        ]
    return []


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction: continuations joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    if pending:
        keyword, _, args = pending.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def words(args: str) -> list[str]:
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def check_dockerfile(project: Project) -> list[str]:
    path = project.folder / "Dockerfile"
    if not path.is_file():
        return []
    instructions = dockerfile_instructions(path)
    problems = []
    arg_names = [words(args)[0].split("=")[0] for key, args in instructions if key == "ARG"]
    froms = [args for key, args in instructions if key == "FROM"]
    first_from = words(froms[0])[0] if froms else ""
    if "BASE_IMAGE" not in arg_names or first_from not in ("${BASE_IMAGE}", "$BASE_IMAGE"):
        problems.append(
            f"Dockerfile: does not take BASE_IMAGE (first FROM is '{first_from}'): expected "
            "ARG BASE_IMAGE=python:3.11-slim, then FROM ${BASE_IMAGE}"
        )
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG"):
            tokens = words(args)
            # `ENV KEY=value KEY2=value`, or the legacy `ENV KEY value`.
            names = [t.split("=")[0] for t in tokens] if "=" in args else tokens[:1]
            problems += [
                f"Dockerfile: {keyword} sets {name}: credentials reach a container at run "
                "time, never through the image"
                for name in names
                if name in CREDENTIAL_VARS
            ]
        elif keyword in ("COPY", "ADD"):
            sources = [t for t in words(args) if not t.startswith("--")][:-1]
            problems += [
                f"Dockerfile: {keyword} {source} puts a credentials file in the image: "
                "pass it at run time (-A env-file=.env)"
                for source in sources
                if ENV_FILE.match(source)
            ]
    return problems


# --- Kubernetes -----------------------------------------------------------------------------


def check_kubernetes(project: Project) -> list[str]:
    config_name, template_name = K8S_FILES
    config_path = project.folder / config_name
    if not config_path.is_file():
        if split_folder(project.folder.name)[1] == "k8s":
            return [f"{config_name}: missing: a k8s project needs {listing(K8S_FILES)}"]
        return []
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{config_name}: does not parse as JSON: {first_line(exc)}"]
    if not isinstance(config, dict):
        return [f"{config_name}: is a {type_name(config)}: expected a JSON object"]
    problems = []
    if not isinstance(config.get("repository-uri"), str):
        problems.append(
            f"{config_name}: lacks 'repository-uri': expected the image repository, "
            "e.g. localhost:5050/<project>"
        )
    if project.spec is not None and project.spec.env_type != env_type.DOCKER:
        problems.append("MLproject: a Kubernetes project needs docker_env: expected an image")
    template = project.folder / template_name
    expected = template.relative_to(project.root).as_posix()
    ref = config.get("kube-job-template-path")
    # MLflow opens the path from where `mlflow run` runs: the repository root, here.
    if not isinstance(ref, str) or os.path.normpath(ref) != expected:
        problems.append(
            f"{config_name}: kube-job-template-path is {ref!r}: expected '{expected}' "
            "(this project's template, relative to the repository root)"
        )
    if not template.is_file():
        return [*problems, f"{template_name}: missing: a k8s project needs it"]
    return problems + check_job_template(project, template)


def check_job_template(project: Project, template: Path) -> list[str]:
    name = template.name
    text = template.read_text()
    problems = [
        f'{name}: lacks MLflow\'s placeholder "{placeholder}": expected it where MLflow fills it'
        for placeholder in K8S_PLACEHOLDERS
        if placeholder not in text
    ]
    content, problem = read_yaml(template)
    if problem:
        return [*problems, problem]
    if project.spec is None:
        return problems
    problems += check_pods(project, name, content)
    for entry in project.spec._entry_points:
        try:
            job = render_job(project, entry, content)
        except Exception as exc:  # a template without the fields MLflow fills, a bad default
            problems.append(
                f"{name}: MLflow cannot render the Job for entry point '{entry}': "
                f"{type_name(exc)}: {first_line(exc)}"
            )
            continue
        try:
            kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.absolute_path) or "the top level"
            problems.append(
                f"{name}: the Job that MLflow renders fails Kubernetes {KUBERNETES_VERSION} "
                f"validation at {where}: {exc.message}"
            )
        except Exception as exc:  # no apiVersion or kind, an unknown kind
            problems.append(
                f"{name}: the Job that MLflow renders cannot be validated: "
                f"{type_name(exc)}: {first_line(exc)}"
            )
    return problems


def check_pods(project: Project, name: str, template: Any) -> list[str]:
    """One pod per node: the Job's ``completions`` and ``parallelism`` equal the default of
    ``main``'s ``nnodes`` parameter, else the ranks wait for pods that never start."""
    nnodes = (main_parameters(project) or {}).get(NNODES)
    spec = template.get("spec") if isinstance(template, dict) else None
    if nnodes is None or nnodes.default is None or not isinstance(spec, dict):
        return []
    pods = {field: spec.get(field) for field in POD_COUNTS}
    if all(str(value) == str(nnodes.default) for value in pods.values()):
        return []
    shown = ", ".join(f"{field} {value}" for field, value in pods.items())
    return [
        f"{name}: spec has {shown}: expected both {nnodes.default}, the default of "
        f"parameter '{NNODES}' (one pod per node)"
    ]


def render_job(project: Project, entry: str, template: Any) -> dict:
    """The Job exactly as ``mlflow run --backend kubernetes`` submits it, with a fake image,
    digest and run id, and stand-in values for parameters without a default."""
    spec = project.spec
    params = {
        name: str(project.folder) if param.type == "path" else FAKE_VALUES.get(param.type, "x")
        for name, param in spec._entry_points[entry].parameters.items()
        if param.default is None or param.type == "path"
    }
    with tempfile.TemporaryDirectory() as storage:
        command = get_entry_point_command(spec, entry, params, storage)
    return kb._get_kubernetes_job_definition(
        spec.name,
        FAKE_IMAGE,
        FAKE_DIGEST,
        kb._get_run_command(command),
        get_run_env_vars(FAKE_RUN_ID, "0"),
        copy.deepcopy(template),
    )


# --- Links ----------------------------------------------------------------------------------


def check_links(project: Project) -> list[str]:
    problems = []
    root = project.root.resolve()
    for dirpath, dirnames, filenames in os.walk(project.folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(dirnames + filenames):
            link = Path(dirpath, name)
            if not link.is_symlink():
                continue
            shown = link.relative_to(project.folder).as_posix()
            target = os.readlink(link)
            resolved = (link.parent / target).resolve()
            if os.path.isabs(target):
                problems.append(
                    f"{shown}: link -> {target} is absolute: expected a relative link, "
                    "which resolves in every clone"
                )
            elif not resolved.exists():
                problems.append(f"{shown}: dangling link -> {target}: nothing there")
            elif not resolved.is_relative_to(root):
                problems.append(
                    f"{shown}: link -> {target} points outside the repository: "
                    f"expected a target under {root}"
                )
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
        elif key == "env_manager" and value not in ENV_MANAGERS:
            problems.append(
                f"smoke.yaml: env_manager '{value}' is not one of {listing(ENV_MANAGERS)}"
            )
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


def readme_rows(text: str) -> list[list[str]] | None:
    """The rows of the parameter table (header and separator left out), or None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and [
            c.lower() for c in cells(line)[: len(README_HEADER)]
        ] == list(README_HEADER):
            rows = []
            for row in lines[i + 1 :]:
                if not row.lstrip().startswith("|"):
                    break
                if not all(re.fullmatch(r":?-+:?", c) for c in cells(row)):
                    rows.append(cells(row))
            return rows
    return None


def documented_default(default: object) -> str:
    if default is None:
        return REQUIRED
    return '""' if default == "" else str(default)


def check_readme(project: Project) -> list[str]:
    path = project.folder / "README.md"
    if not path.is_file():
        return ["README.md: missing: expected the project, its parameter table and how to run it"]
    rows = readme_rows(path.read_text())
    if rows is None:
        return [
            "README.md: no parameter table: expected a header line starting "
            "'| parameter | type | default |'"
        ]
    params = main_parameters(project)
    if params is None:
        return []
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
                f"'{MAIN}'"
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
    problems += [
        f"README.md: parameter table lacks '{name}': expected a row for each parameter of "
        f"entry point '{MAIN}'"
        for name in params
        if name not in seen
    ]
    return problems


# --- Running --------------------------------------------------------------------------------

CHECKS = (
    check_main_entry_point,
    check_parameter_types,
    check_commands,
    check_environment,
    check_dockerfile,
    check_kubernetes,
    check_links,
    check_smoke,
    check_readme,
)


def validate(folder: Path, root: Path) -> list[str]:
    """Every problem of the project in ``folder``, each as ``<file>: <problem>``."""
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
