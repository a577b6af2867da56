"""``make validate``'s checks of a ``docker_env`` project: its Dockerfile, its ``.dockerignore``
and its Kubernetes files (validate.py runs them with the others).

- the Dockerfile pip-installs a pinned mlflow, takes ``ARG BASE_IMAGE`` / ``FROM ${BASE_IMAGE}``
  and sets no credential (no ENV or ARG of ``layout.CREDENTIAL_VARS``, no COPY or ADD of a
  ``.env`` file);
- the ``.dockerignore`` keeps ``layout.DOCKERIGNORED`` out, by Docker's own matching rules;
- each ``kubernetes*_config.json`` names the image repository and a Job template in this
  folder (``kube-job-template-path`` relative to it); the template carries MLflow's
  placeholders, and the Job that MLflow's own code renders from it for each entry point
  validates against the Kubernetes API schema (``layout.KUBERNETES_VERSION``); an Indexed Job
  starts all its pods at once and tells them how many there are (``JOB_COMPLETIONS``), which
  the distributed launcher compares with its ``nnodes``; every Job states its retries
  (``backoffLimit``) and a deadline (``activeDeadlineSeconds``), and its pod the hardening of
  ``manifests.pod_problems`` (also checked on the tracking server's pod by ``make deploy-server``).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes_validate
import yaml
from docker.utils.build import PatternMatcher
from mlflow.projects import env_type
from mlflow.projects import kubernetes as kb
from mlflow.projects.utils import get_entry_point_command, get_run_env_vars

from mlflow_project_store.layout import (
    CREDENTIAL_VARS,
    DOCKERIGNORED,
    K8S_CONFIG,
    K8S_PLACEHOLDERS,
    KUBERNETES_VERSION,
)
from mlflow_project_store.manifests import first_line, lookup, pod_problems, shown

if TYPE_CHECKING:
    from mlflow_project_store.validate import Project

# `mlflow==3.17.2` or `mlflow[extras]==3.17.2`, not `mlflow-skinny==...` nor `xmlflow==...`.
MLFLOW_PIN = re.compile(r"(?<![\w.-])mlflow(\[[^\]]*\])?==[0-9][\w.+-]*")
PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")
ENV_FILE = re.compile(r"(^|.*/)(\.env|\.env\..+|.+\.env)$")
FAKE_IMAGE = "registry.example.com/project:validate"
FAKE_DIGEST = "sha256:" + "0" * 64
FAKE_RUN_ID = "0" * 32
# Values for parameters without a default when a Job is rendered; a `path` parameter gets
# the project folder, since MLflow checks that a local path exists.
FAKE_VALUES = {"int": "1", "float": "0.5", "string": "x", "uri": "file:///tmp/x"}
POD_COUNTS = ("completions", "parallelism")
POD_COUNT_VAR = "JOB_COMPLETIONS"


def read_yaml(path: Path) -> tuple[Any, str | None]:
    """(content, None), or (None, a problem naming the file) when it does not parse."""
    try:
        return yaml.safe_load(path.read_text()), None
    except (OSError, yaml.YAMLError) as exc:
        return None, f"{path.name}: does not parse as YAML: {first_line(exc)}"


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
    if project.spec is None or project.spec.env_type != env_type.DOCKER:
        return []
    if not path.is_file():
        image = project.spec.docker_env["image"]
        return [f"Dockerfile: missing: expected the Dockerfile that builds image '{image}'"]
    instructions = dockerfile_instructions(path)
    problems = []
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    if not any(PIP_INSTALL.search(run) and MLFLOW_PIN.search(run) for run in runs):
        problems.append(
            "Dockerfile: does not pip-install a pinned mlflow: "
            "expected RUN pip install ... mlflow==<version>"
        )
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


def check_dockerignore(project: Project) -> list[str]:
    if project.spec is None or project.spec.env_type != env_type.DOCKER:
        return []
    path = project.folder / ".dockerignore"
    if not path.is_file():
        return [
            ".dockerignore: missing: expected one that keeps credential files, .git and "
            "local stores out of the images (example/project/dockerignore)"
        ]
    patterns = [line.strip() for line in path.read_text().splitlines()]
    matcher = PatternMatcher([p for p in patterns if p and not p.startswith("#")])
    return [
        f".dockerignore: lets {name} into the image: expected a pattern that keeps it out"
        for name in DOCKERIGNORED
        if not matcher.matches(name)
    ]


# --- Kubernetes -----------------------------------------------------------------------------


def check_kubernetes(project: Project) -> list[str]:
    configs = sorted(p for p in project.folder.iterdir() if K8S_CONFIG.fullmatch(p.name))
    if not configs:
        return []
    if project.spec is not None and project.spec.env_type != env_type.DOCKER:
        return ["MLproject: a Kubernetes project needs docker_env: expected an image"]
    return [problem for config in configs for problem in check_config(project, config)]


def check_config(project: Project, path: Path) -> list[str]:
    name = path.name
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{name}: does not parse as JSON: {first_line(exc)}"]
    if not isinstance(config, dict):
        return [f"{name}: is a {type(config).__name__}: expected a JSON object"]
    problems = []
    if not isinstance(config.get("repository-uri"), str):
        problems.append(
            f"{name}: lacks 'repository-uri': expected the image repository, "
            "e.g. localhost:5050/<project>"
        )
    ref = config.get("kube-job-template-path")
    template = project.folder / ref if isinstance(ref, str) else None
    if template is None or template.parent.resolve() != project.folder.resolve():
        return [
            *problems,
            f"{name}: kube-job-template-path is {ref!r}: expected the name of a Job template "
            "in this folder (the path is read relative to the project folder)",
        ]
    if not template.is_file():
        return [*problems, f"{name}: names {ref}, which is missing"]
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
    problems += check_pods(name, content)
    problems += [f"{name}: {problem}" for problem in job_problems(content)]
    for entry in project.spec._entry_points:
        try:
            job = render_job(project, entry, content)
        except Exception as exc:  # a template without the fields MLflow fills, a bad default
            problems.append(
                f"{name}: MLflow cannot render the Job for entry point '{entry}': "
                f"{type(exc).__name__}: {first_line(exc)}"
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
                f"{type(exc).__name__}: {first_line(exc)}"
            )
    return problems


def check_pods(name: str, template: Any) -> list[str]:
    """An Indexed Job (one pod per node) starts its pods together (``completions`` equals
    ``parallelism``) and gives them that count as ``JOB_COMPLETIONS``."""
    spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(spec, dict) or spec.get("completionMode") != "Indexed":
        return []
    pods = {field: spec.get(field) for field in POD_COUNTS}
    try:
        env = spec["template"]["spec"]["containers"][0].get("env") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        env = []
    told = next((e.get("value") for e in env if e.get("name") == POD_COUNT_VAR), None)
    if pods["completions"] == pods["parallelism"] and str(told) == str(pods["completions"]):
        return []
    shown = ", ".join(f"{field} {value}" for field, value in pods.items())
    return [
        f"{name}: spec has {shown} and {POD_COUNT_VAR} {told}: expected the same number in "
        "all three (one pod per node, started together)"
    ]


def job_problems(job: Any) -> list[str]:
    """What a Job lacks of the limits every Job here states (its retries, and a deadline after
    which Kubernetes stops its pods whatever they do), then what its pod lacks of
    :func:`pod_problems`."""
    spec = lookup(job, "spec")
    problems = []
    deadline = lookup(spec, "activeDeadlineSeconds")
    if type(deadline) is not int or deadline <= 0:
        problems.append(
            f"spec.activeDeadlineSeconds is {shown(deadline)}: expected the seconds after which "
            "Kubernetes stops the Job, e.g. 14400 (4 hours)"
        )
    retries = lookup(spec, "backoffLimit")
    if type(retries) is not int or retries < 0:
        problems.append(
            f"spec.backoffLimit is {shown(retries)}: expected it stated, e.g. 0 (a failed "
            "training is not retried)"
        )
    return problems + pod_problems(lookup(spec, "template", "spec"))


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
