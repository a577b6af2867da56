"""Command-line parsing with one-line errors, shared by every entry point and tool.

MLflow passes ``-P name=value`` to an entry point unchecked, so each value is checked here,
once, by the type of its argument: a bad value stops the program in a second with one line
that names the value and what is expected, exit status 2.

A project's defaults are written once, in its MLproject: an entry point takes them from there
(:meth:`OneLineParser.use_mlproject_defaults`), so ``python -m pkg.train`` run by hand and
``mlflow run`` start from the same values.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .redaction import mask_uncaught_exceptions

# The Model Registry's name rule, checked before training: letters, digits, '-', '_', '.' and
# spaces; not only spaces, not '.' nor starting with '..' (the registry treats a name as a path);
# at most the 256 characters of the registry's name column (PostgreSQL refuses more).
MODEL_NAME = re.compile(r"[A-Za-z0-9_.\- ]+")
MAX_MODEL_NAME = 256


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit status 2.

    Every entry point and tool makes one first: making it also masks credentials in the
    traceback of an exception that nothing catches (redaction.mask_uncaught_exceptions)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mask_uncaught_exceptions()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    def use_mlproject_defaults(self, module_file: str, entry_point: str = "main") -> None:
        """Give each argument the default that ``entry_point`` declares for the parameter of
        the same name in the MLproject of the project holding the code of ``module_file``
        (links resolved: a project that links to this code states the same entry points). The
        defaults are the strings MLflow passes, so each is checked by its argument's type too.
        An optional argument that gets no default stops here, in one line."""
        try:
            mlproject, defaults = mlproject_defaults(Path(module_file).resolve(), entry_point)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            fail(self.prog, f"cannot read the defaults of entry point {entry_point!r}: {exc}")
        # argparse keeps its arguments in _actions: the one list of every argument's dest.
        options = [a for a in self._actions if a.option_strings and a.dest != "help"]
        self.set_defaults(**{a.dest: defaults[a.dest] for a in options if a.dest in defaults})
        for action in options:
            if action.default is None and not action.required:
                fail(
                    self.prog,
                    f"{mlproject} declares no default for parameter {action.dest!r} of entry "
                    f"point {entry_point!r}: expected one for each of its parameters",
                )


def mlproject_defaults(module_file: Path, entry_point: str = "main") -> tuple[Path, dict[str, str]]:
    """The MLproject of the nearest folder above ``module_file`` that holds one, and the
    defaults of ``entry_point``'s parameters there, as the strings MLflow puts into the command."""
    import yaml

    found = (folder / "MLproject" for folder in module_file.parents)
    mlproject = next((path for path in found if path.is_file()), None)
    if mlproject is None:
        raise FileNotFoundError(f"no MLproject file in a folder above {module_file}")
    spec = yaml.safe_load(mlproject.read_text())
    parameters = spec["entry_points"][entry_point].get("parameters") or {}
    return mlproject, {
        name: str(param["default"])
        for name, param in parameters.items()
        if isinstance(param, dict) and "default" in param
    }


def fail(prog: str, message: str, status: int = 2) -> NoReturn:
    """Print ``prog: error: message`` as one line on stderr and exit with ``status``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _show(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _describe(kind: type, low: float | None, high: float | None, open_low: bool) -> str:
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        return f"{noun} between {_show(low)} and {_show(high)}"
    if low is not None:
        return f"{noun} {'>' if open_low else '>='} {_show(low)}"
    if high is not None:
        return f"{noun} <= {_show(high)}"
    return noun


def number(
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float), finite, within [low, high].

    ``open_low``/``open_high`` exclude the bound itself (e.g. a learning rate > 0).
    """
    expected = _describe(kind, low, high, open_low)

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        inside = math.isfinite(value)
        if inside and low is not None:
            inside = value > low if open_low else value >= low
        if inside and high is not None:
            inside = value < high if open_high else value <= high
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in some messages
    return convert


def boolean(text: str) -> bool:
    """An argparse type: true/false, yes/no, 1/0 (the empty string is false)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def folder(text: str) -> Path:
    """An argparse type: an existing folder."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder {text!r}")
    return path


def model_name(text: str) -> str:
    """An argparse type: a registered model name, or "" for "do not register".

    A name this accepts is one the registry accepts (tests/test_projects.py checks it against
    MLflow's own validation), so registering never fails on the name after training.
    """
    if not text:
        return text
    if not MODEL_NAME.fullmatch(text):
        expected = "a model name of letters, digits, '-', '_', '.' and spaces"
    elif not text.strip():
        expected = "a model name that is not only spaces"
    elif text == "." or text.startswith(".."):
        expected = "a model name other than '.' that does not start with '..'"
    elif len(text) > MAX_MODEL_NAME:
        expected = f"a model name of at most {MAX_MODEL_NAME} characters"
    else:
        return text
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")


# An argparse type: a random seed, as numpy and torch take one.
seed = number(int, 0, 2**32 - 1)
