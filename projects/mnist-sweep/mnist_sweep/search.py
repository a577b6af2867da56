"""Optuna's ask-and-tell loop over trials that run as MLflow projects, a few at a time.

One thread does everything: it launches trials until ``max_parallel`` run, polls them, and
records each one as it ends. So Ctrl-C lands in one place, where every running trial is known
and can be cancelled.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.projects.submitted_run import LocalSubmittedRun, SubmittedRun
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from project_tools.lifecycle import descendants, end_all

from .trials import Target, failure_reason, first_line, launch, remove_container

POLL_SECONDS = 2.0
PARENT_TAG = "mlflow.parentRunId"
SOURCE_TAG = "mlflow.source.name"


class AllTrialsFailed(Exception):
    """No trial finished with the metric; the message names the first failure."""


class MetricNotLogged(Exception):
    """A trial finished without the metric the search optimizes: its name is wrong, and every
    other trial would end the same way. The message names the metrics the trial logged."""

    def __init__(self, metric: str, trial: Trial) -> None:
        logged = ", ".join(trial.metrics)
        expected = (
            f"expected one of the metrics it logged: {logged}" if logged else "it logged none"
        )
        super().__init__(
            f"trial {trial.number} (run {trial.run_id}) finished without metric {metric!r}: "
            f"{expected}"
        )


@dataclass
class Trial:
    """One trial: its params, its MLflow run and how it ended."""

    number: int
    params: dict[str, float | int]
    log: Path
    run_id: str | None = None
    submitted: SubmittedRun | None = None
    container: str | None = None
    state: str = "RUNNING"
    value: float | None = None
    metrics: list[str] = field(default_factory=list)  # the names of those its run logged
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


class Search:
    def __init__(
        self, args: argparse.Namespace, target: Target, parent: mlflow.entities.Run, logs: Path
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.args = args
        self.target = target
        self.parent_id = parent.info.run_id
        self.experiment_id = parent.info.experiment_id
        self.logs = logs
        # TPE models the results once a few trials are in (Optuna waits for 10 by default, more
        # than a small sweep has); constant_liar keeps trials that run at once apart.
        sampler = optuna.samplers.TPESampler(
            seed=args.seed, n_startup_trials=min(10, max(2, args.trials // 4)), constant_liar=True
        )
        self.study = optuna.create_study(direction=args.goal, sampler=sampler)
        self.asked: dict[int, optuna.Trial] = {}
        self.running: list[Trial] = []
        self.done: list[Trial] = []
        self.client = MlflowClient()

    def run(self) -> list[Trial]:
        """Run every trial; return them in the order they ended.

        MetricNotLogged stops the search at the first trial that finished without the metric,
        once the trials that ended with it are recorded; the others are still running."""
        while len(self.done) + len(self.running) < self.args.trials or self.running:
            while (
                len(self.running) < self.args.max_parallel
                and len(self.done) + len(self.running) < self.args.trials
            ):
                self.start()
            time.sleep(POLL_SECONDS)
            unlogged = []
            for trial in list(self.running):
                status = self.status(trial)
                if status != "RUNNING":
                    self.running.remove(trial)
                    self.end(trial, status)
                    if status == "FINISHED" and trial.value is None:
                        unlogged.append(trial)
            if unlogged:
                raise MetricNotLogged(self.args.metric, unlogged[0])
        return self.done

    def best(self) -> Trial:
        """The best finished trial; AllTrialsFailed when none finished."""
        finished = [trial for trial in self.done if trial.value is not None]
        if not finished:
            first = self.done[0]
            raise AllTrialsFailed(
                f"all {len(self.done)} trials failed; the first: trial {first.number} "
                f"(run {first.run_id}): {first.reason}"
            )
        number = self.study.best_trial.number
        return next(trial for trial in finished if trial.number == number)

    def start(self) -> None:
        asked = self.study.ask()
        a = self.args
        params = {
            "learning_rate": asked.suggest_float(
                "learning_rate", a.learning_rate_min, a.learning_rate_max, log=True
            ),
            "batch_size": asked.suggest_int(
                "batch_size", a.batch_size_min, a.batch_size_max, log=True
            ),
            "epochs": asked.suggest_int("epochs", a.epochs_min, a.epochs_max),
        }
        trial = Trial(asked.number, params, self.logs / f"trial-{asked.number}.log")
        self.asked[trial.number] = asked
        if self.target.docker:
            trial.container = f"mlflow-sweep-{self.parent_id[:12]}-{trial.number}"
        try:
            trial.submitted = launch(
                self.target,
                {**a.trial_params, **params},
                self.experiment_id,
                f"trial-{trial.number}",
                trial.log,
                trial.container,
            )
        except Exception as exc:  # MLflow's, Docker's or Kubernetes' errors, in their words
            trial.reason = f"could not start: {first_line(exc)}"
            self.end(trial, "FAILED")
            return
        self.running.append(trial)
        trial.run_id = trial.submitted.run_id
        self.client.set_tag(trial.run_id, PARENT_TAG, self.parent_id)
        if self.target.uri != self.target.source:  # a pinned copy: name the real project
            self.client.set_tag(trial.run_id, SOURCE_TAG, self.target.source)
        print(f"trial {trial.number} started: run {trial.run_id} {describe(params)}", flush=True)

    def status(self, trial: Trial) -> str:
        """RUNNING, FINISHED or FAILED, as the backend sees the trial."""
        try:
            status = trial.submitted.get_status()
        except Exception as exc:  # e.g. a Kubernetes Job deleted behind MLflow's back
            trial.reason = f"lost track of it: {first_line(exc)}"
            return "FAILED"
        if isinstance(status, int):  # a KubernetesSubmittedRun answers with RunStatus numbers
            status = RunStatus.to_string(status)
        return "RUNNING" if status in ("RUNNING", "SCHEDULED") else status

    def end(self, trial: Trial, status: str) -> None:
        """Record how ``trial`` ended: in its MLflow run, in Optuna, on the parent run."""
        trial.seconds = time.monotonic() - trial.started
        if trial.run_id:
            self.close_run(trial, status)
        metric = self.args.metric
        if trial.value is None:
            trial.state = "FAILED"
            self.study.tell(self.asked[trial.number], state=TrialState.FAIL)
            print(f"trial {trial.number} FAILED: {trial.reason}", flush=True)
        else:
            trial.state = "FINISHED"
            self.study.tell(self.asked[trial.number], trial.value)
            best = self.study.best_value
            mlflow.log_metric(f"trial_{metric}", trial.value, step=trial.number)
            # Stepped by the order trials end in, so that the latest value is the best of all.
            mlflow.log_metric(f"best_{metric}", best, step=len(self.done))
            print(
                f"trial {trial.number} FINISHED: {metric} {trial.value:.4f} (best {best:.4f})",
                flush=True,
            )
        self.done.append(trial)

    def close_run(self, trial: Trial, status: str) -> None:
        """Terminate the trial's run if its backend did not, read its metric, attach its log."""
        run = self.client.get_run(trial.run_id)
        if not RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
            self.client.set_terminated(trial.run_id, status)
        metric = self.args.metric
        trial.metrics = sorted(run.data.metrics)
        if status == "FINISHED" and metric in run.data.metrics:
            trial.value = run.data.metrics[metric]
        elif status == "FINISHED":
            trial.reason = f"it logged no metric {metric!r}"
        elif not trial.reason:
            trial.reason = self.failure(trial)
        if trial.log.is_file():
            try:
                self.client.log_artifact(trial.run_id, str(trial.log))
            except Exception as exc:  # the log is a convenience; the trial's result stands
                print(f"trial {trial.number}: could not upload its log: {exc}", file=sys.stderr)

    def failure(self, trial: Trial) -> str:
        if isinstance(trial.submitted, LocalSubmittedRun):
            return failure_reason(trial.log)
        job = getattr(trial.submitted, "_job_name", None)
        if job:
            namespace = getattr(trial.submitted, "_job_namespace", "default")
            return f"Kubernetes Job {job} failed: kubectl -n {namespace} logs job/{job}"
        return "its backend reported it FAILED"

    def stop(self) -> None:
        """Cancel the running trials and mark them KILLED.

        A local trial is an `mlflow run` leading its own process group: each group gets its
        SIGTERM first, so that the trials stop (checkpoint, run KILLED) side by side rather
        than one after the other. MLflow's cancel waits for the `mlflow run` alone; every
        process below it is waited for too (SIGKILL after the grace), so none outlives the sweep.
        """
        families = {}
        for trial in self.running:
            if isinstance(trial.submitted, LocalSubmittedRun):
                families[trial.number] = descendants(trial.submitted.command_proc.pid)
                with suppress(OSError):
                    os.killpg(trial.submitted.command_proc.pid, signal.SIGTERM)
        for trial in self.running:
            try:
                trial.submitted.cancel()
                end_all(families.get(trial.number, []))
                if trial.container:
                    remove_container(trial.container)
            except Exception as exc:  # keep cancelling the others
                print(f"trial {trial.number}: cancelling failed: {exc}", file=sys.stderr)
            self.client.set_terminated(trial.run_id, "KILLED")
            print(f"trial {trial.number} KILLED: run {trial.run_id}", flush=True)
        self.running.clear()

    def end_orphans(self, status: str) -> None:
        """Terminate child runs nobody else will: a trial that failed to start after MLflow
        had created its run."""
        for run in self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}' "
            "and attributes.status = 'RUNNING'",
        ):
            self.client.set_terminated(run.info.run_id, status)


def describe(params: dict[str, float | int]) -> str:
    return " ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )
