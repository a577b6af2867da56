"""Search hyperparameters with Optuna; each trial is an MLflow project run nested under this one.

    mlflow run --env-manager local projects/mnist-sweep -P trials=8 -P max_parallel=2
    (or: make sweep TRIALS=8 PARALLEL=2)

This run is the parent. Optuna's TPE sampler proposes a learning rate, a batch size and a
number of epochs for each trial; the trial runs ``project`` (default ``mnist-conda``, in this
folder: a link to ../mnist-conda here, a copy in an exported sweep) through
``mlflow.projects.run`` on the backend asked for, up to ``max_parallel`` trials at a time.
A param the trial project's entry point does not take is refused before any trial, and
environments and images are built once, before the first trial (trials.py). A failed trial is
recorded as FAILED and the search goes on; the search fails when every trial failed, or at once
when a trial finished without the metric (its name is wrong: the running trials are stopped).
Ctrl-C (or SIGTERM) cancels the running trials and marks them KILLED. At the end the parent run
holds the best trial, its params and metric, and the search history as a table and a plot; with
``registered_model_name`` the best trial's model is registered with the alias ``candidate``.
Values are checked before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from project_tools.cli import OneLineParser, boolean, fail, model_name, number, seed
from project_tools.lifecycle import Stopper, raise_once_on_signal

from . import BACKENDS, ENV_MANAGERS

if TYPE_CHECKING:  # heavy imports wait until the values are checked
    from mlflow.entities import Run

    from .search import Search, Trial

PROG = "mnist_sweep.sweep"
GOALS = ("maximize", "minimize")
SEARCHED = ("learning_rate", "batch_size", "epochs")
# Trials at once: each is an `mlflow run` (locally, a training process on this machine) that
# the search loop polls every few seconds; more is a cluster scheduler's work, not this loop's.
MAX_PARALLEL = 64
# MLflow's rule for a metric name (mlflow.utils.validation, outside Windows).
METRIC_NAME = re.compile(r"[/\w.\- :]+")
GIT_SSH = re.compile(r"[\w.-]+@[\w.-]+:.+")  # git@host:owner/repo.git
SWEEP_PROJECT = Path(__file__).resolve().parents[1]
PROJECT_ENV_TAG = "mlflow.project.env"


def shell_items(text: str) -> list[str]:
    """``text`` split as a shell splits it."""
    try:
        return shlex.split(text)
    except ValueError as exc:  # "No closing quotation"
        raise argparse.ArgumentTypeError(f"{exc}: got {text!r}") from None


def key_values(text: str) -> dict[str, str]:
    """An argparse type: ``"key=value key=value"`` (shell quoting allowed), or ""."""
    pairs = {}
    for item in shell_items(text):
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise argparse.ArgumentTypeError(f"expected key=value items, got {item!r}")
        pairs[key] = value
    return pairs


def docker_args(text: str) -> dict[str, str | bool]:
    """An argparse type: what ``mlflow run -A`` takes, e.g. ``"network=host v=/a:/a"``; a bare
    name is a flag."""
    pairs: dict[str, str | bool] = {}
    for item in shell_items(text):
        key, sep, value = item.partition("=")
        if not key:
            raise argparse.ArgumentTypeError(f"expected name=value or name items, got {item!r}")
        pairs[key] = value if sep else True
    return pairs


def project(text: str) -> str:
    """An argparse type: the MLflow project each trial runs. A local one must be a folder with
    an MLproject file (a relative path is read from the current folder: this project's, under
    `mlflow run`); a remote one (a Git or zip URI) is fetched by MLflow before the first trial.
    """
    where, _, subdirectory = text.partition("#")  # MLflow's <project>#<subdirectory>
    scheme = urlparse(where).scheme
    if scheme not in ("", "file") or GIT_SSH.fullmatch(where):
        return text
    path = Path(urlparse(where).path if scheme else where).expanduser()
    if path.suffix == ".zip" and path.is_file():
        return text
    folder = path / subdirectory
    if not text or folder.resolve() == SWEEP_PROJECT:
        raise argparse.ArgumentTypeError(
            f"expected the project each trial runs, not this sweep's own, got {text!r}"
        )
    if not folder.is_dir() or not any(f.name.lower() == "mlproject" for f in folder.iterdir()):
        raise argparse.ArgumentTypeError(
            f"expected an MLflow project: a folder with an MLproject file (relative to "
            f"{Path.cwd()}) or a Git URI, got {text!r}"
        )
    return text


def metric_name(text: str) -> str:
    """An argparse type: a metric name that MLflow accepts, and not a direction."""
    if text.lower() in (*GOALS, "max", "min"):
        raise argparse.ArgumentTypeError(
            f"expected the name of a metric the trials log (goal says which way), got {text!r}"
        )
    normal = posixpath.normpath(text)
    if not METRIC_NAME.fullmatch(text) or normal != text or normal.startswith(("..", "/")):
        raise argparse.ArgumentTypeError(
            "expected the name of a metric the trials log (letters, digits, '_', '-', '.', "
            f"' ', ':' and '/'), got {text!r}"
        )
    return text


def json_file(text: str) -> str:
    """An argparse type: a file that holds a JSON object, or "" for none."""
    if not text:
        return text
    try:
        content = json.loads(Path(text).expanduser().read_text())
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON file, got {text!r}: {exc}") from None
    if not isinstance(content, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object in {text!r}")
    return text


def one_of(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            shown = ", ".join(choice or repr(choice) for choice in choices)
            raise argparse.ArgumentTypeError(f"expected one of {shown}, got {text!r}")
        return text

    return convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--trials", type=number(int, 1))
    add("--max-parallel", type=number(int, 1, MAX_PARALLEL))
    add("--project", type=project, help="what each trial runs")
    add("--metric", type=metric_name, help="what the search optimizes")
    add("--goal", type=one_of(*GOALS))
    add("--learning-rate-min", type=number(float, 0, open_low=True))
    add("--learning-rate-max", type=number(float, 0, open_low=True))
    add("--batch-size-min", type=number(int, 1))
    add("--batch-size-max", type=number(int, 1))
    add("--epochs-min", type=number(int, 1))
    add("--epochs-max", type=number(int, 1))
    add("--trial-params", type=key_values, help="fixed params of every trial")
    add("--env-manager", type=one_of("", *ENV_MANAGERS), help="'': the sweep's own")
    add("--backend", type=one_of(*BACKENDS))
    add("--backend-config", type=json_file, help="kubernetes_config.json")
    add("--build-image", type=boolean, help="docker_env: build the image once")
    add("--docker-args", type=docker_args, help="what `mlflow run -A` takes")
    add("--seed", type=seed, help="seeds the sampler")
    add("--registered-model-name", type=model_name, help="register the best model")
    add("--ranking-metric", type=metric_name, help="ranks the version")
    parser.use_mlproject_defaults(__file__)
    args = parser.parse_args(argv)
    for name in SEARCHED:
        low, high = getattr(args, f"{name}_min"), getattr(args, f"{name}_max")
        if low > high:
            parser.error(f"{name}_min {low:g} is above {name}_max {high:g}")
    if fixed := sorted(set(SEARCHED) & set(args.trial_params)):
        parser.error(f"trial_params sets {', '.join(fixed)}, which the search sets")
    return args


@contextmanager
def interruptible() -> Iterator[Stopper]:
    """Ctrl-C and SIGTERM (what `mlflow run` sends its command when it is interrupted) raise
    KeyboardInterrupt once; after that both are ignored, so that the trials can be stopped
    without a second signal cutting that short. The death of the `mlflow run` that started the
    sweep is a SIGTERM too (the launcher watch of project_tools.lifecycle)."""
    interrupts = raise_once_on_signal(lambda signum: KeyboardInterrupt())
    with interrupts, Stopper(PROG, handle_signals=False) as stopper:
        yield stopper


def trial_env_manager(asked: str, tags: dict[str, str]) -> str:
    """The env manager asked for, else the one the sweep itself runs with (local when it runs
    in Docker or outside `mlflow run`)."""
    manager = asked or tags.get(PROJECT_ENV_TAG, "local")
    return manager if manager in ENV_MANAGERS else "local"


def search_and_record(
    args: argparse.Namespace, run: Run, workdir: Path, started: list[Search]
) -> Trial:
    """Prepare the trials, run the search, and record it on ``run``; return the best trial.

    The Search is appended to ``started`` as soon as it exists, so that an interruption can
    stop its trials.
    """
    from .history import log_best, log_history, register_best
    from .search import Search
    from .trials import prepare

    a_trial = {name: getattr(args, f"{name}_min") for name in SEARCHED}
    target = prepare(
        args.project,
        args.trial_params,
        a_trial,
        args.backend,
        trial_env_manager(args.env_manager, run.data.tags),
        args.build_image,
        args.backend_config,
        args.docker_args,
        run.info.run_id,
        workdir / "pinned",
    )
    (workdir / "logs").mkdir()
    search = Search(args, target, run, workdir / "logs")
    started.append(search)
    trials = search.run()
    log_history(trials, args.metric, args.goal == "maximize")
    best = search.best()
    model_uri = log_best(best)
    if args.registered_model_name:
        maximize = args.goal == "maximize"
        register_best(best, model_uri, args.registered_model_name, args.ranking_metric, maximize)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import mlflow

    from project_tools.registry import RegistryError
    from project_tools.tracking import record_source, shown_store

    from .history import RegisterError
    from .search import AllTrialsFailed, MetricNotLogged
    from .trials import TrialSetupError

    started: list[Search] = []  # the Search, once it exists

    def end(status: str) -> None:
        """End the sweep's run with ``status``, its trials' runs too: those still running (the
        sweep interrupted or failed) are stopped and marked KILLED."""
        for search in started:
            if status != "FINISHED":
                search.stop()
            search.end_orphans("KILLED" if status == "KILLED" else "FAILED")
        mlflow.end_run(status)

    with interruptible() as stopper, tempfile.TemporaryDirectory(prefix="sweep-") as workdir:
        mlflow.start_run()
        record_source()
        run = mlflow.get_run(mlflow.active_run().info.run_id)
        try:
            best = search_and_record(args, run, Path(workdir), started)
        except KeyboardInterrupt:
            end("KILLED")
            print(f"{PROG}: interrupted: the running trials were stopped and marked KILLED")
            stopper.end_launcher()
            return 130
        except (
            TrialSetupError,
            MetricNotLogged,
            AllTrialsFailed,
            RegisterError,
            RegistryError,
        ) as exc:
            end("FAILED")
            fail(PROG, str(exc), 1)
        except Exception:
            end("FAILED")
            raise
        end("FINISHED")
    print(f"Best: trial {best.number}, run {best.run_id}, {args.metric} {best.value:.4f}")
    print(f"Sweep run id: {run.info.run_id}  Tracking store: {shown_store()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
