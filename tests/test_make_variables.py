"""Every make variable reaches its recipe as data: a value that a shell would run (quotes,
``$(...)``, backticks, ``;``, spaces, a newline) is never run, whichever target it is given to.

Each case is the real ``make TARGET VAR=<hostile>``, chosen to stop in seconds: on the value
itself, where the target's tool checks it (then with one line naming it), or on a setting that
stops the target before any training, image build, push or server start. The tracking store is
a temporary SQLite file, Docker and Kubernetes point at nothing, and the state folders of the
servers are temporary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers.commands import make, one_line_reason

# The first word of the hostile value, which a one-line error names.
MARK = "hostile"


def hostile(canary: Path) -> str:
    """A value that touches ``canary`` if a shell reads it as code; written for make's command
    line (``$$`` is the ``$`` the recipe sees). Its last ``#`` would make the rest of a recipe
    line a comment, so that a shell running it writes nothing but the canary."""
    return (
        f"{MARK} 'q1 q2' \"d1 d2\" $$(touch {canary}) `touch {canary}` ; touch {canary}\n"
        f"touch {canary} #"
    )


@dataclass(frozen=True)
class Case:
    target: str
    variable: str
    reason: str | None = None  # the one-line error's start, where the target's tool checks it
    settings: tuple[str, ...] = ()  # other variables ({tmp}: the test's folder)
    also: tuple[str, ...] = ()  # other variables given the hostile value in the same command
    value: str = "{hostile}"  # the variable's value ({tmp} and {hostile} filled in)
    finishes: bool = False  # the target exits 0: the recipe line with the value ran
    printed: str | None = None  # in its output ({value}: the value as the recipe sees it)
    written: str | None = None  # a path it writes: the value taken verbatim
    slow: bool = False  # over 5 s: the store check, then a second tool that imports mlflow

    @property
    def id(self) -> str:
        return "-".join([self.target, "+".join([self.variable, *self.also])])


NEW = ("NAME=fresh-name", "PROJECTS_DIR={tmp}/projects")
CONTEXT = ("KUBECONFIG={tmp}/kubeconfig-lab", "TRACKING_URI=http://127.0.0.1:9")
SERVER = ("SERVER_STATE={tmp}/server",)
ABSENT_MODEL = "MODEL=models:/absent@champion"

CASES = [
    Case("store", "TRACKING_URI", finishes=True, printed="Tracking store: {value}\n"),
    Case("store", "VENV", "Makefile:"),
    Case("setup", "PYTHON", "make setup:", ("VENV={tmp}/venv",)),
    Case("new-project", "NAME", "new-project:", ("PROJECTS_DIR={tmp}/projects",)),
    Case("new-project", "VARIANTS", "new-project:", NEW),
    Case("new-project", "TEMPLATE", "new-project:", NEW),
    Case("export", "PROJECT", "make export:", ("DEST={tmp}/out",)),
    Case(
        "export",
        "DEST",
        settings=("PROJECT=tests/projects/stand-in-trial",),
        value="{tmp}/{hostile}",
        finishes=True,
        written="{value}/trial.py",
    ),
    Case("reproduce", "RUN", "reproduce:", slow=True),
    Case("run-k8s", "K8S_PROJECT", "make run-k8s:"),
    Case("run-k8s", "ENTRY_POINT", "make run-k8s:"),
    Case("run-k8s", "KUBE_CONTEXT", "make run-k8s:", also=("KUBE_TRACKING_URI",)),
    Case("run-k8s", "REGISTRY", "make run-k8s:", CONTEXT, value="{hostile}:x"),
    # The project {tmp}/done runs `true`: the run finishes and the last line names UI_PORT.
    Case(
        "run",
        "UI_PORT",
        settings=("PROJECT={tmp}/done",),
        finishes=True,
        printed="(then http://127.0.0.1:{value})\n",
    ),
    Case("ui", "UI_PORT", "make ui:"),
    Case("run", "RUN_ARGS", also=("PROJECT", "ENV_MANAGER")),
    Case("sweep", "TRIALS", "mnist_sweep.sweep:", slow=True),
    Case("sweep", "PARALLEL", also=("RUN_ARGS", "MODEL"), slow=True),
    Case("run-docker", "DOCKER_RUN_ARGS", also=("DOCKER_PROJECT", "RUN_ARGS"), slow=True),
    Case("predict", "MODEL", "predict:", ("INPUT=example/predict/samples/digits/",)),
    Case("predict", "INPUT", "predict:", (ABSENT_MODEL,)),
    Case("serve", "SERVE_PORT", "predict.serve:", (ABSENT_MODEL,), also=("ALLOW_PICKLE",)),
    Case("promote", "VERSION", "promote:", ("MODEL=absent",)),
    Case("server", "SERVER_PORT", "make server:", SERVER, also=("S3_PORT",)),
    Case("server", "ENV_FILE", "make server:", SERVER, also=("ARTIFACTS_DESTINATION",)),
    Case("registry", "REGISTRY_PORT", "make registry:", ("STATE={tmp}/state",)),
    # pytest --version: the arguments reach pytest, which then runs nothing.
    Case("test", "PYTEST_ARGS", also=("QUICK_TESTS",), value="--version {hostile}", finishes=True),
    Case("test-all", "PYTEST_ARGS", value="--version {hostile}", finishes=True),
    # Its first word is taken as the name of a benchmark, which does not exist.
    Case("benchmark", "BENCHMARKS", printed=f"== make benchmark: {MARK}\n"),
]


def write_kubeconfig(path: Path) -> None:
    """A kubeconfig whose context ``lab`` names a cluster that nothing here contacts."""
    cluster = {"name": "lab", "cluster": {"server": "http://127.0.0.1:9"}}
    context = {"name": "lab", "context": {"cluster": "lab", "user": "lab"}}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "lab",
        "clusters": [cluster],
        "users": [{"name": "lab", "user": {}}],
        "contexts": [context],
    }
    path.write_text(yaml.safe_dump(config))


def write_workspace(tmp: Path) -> None:
    """What the settings name: a projects folder, the kubeconfigs, and a project that does
    nothing (``true``) and finishes."""
    (tmp / "projects").mkdir()
    (tmp / "kubeconfig").write_text("")  # no context at all
    write_kubeconfig(tmp / "kubeconfig-lab")
    (tmp / "done").mkdir()
    (tmp / "done" / "MLproject").write_text(
        'name: done\nentry_points:\n  main:\n    command: "true"\n'
    )


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_a_hostile_value_is_data(case: Case, tmp_path: Path) -> None:
    write_workspace(tmp_path)
    canary = tmp_path / "CANARY"

    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, hostile=hostile(canary))

    variables = {
        "TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    variables |= dict(fill(setting).split("=", 1) for setting in case.settings)
    variables |= {name: hostile(canary) for name in case.also}
    variables[case.variable] = fill(case.value)
    result = make(case.target, *(f"{k}={v}" for k, v in variables.items()), timeout=120)

    output = (result.stdout + result.stderr)[-3000:]
    assert not canary.exists(), f"the shell ran a value of {case.id}:\n{output}"
    if case.reason:
        assert MARK in one_line_reason(result, case.reason), output
    if case.finishes:
        assert result.returncode == 0, output
    seen = variables[case.variable].replace("$$", "$")  # as the recipe sees it
    if case.printed:
        assert case.printed.format(value=seen) in result.stdout, output
    if case.written:
        assert Path(case.written.format(value=seen)).is_file(), output


def test_a_word_of_an_argument_list_is_not_a_file_pattern() -> None:
    """Argument lists split on whitespace only: ``*`` stays ``*`` (the shell runs with noglob)."""
    result = make("benchmark", "BENCHMARKS=*", timeout=120)
    assert result.stdout.startswith("== make benchmark: *\n"), result.stdout + result.stderr
