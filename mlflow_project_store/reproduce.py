"""``make reproduce RUN=<run id or models:/name@alias>``: run a recorded run again, from its commit.

    python -m mlflow_project_store.reproduce RUN     (make passes RUN, DOCKER_RUN_ARGS)

It reads from the tracking store what `mlflow run` recorded of the run (the project's source,
its git commit, the entry point, the parameters, the environment manager or Docker) and what
the projects add (whether the tree had uncommitted changes: project_tools.tracking.record_source),
runs it again with
``mlflow run <git URL>#<folder> --version <commit>`` and the same parameters into a new run of
the same experiment, tagged ``reproduces=<run id>``, and prints the final metrics side by side
with their differences. It exits 0 when they are identical, 1 when any differs (the line names
them). A run it cannot reproduce is refused with one line, exit 2, before anything runs: not
made by ``mlflow run``, no commit, a tree with uncommitted changes, a commit the repository does
not have. A run made from a local folder is fetched from that repository's remote, or, when the
remote is a folder, from a throwaway clone of it (MLflow would otherwise check the commit out in
that folder's own working tree).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException, MlflowException
from mlflow.projects.utils import fetch_and_validate_project, load_project
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from mlflow_project_store.backends import wait_for
from mlflow_project_store.project_tools.cli import OneLineParser, fail
from mlflow_project_store.project_tools.tracking import DIRTY_TAG, require_tracking_server

PROG = "reproduce"
REPRODUCES_TAG = "reproduces"
RUN_ID = re.compile(r"[0-9a-f]{32}")
# A git URL: scheme://..., or scp-like user@host:path.
REMOTE = re.compile(r"[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:")
DOCKER_ARGS = "-A network=host"


def the_run(text: str) -> Run:
    """The run ``text`` names: a run id, or a model version (``models:/name@alias``,
    ``models:/name/3``) whose run it is."""
    client = MlflowClient()
    try:
        if text.startswith("models:/"):
            name, sep, alias = text.removeprefix("models:/").partition("@")
            if sep:
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = name.rpartition("/")
                version = client.get_model_version(name, number)
            return client.get_run(version.run_id)
        if not RUN_ID.fullmatch(text):
            fail(PROG, f"RUN {text!r}: expected a run id (32 hex digits) or models:/name@alias")
        return client.get_run(text)
    except MlflowException as exc:
        fail(PROG, f"no {text} in the tracking store: {exc.message.splitlines()[0]}")


def repository(run: Run, workdir: Path) -> str:
    """``<git URL>#<folder>`` of the run's project. `mlflow run` records a git URL as given, and
    a local folder in a repository as ``file://<repository>#<folder>``: that one is fetched
    from the repository's remote, or, when the remote is a folder too (or there is none), from
    a throwaway clone in ``workdir`` (MLflow checks the commit out in a local repository's own
    working tree)."""
    tags = run.data.tags
    base, _, folder = tags.get(MLFLOW_SOURCE_NAME, "").partition("#")
    if REMOTE.match(base) and not base.startswith("file://"):
        return f"{base}#{folder}"
    remote = tags.get(MLFLOW_GIT_REPO_URL) or base.removeprefix("file://")
    if REMOTE.match(remote) and not remote.startswith("file://"):
        return f"{remote}#{folder}"
    clone = workdir / "repository"
    cloned = subprocess.run(
        ["git", "clone", "-q", "--no-checkout", remote.removeprefix("file://"), str(clone)],
        capture_output=True,
        text=True,
    )
    if cloned.returncode != 0:
        reason = (cloned.stderr.strip().splitlines() or ["no output"])[-1]
        fail(PROG, f"run {run.info.run_id}: cannot clone its repository {remote}: {reason}")
    return f"{clone}#{folder}"


def refusal(run: Run) -> str | None:
    """Why ``run`` cannot be re-created from its commit, or None."""
    tags, run_id = run.data.tags, run.info.run_id
    if tags.get(MLFLOW_SOURCE_TYPE) != "PROJECT" or MLFLOW_PROJECT_ENTRY_POINT not in tags:
        return f"run {run_id} was not made by `mlflow run`: only a project's run can be re-run"
    if not tags.get(MLFLOW_GIT_COMMIT):
        return f"run {run_id} records no git commit: its project was not in a git repository"
    if tags.get(DIRTY_TAG) == "true":
        return (
            f"run {run_id} was made from a tree with uncommitted changes: commit "
            f"{tags[MLFLOW_GIT_COMMIT][:12]} does not hold the code it ran"
        )
    return None


def parameters(run: Run, uri: str, commit: str, entry_point: str) -> dict[str, str]:
    """The run's values of the entry point's parameters at ``commit`` (a run also logs
    params of its own, which the entry point does not take); refuses an unreachable commit."""
    try:
        work_dir = fetch_and_validate_project(uri, commit, entry_point, run.data.params)
    except ExecutionException as exc:
        reason = str(exc).splitlines()[0]
        fail(PROG, f"commit {commit} of {uri.partition('#')[0]} cannot be fetched: {reason}")
    declared = load_project(work_dir).get_entry_point(entry_point).parameters
    return {name: logged(v) for name, v in run.data.params.items() if name in declared}


def logged(value: str) -> str:
    """A parameter's value as given: `mlflow run` logs it shell-quoted (``''`` for "")."""
    try:
        words = shlex.split(value)
    except ValueError:
        return value
    return words[0] if len(words) == 1 else value


def is_timing(name: str) -> bool:
    """A metric that measures time (images per second): it differs from run to run."""
    return name.endswith("_per_second") or "seconds" in name


def compare(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """Print the final metrics side by side; return the names of those that differ (timings
    are shown, not compared)."""
    names = sorted(set(before) | set(after))
    width = max([len("metric"), *map(len, names)])
    print(f"{'metric':<{width}}  {'original':>14}  {'reproduced':>14}  difference")
    differ = []
    for name in names:
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            delta = "missing"
        elif is_timing(name):
            delta = "(a timing)"
        else:
            delta = "0" if old == new else f"{new - old:+.6g}"
        if delta not in ("0", "(a timing)"):
            differ.append(name)
        shown = [f"{v:.8g}" if v is not None else "-" for v in (old, new)]
        print(f"{name:<{width}}  {shown[0]:>14}  {shown[1]:>14}  {delta}")
    return differ


def reproduce(run: Run, docker_args: str) -> int:
    if reason := refusal(run):
        fail(PROG, reason)
    tags = run.data.tags
    commit, entry_point = tags[MLFLOW_GIT_COMMIT], tags[MLFLOW_PROJECT_ENTRY_POINT]
    with tempfile.TemporaryDirectory(prefix="reproduce-") as workdir:
        uri = repository(run, Path(workdir))
        params = parameters(run, uri, commit, entry_point)
        docker = tags.get(MLFLOW_PROJECT_ENV) == "docker"
        options = {"backend": "store-docker", "build_image": True} if docker else {}
        if docker:
            pairs = [arg.partition("=") for arg in shlex.split(docker_args) if arg != "-A"]
            options["docker_args"] = {key: value or True for key, _, value in pairs}
        else:
            options["env_manager"] = tags.get(MLFLOW_PROJECT_ENV, "local")
        print(
            f"Reproducing run {run.info.run_id}: mlflow run {uri} --version {commit} "
            f"-e {entry_point} " + " ".join(f"-P {k}={v}" for k, v in params.items())
        )
        try:
            submitted = mlflow.projects.run(
                uri,
                entry_point,
                version=commit,
                parameters=params,
                experiment_id=run.info.experiment_id,
                run_name=f"reproduce-{run.info.run_name or run.info.run_id[:8]}",
                synchronous=False,
                **options,
            )
            MlflowClient().set_tag(submitted.run_id, REPRODUCES_TAG, run.info.run_id)
            wait_for(submitted)
        except ExecutionException as exc:
            fail(PROG, f"the run again did not finish: {str(exc).splitlines()[0]}", status=1)
    again = MlflowClient().get_run(submitted.run_id)
    differ = compare(run.data.metrics, again.data.metrics)
    if differ:
        print(f"{PROG}: {len(differ)} metrics differ: {', '.join(differ)}", file=sys.stderr)
        return 1
    print(f"Identical: every final metric of run {submitted.run_id} equals run {run.info.run_id}'s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=os.environ.get("RUN", ""))
    args = parser.parse_args(argv)
    if not args.run:
        fail(
            PROG,
            "RUN is empty: expected a run id or models:/name@alias, e.g. make reproduce RUN=...",
        )
    require_tracking_server(PROG)
    return reproduce(the_run(args.run), os.environ.get("DOCKER_RUN_ARGS") or DOCKER_ARGS)


if __name__ == "__main__":
    sys.exit(main())
