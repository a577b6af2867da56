"""Screenshots of the MLflow UI from real runs, in a real browser (`make screenshots`).

    python -m mlflow_project_store.ready_for_mlflow.screenshots [OUTPUT_DIR] [--quick]

1. A fresh tracking server: ``mlflow server`` on a new SQLite store, artifacts proxied to a
   local S3 endpoint (ready_for_mlflow/servers.py), in a temporary folder.
2. Real runs: projects/mnist-conda a few times with different parameters (each registered
   as ``mnist``), projects/elasticnet-docker's entry point, and a small sweep of
   projects/mnist-sweep. ``--quick`` runs fewer and shorter ones (the test's set).
3. The best ``mnist`` version is promoted to ``champion`` by ready_for_mlflow/promote.py.
4. Debian's Chromium, headless, driven by Playwright, captures each view as OUTPUT_DIR/NAME.png
   (default images/). The page text of each view is kept, so a test can read what it showed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import quote

from mlflow.tracking import MlflowClient

from mlflow_project_store.project_tools.cli import OneLineParser, fail
from mlflow_project_store.ready_for_mlflow.servers import (
    VENV_BIN,
    client_env,
    mlflow_server,
    moto_s3,
)

PROG = "make screenshots"
ROOT = Path(__file__).resolve().parents[1]
PROJECTS = ROOT / "projects"
MODEL = "mnist"
VIEWPORT = {"width": 1600, "height": 900}
# The runs list shows these params and metrics as columns, and hides two wide attributes.
RUN_COLUMNS = (
    "Dataset",
    "Source",
    "epochs",
    "batch_size",
    "learning_rate",
    "val_accuracy",
    "test_accuracy",
)
CHROMIUM = ("chromium", "chromium-browser")
# The runs list's expander of a parent run (the id MLflow 3.17's UI gives that button).
NESTED_RUNS_TOGGLE = (
    "codegen_mlflow_app_src_experiment-tracking_components_experiment-page_components_runs_cells"
    "_runnamecellrenderer.tsx_46"
)


@dataclass(frozen=True)
class Plan:
    """The runs to record: parameters of each mnist run, each elasticnet run, sweep trials."""

    mnist: tuple[dict[str, object], ...]
    elasticnet: tuple[dict[str, object], ...]
    sweep_trials: int


FULL = Plan(
    mnist=(
        {"epochs": 3, "batch_size": 128, "learning_rate": 0.003},
        {"epochs": 2, "batch_size": 64, "learning_rate": 0.001},
        {"epochs": 1, "batch_size": 256, "learning_rate": 0.01},
    ),
    elasticnet=({"alpha": 0.001, "l1_ratio": 0.1}, {"alpha": 0.05, "l1_ratio": 0.5}),
    sweep_trials=2,
)
QUICK = Plan(
    mnist=(
        {"epochs": 2, "batch_size": 128, "learning_rate": 0.003},
        {"epochs": 1, "batch_size": 256, "learning_rate": 0.01},
    ),
    elasticnet=({"alpha": 0.001, "l1_ratio": 0.1},),
    sweep_trials=0,
)


@dataclass
class Recorded:
    """What the runs left in the store, for the views to show."""

    experiments: dict[str, str] = field(default_factory=dict)  # name -> id
    mnist_runs: dict[str, str] = field(default_factory=dict)  # run name -> run id
    champion: str = ""  # the version of MODEL that holds the alias


SHORT = {"epochs": "e", "batch_size": "bs", "learning_rate": "lr", "alpha": "a", "l1_ratio": "l1"}


def run_name(project: str, params: dict[str, object]) -> str:
    """A run name that says its parameters, e.g. ``mnist-e2-bs128-lr0.003``."""
    return "-".join([project, *(f"{SHORT[key]}{value:g}" for key, value in params.items())])


def mlflow_run(url: str, project: Path, experiment: str, name: str, params: dict) -> None:
    """``mlflow run --env-manager local`` as a user runs it, from a client without S3 keys."""
    command = [str(VENV_BIN / "mlflow"), "run", str(project), "--env-manager", "local"]
    command += ["--experiment-name", experiment, "--run-name", name]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    checked(command, client_env(url))


def checked(command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    print("$", " ".join(command[-12:]), flush=True)
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")


def record_runs(url: str, plan: Plan) -> Recorded:
    """Run the projects of ``plan`` against the server at ``url``; promote the best model."""
    client = MlflowClient(url)
    recorded = Recorded()
    for params in plan.mnist:
        name = run_name("mnist", params)
        mlflow_run(
            url, PROJECTS / "mnist-conda", "mnist", name, params | {"registered_model_name": MODEL}
        )
    # elasticnet-docker's project runs in Docker; here its entry point runs in this environment,
    # in a run created first, as `mlflow run` does (MLFLOW_RUN_ID).
    experiment = client.get_experiment_by_name("elasticnet")
    elasticnet = experiment.experiment_id if experiment else client.create_experiment("elasticnet")
    for params in plan.elasticnet:
        run = client.create_run(elasticnet, run_name=run_name("elasticnet", params))
        args = [f"--{key.replace('_', '-')}={value}" for key, value in params.items()]
        env = client_env(url, MLFLOW_RUN_ID=run.info.run_id)
        checked(
            [sys.executable, "-m", "elasticnet.train", *args], env, PROJECTS / "elasticnet-docker"
        )
    if plan.sweep_trials:
        params = {"trials": plan.sweep_trials, "max_parallel": 1, "epochs_min": 1, "epochs_max": 1}
        mlflow_run(url, PROJECTS / "mnist-sweep", "mnist-sweep", "mnist-sweep", params)
    for experiment in client.search_experiments():
        recorded.experiments[experiment.name] = experiment.experiment_id
    for run in client.search_runs([recorded.experiments["mnist"]]):
        recorded.mnist_runs[run.info.run_name] = run.info.run_id
    recorded.champion = promote_best(url)
    return recorded


def promote_best(url: str) -> str:
    """Promote the ``MODEL`` version with the best test accuracy with ``make promote``'s code."""
    from mlflow_project_store.ready_for_mlflow import promote

    client = MlflowClient(url)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    best = max(versions, key=lambda version: float(version.tags["test_accuracy"]))
    # The evaluation run goes to the tracking URI of the environment, restored afterwards.
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": url}):
        promote.quiet()
        try:
            print(promote.promote(client, MODEL, best.version), flush=True)
        except (promote.PromoteError, promote.Refused) as exc:
            raise RuntimeError(f"promote: {exc}") from exc
    return best.version


@contextmanager
def fresh_server() -> Iterator[str]:
    """A tracking server on a new, empty store; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="mlflow-screenshots-") as tmp:
        workdir = Path(tmp)
        with (
            moto_s3(workdir) as s3,
            mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}", s3) as server,
        ):
            yield server.url


@dataclass(frozen=True)
class View:
    """One screenshot: the UI route and a text that shows once the page has its data."""

    name: str
    route: str
    ready: str
    columns: tuple[str, ...] = ()  # toggled in the runs list's Columns menu
    click: str = ""  # a text to click before the capture (a file to preview)
    expand: bool = False  # open the first parent run's nested runs (a sweep's trials)


def views(recorded: Recorded, run_names: list[str]) -> list[View]:
    """The views to capture; the first of ``run_names`` is the run shown alone."""
    mnist = recorded.experiments["mnist"]
    best = recorded.mnist_runs[run_names[0]]
    run = f"/experiments/{mnist}/runs/{best}"
    compared = quote(str([recorded.mnist_runs[name] for name in run_names]).replace("'", '"'))
    found = [
        View("experiment-runs", f"/experiments/{mnist}/runs", run_names[-1], RUN_COLUMNS),
        View("run-overview", run, "Parameters"),
        View("run-metrics", f"{run}/model-metrics", "val_accuracy"),
        View("run-artifacts", f"{run}/artifacts", "MLmodel", click="MLmodel"),
        View(
            "compare-runs",
            f"/compare-runs?runs={compared}&experiments=[%22{mnist}%22]",
            "val_accuracy",
        ),
        View("registered-model", f"/models/{MODEL}", "champion"),
    ]
    if "mnist-sweep" in recorded.experiments:
        sweep = recorded.experiments["mnist-sweep"]
        found.append(
            View(
                "sweep-runs", f"/experiments/{sweep}/runs", "mnist-sweep", RUN_COLUMNS, expand=True
            )
        )
    return found


def chromium() -> str | None:
    """The system Chromium (Debian's `chromium` package), if installed."""
    return next(filter(None, map(shutil.which, CHROMIUM)), None)


def toggle_columns(page, labels: tuple[str, ...]) -> None:
    """Tick (or untick) ``labels`` in the runs list's Columns menu."""
    page.get_by_role("button", name="Columns").click()
    menu = page.get_by_role("dialog").first
    for label in labels:
        menu.get_by_text(label, exact=True).click()
    page.keyboard.press("Escape")


def close_assistant(page) -> None:
    """Close the UI's assistant side panel when it is open."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()
        close.first.wait_for(state="detached")


def capture(url: str, shots: list[View], out_dir: Path, timeout_s: float = 60) -> dict[str, str]:
    """Screenshot each view into ``out_dir``/NAME.png; return each page's visible text."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(timeout_s * 1000)
        for view in shots:
            page.goto(f"{url}/#{view.route}")
            page.get_by_text(view.ready, exact=False).first.wait_for()
            if view.columns:
                toggle_columns(page, view.columns)
            if view.click:
                page.get_by_text(view.click, exact=True).first.click()
            if view.expand:
                page.locator(f'[data-component-id="{NESTED_RUNS_TOGGLE}"]').first.click()
            close_assistant(page)
            time.sleep(2)  # the UI polls, so the network is never idle; charts animate in
            page.screenshot(path=out_dir / f"{view.name}.png")
            texts[view.name] = page.inner_text("body")
            print(f"wrote {out_dir / view.name}.png", flush=True)
        browser.close()
    return texts


def screenshots(out_dir: Path, plan: Plan = FULL) -> dict[str, str]:
    """Record ``plan``'s runs on a fresh server and capture every view; the pages' text."""
    with fresh_server() as url:
        recorded = record_runs(url, plan)
        run_names = [run_name("mnist", params) for params in plan.mnist]
        return capture(url, views(recorded, run_names), out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", type=Path, default=ROOT / "images")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = parser.parse_args(argv)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        fail(PROG, f"output folder {str(args.output_dir)!r} is a file, expected a folder")
    if chromium() is None:
        fail(PROG, "no chromium on PATH: apt-get install chromium (.ci/setup.d/30-chromium.sh)", 1)
    from playwright.sync_api import Error as BrowserError

    try:
        screenshots(args.output_dir, QUICK if args.quick else FULL)
    except (RuntimeError, TimeoutError, BrowserError) as exc:
        fail(PROG, " ".join(str(exc).split())[:600], 1)


if __name__ == "__main__":
    main()
