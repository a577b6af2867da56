"""`make validate`: the shipped projects pass, and each kind of broken file is named.

The broken cases run mlflow_project_store.validate's ``main`` in this process (the command line
itself is `make validate`, above) on a copy of ``projects/`` and ``example/`` (links kept as
links, so they resolve inside the copy), one file broken per case. Files that cannot be read at
all (permissions) are broken together and checked by `make validate` itself, as a user runs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import mlflow
import pytest

from mlflow_project_store import validate as validate_module
from mlflow_project_store.layout import PROJECTS, ROOT
from mlflow_project_store.mlflow_version import WRITTEN_FOR, version_problem
from tests.helpers.commands import assert_one_line_error, make, make_command

COPY_IGNORE = shutil.ignore_patterns("__pycache__", "mlruns", "mlflow.db")


def table(stdout: str) -> dict[str, list[str]]:
    """project -> [variant, status, problems] from validate's stdout table."""
    rows = [line.split() for line in stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[1:] for row in rows}


def test_make_validate_passes_on_the_repository() -> None:
    result = make("validate")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table(result.stdout)
    projects = sorted(path.parent.name for path in PROJECTS.glob("*/MLproject"))
    assert sorted(rows) == projects, result.stdout
    assert all(row[1:] == ["ok", "0"] for row in rows.values()), result.stdout
    assert result.stderr == ""


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    for folder in ("projects", "example"):
        shutil.copytree(ROOT / folder, tmp_path / folder, symlinks=True, ignore=COPY_IGNORE)
    return tmp_path


class Outcome(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def validate(repo: Path, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """validate's ``main`` on ``repo/projects``; the mlflow log level it lowers is restored."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    try:
        status = validate_module.main(["--projects-dir", str(repo / "projects")])
    finally:
        logger.setLevel(level)
    out = capsys.readouterr()
    return Outcome(status, out.out, out.err)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--bogus"], "validate: error: unrecognized arguments: --bogus"),
        (["--projects-dir", "/no/such/folder"], "no such folder '/no/such/folder'"),
    ],
    ids=["unknown-flag", "missing-folder"],
)
def test_bad_argument_is_one_line(
    args: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(validate_module.parse_args, args, reason, lambda: capsys.readouterr().err)


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: no {old!r} to replace"
    path.write_text(text.replace(old, new, 1))


def relink(link: Path, target: str) -> None:
    link.unlink()
    os.symlink(target, link)


def link_loop(folder: Path) -> None:
    """``a -> b`` and ``b -> a`` in ``folder``."""
    os.symlink("b", folder / "a")
    os.symlink("a", folder / "b")


def not_utf8(path: Path) -> None:
    """Bytes 0xff 0xfe (a UTF-16 byte order mark) before the file's text."""
    path.write_bytes(b"\xff\xfe" + path.read_bytes())


def link_outside(link: Path) -> None:
    """``link`` made a relative link to this repository's README.md, outside the copy."""
    relink(link, os.path.relpath(ROOT / "README.md", link.parent))


def test_the_copy_itself_passes(repo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = validate(repo_copy, capsys)
    assert result.returncode == 0, result.stderr[-3000:]


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "mlproject-does-not-load": (
        lambda p: replace(p / "mnist-conda/MLproject", "entry_points:", "entry_points: ["),
        "validate: mnist-conda/MLproject: does not load: ",
    ),
    "missing-module": (
        lambda p: replace(p / "mnist-docker/MLproject", "-m mnist.train", "-m mnist.trainer"),
        "validate: mnist-docker/MLproject: entry point 'main' runs `python -m mnist.trainer`: "
        "expected mnist/trainer.py (or mnist/trainer/__main__.py) in the project folder",
    ),
    "integer-type": (
        lambda p: replace(p / "mnist-conda/MLproject", "{type: int,", "{type: integer,"),
        "validate: mnist-conda/MLproject: parameter 'epochs' of entry point 'main' has type "
        "'integer': expected one of string, float, int, path, uri",
    ),
    "conda-without-mlflow": (
        lambda p: replace(p / "mnist-conda/conda.yaml", "- mlflow==", "- mlflow-skinny=="),
        "validate: mnist-conda/conda.yaml: mlflow is not pinned in its pip list: "
        "expected mlflow==<version>",
    ),
    "conda-does-not-parse": (
        lambda p: replace(p / "mnist-conda/conda.yaml", "dependencies:", "dependencies: ["),
        "validate: mnist-conda/conda.yaml: does not parse as YAML: ",
    ),
    "dockerfile-without-mlflow-pin": (
        lambda p: replace(p / "elasticnet-docker/Dockerfile", "mlflow==", "mlflow>="),
        "validate: elasticnet-docker/Dockerfile: does not pip-install a pinned mlflow: "
        "expected RUN pip install ... mlflow==<version>",
    ),
    "dockerfile-copies-env-file": (
        lambda p: replace(
            p / "elasticnet-docker/Dockerfile",
            "ENV HOME=",
            "COPY .env /home/mlflow/.env\nENV HOME=",
        ),
        "validate: elasticnet-docker/Dockerfile: COPY .env puts a credentials file in the image: "
        "pass it at run time (-A env-file=.env)",
    ),
    "dockerfile-without-base-image": (
        lambda p: replace(
            p / "elasticnet-docker/Dockerfile",
            "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}",
            "FROM python:3.11-slim",
        ),
        "validate: elasticnet-docker/Dockerfile: does not take BASE_IMAGE (first FROM is "
        "'python:3.11-slim'): expected ARG BASE_IMAGE=python:3.11-slim, then FROM ${BASE_IMAGE}",
    ),
    "dockerfile-with-credential": (
        lambda p: replace(
            p / "mnist-docker/Dockerfile",
            "ENV VIRTUAL_ENV",
            "ENV AWS_SECRET_ACCESS_KEY=placeholder\nENV VIRTUAL_ENV",
        ),
        "validate: mnist-docker/Dockerfile: ENV sets AWS_SECRET_ACCESS_KEY: credentials reach "
        "a container at run time, never through the image",
    ),
    "template-without-placeholder": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_job_template.yaml",
            '["{replaced with MLflow Project entry point command}"]',
            '["python"]',
        ),
        "validate: mnist-docker/kubernetes_job_template.yaml: lacks MLflow's placeholder "
        '"{replaced with MLflow Project entry point command}": expected it where MLflow fills it',
    ),
    "template-fails-schema": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_job_template.yaml",
            "backoffLimit: 0",
            'backoffLimit: "none"',
        ),
        "validate: mnist-docker/kubernetes_job_template.yaml: the Job that MLflow renders fails "
        "Kubernetes 1.33 validation at spec.backoffLimit: 'none' is not of type",
    ),
    "k8s-config-not-json": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_config.json", '"mlflow-store",', '"mlflow-store"'
        ),
        "validate: mnist-docker/kubernetes_config.json: does not parse as JSON: ",
    ),
    "k8s-config-without-repository": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_config.json", '"repository-uri"', '"repository"'
        ),
        "validate: mnist-docker/kubernetes_config.json: lacks 'repository-uri': expected the "
        "image repository, e.g. localhost:5050/<project>",
    ),
    "k8s-config-names-a-template-elsewhere": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_config.json",
            '"kubernetes_job_template.yaml"',
            '"projects/mnist-docker/kubernetes_job_template.yaml"',
        ),
        "validate: mnist-docker/kubernetes_config.json: kube-job-template-path is "
        "'projects/mnist-docker/kubernetes_job_template.yaml': expected the name of a Job "
        "template in this folder (the path is read relative to the project folder)",
    ),
    "pods-differ-from-job-completions": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_distributed_job_template.yaml",
            "completions: 2",
            "completions: 3",
        ),
        "validate: mnist-docker/kubernetes_distributed_job_template.yaml: spec has completions "
        "3, parallelism 2 and JOB_COMPLETIONS 2: expected the same number in all three",
    ),
    "job-with-a-writable-root": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_job_template.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
        ),
        "validate: mnist-docker/kubernetes_job_template.yaml: spec.template.spec.containers[0]."
        "securityContext.readOnlyRootFilesystem is false: expected true",
    ),
    "job-without-tmp-volume": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_job_template.yaml", "- {name: tmp, mountPath: /tmp}", ""
        ),
        "validate: mnist-docker/kubernetes_job_template.yaml: spec.template.spec.containers[0] "
        "mounts no emptyDir at /tmp: expected one",
    ),
    "job-without-a-deadline": (
        lambda p: replace(
            p / "mnist-docker/kubernetes_distributed_job_template.yaml",
            "activeDeadlineSeconds: 14400",
            "",
        ),
        "validate: mnist-docker/kubernetes_distributed_job_template.yaml: "
        "spec.activeDeadlineSeconds is missing: expected the seconds after which Kubernetes "
        "stops the Job",
    ),
    "docker-entry-point-differs-from-the-code-home": (
        lambda p: replace(p / "mnist-docker/MLproject", "default: 14}", "default: 15}"),
        "validate: mnist-docker/MLproject: entry point 'main' differs from that of mnist-conda, "
        "whose code it runs: expected the same parameters, defaults and command",
    ),
    "default-outside-the-project": (
        lambda p: replace(
            p / "mnist-sweep/MLproject", "default: mnist-conda}", "default: ../mnist-conda}"
        ),
        "validate: mnist-sweep/MLproject: parameter 'project' of entry point 'main' defaults to "
        "'../mnist-conda', outside the project folder",
    ),
    "dockerignore-lets-env-in": (
        lambda p: replace(
            p / "elasticnet-docker/.dockerignore", "**/.env\n**/.env.*\n**/*.env\n", ""
        ),
        "validate: elasticnet-docker/.dockerignore: lets .env into the image",
    ),
    "readme-distributed-table-lacks-a-row": (
        lambda p: replace(p / "mnist-conda/README.md", "| `nproc_per_node` | int | `2` |", ""),
        "validate: mnist-conda/README.md: parameter table lacks 'nproc_per_node': expected a row "
        "for each parameter of entry point 'distributed'",
    ),
    "link-outside-the-repository": (
        lambda p: relink(p / "mnist-conda/data_loader", "../../.."),
        "validate: mnist-conda/data_loader: link -> ../../.. points outside the repository: "
        "expected a target under ",
    ),
    "absolute-link": (
        lambda p: relink(p / "mnist-conda/data_loader", str(ROOT / "example" / "data_loader")),
        f"validate: mnist-conda/data_loader: link -> {ROOT / 'example' / 'data_loader'} is "
        "absolute: expected a relative link, which resolves in every clone",
    ),
    "dangling-link": (
        lambda p: relink(p / "elasticnet-docker/data_loader", "../../example/no_such_loader"),
        "validate: elasticnet-docker/data_loader: dangling link -> ../../example/no_such_loader: "
        "nothing there",
    ),
    "unknown-heldout": (
        lambda p: replace(
            p / "elasticnet-docker/smoke.yaml", "heldout: diabetes", "heldout: cifar"
        ),
        "validate: elasticnet-docker/smoke.yaml: heldout 'cifar' is not one of "
        "mnist, mnist-flat, diabetes",
    ),
    "readme-wrong-default": (
        lambda p: replace(
            p / "mnist-conda/README.md", "| `seed` | int | `42` |", "| seed | int | 7 |"
        ),
        "validate: mnist-conda/README.md: parameter 'seed' has default '7': expected '42' "
        "(MLproject)",
    ),
    "folder-without-mlproject": (
        lambda p: (p / "notes").mkdir(),
        "validate: notes/MLproject: missing: every folder under projects/ is an MLflow project",
    ),
}


# Files that do not read as MLflow and the checks read them: each is named in one line, the
# rest of its project is not checked until it reads, and the other projects are.
UNREADABLE_BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "link-loop": (
        lambda p: link_loop(p / "mnist-conda"),
        "validate: mnist-conda/a: link loop a -> b -> a: expected a link that ends at a file "
        "or folder",
    ),
    "link-to-itself": (
        lambda p: os.symlink("self", p / "elasticnet-docker/elasticnet/self"),
        "validate: elasticnet-docker/elasticnet/self: link loop self -> self: expected a link "
        "that ends at a file or folder",
    ),
    "link-back-into-the-project": (
        lambda p: os.symlink("..", p / "mnist-conda/up"),
        "validate: mnist-conda/up: link -> .. leads back to a folder that holds it: expected a "
        "target that does not hold the link",
    ),
    "readme-link-outside-the-repository": (
        lambda p: link_outside(p / "mnist-conda/README.md"),
        "validate: mnist-conda/README.md: link -> ../",
    ),
    "mlproject-not-utf8": (
        lambda p: not_utf8(p / "mnist-conda/MLproject"),
        "validate: mnist-conda/MLproject: byte 0xff at offset 0 is not UTF-8: expected UTF-8 text",
    ),
    "readme-not-utf8": (
        lambda p: not_utf8(p / "elasticnet-docker/README.md"),
        "validate: elasticnet-docker/README.md: byte 0xff at offset 0 is not UTF-8: expected "
        "UTF-8 text",
    ),
    "conda-not-utf8": (
        lambda p: not_utf8(p / "mnist-conda/conda.yaml"),
        "validate: mnist-conda/conda.yaml: byte 0xff at offset 0 is not UTF-8: expected UTF-8 text",
    ),
    "python-not-utf8": (
        lambda p: not_utf8(p / "mnist-conda/mnist/train.py"),
        "validate: mnist-conda/mnist/train.py: byte 0xff at offset 0 is not UTF-8: expected "
        "UTF-8 text",
    ),
    "dockerfile-not-utf8": (
        lambda p: not_utf8(p / "mnist-docker/Dockerfile"),
        "validate: mnist-docker/Dockerfile: byte 0xff at offset 0 is not UTF-8: expected UTF-8 "
        "text",
    ),
    "fifo": (
        lambda p: os.mkfifo(p / "mnist-sweep/pipe"),
        "validate: mnist-sweep/pipe: is a named pipe (FIFO): expected a regular file or folder",
    ),
}
BREAKS |= UNREADABLE_BREAKS


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_broken_file_is_named(
    repo_copy: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    breaks, expected = BREAKS[case]
    breaks(repo_copy / "projects")
    result = validate(repo_copy, capsys)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.splitlines()
    assert any(line.startswith(expected) for line in lines), result.stderr[-3000:]
    assert all(line.startswith("validate: ") for line in lines), result.stderr[-3000:]
    project = expected.removeprefix("validate: ").split("/")[0]
    rows = table(result.stdout)
    assert rows[project][1] == "FAIL", result.stdout
    if case in UNREADABLE_BREAKS:
        named = expected.split(": ")[1]
        assert [line.split(": ")[1] for line in lines].count(named) == 1, result.stderr[-3000:]
        others = [row[1] for name, row in rows.items() if name != project]
        assert others == ["ok"] * (len(rows) - 1) and len(rows) >= 4, result.stdout


# Root reads every file whatever its mode: run as root without the capabilities that let it.
AS_A_USER = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)


def test_make_validate_names_each_file_it_cannot_read(repo_copy: Path) -> None:
    """An unreadable file, a folder without search permission, a link loop and a non-UTF-8
    Dockerfile, in three projects: one line each from `make validate`, the fourth project
    checked and passing, a non-zero exit, no traceback."""
    projects = repo_copy / "projects"
    readme, code = projects / "mnist-conda/README.md", projects / "elasticnet-docker/elasticnet"
    readme.chmod(0)
    code.chmod(0o644)
    link_loop(projects / "mnist-docker")
    not_utf8(projects / "mnist-docker/Dockerfile")
    try:
        result = subprocess.run(
            [*AS_A_USER, *make_command("validate", f"PROJECTS_DIR={projects}")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        readme.chmod(0o644)
        code.chmod(0o755)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    reader = "the user who runs make validate and mlflow run can read"
    link = "expected a link that ends at a file or folder"
    assert [line for line in result.stderr.splitlines() if line.startswith("validate")] == [
        "validate: elasticnet-docker/elasticnet/: cannot be read (Permission denied): expected "
        f"a folder that {reader}",
        "validate: mnist-conda/README.md: cannot be read (Permission denied): expected a file "
        f"that {reader}",
        "validate: mnist-docker/Dockerfile: byte 0xff at offset 0 is not UTF-8: expected UTF-8 "
        "text",
        f"validate: mnist-docker/a: link loop a -> b -> a: {link}",
        f"validate: mnist-docker/b: link loop b -> a -> b: {link}",
    ], result.stderr[-3000:]
    status = {name: row[1] for name, row in table(result.stdout).items()}
    assert status == {
        "elasticnet-docker": "FAIL",
        "mnist-conda": "FAIL",
        "mnist-docker": "FAIL",
        "mnist-sweep": "ok",
    }, result.stdout


def test_tooling_says_which_mlflow_it_was_written_for():
    """The modules that call MLflow's undocumented names (validate, the store backends,
    predict.serve) stop in one line on another mlflow, and the venv's pin is that version."""
    assert mlflow.__version__ == WRITTEN_FOR
    assert version_problem("make validate", "mlflow.projects._project_spec") is None
    line = version_problem("make validate", "mlflow.projects._project_spec", installed="3.18.0")
    assert line.startswith("make validate was written for mlflow 3.17.2 ")
    assert "this environment has mlflow 3.18.0: pin mlflow==3.17.2" in line
    assert "\n" not in line
