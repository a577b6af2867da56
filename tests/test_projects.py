"""Smoke tests: `mlflow run` every project under projects/ with its own tiny configuration.

Projects are discovered, not listed: a new folder with an MLproject and a smoke.yaml is
tested without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scaffold.layout import PROJECTS, ROOT
from tests.helpers.projects import (
    assert_smoke_run,
    project_dirs,
    smoke_config,
    smoke_params,
    smoke_run,
)


def test_projects_are_found() -> None:
    assert PROJECTS / "mnist-conda" in project_dirs()


@pytest.mark.slow
@pytest.mark.parametrize("project", smoke_params())
def test_smoke_run(project: Path, tracking_uri: str, tmp_path: Path) -> None:
    """`mlflow run` the project as its smoke.yaml says (Docker projects: --build-image)."""
    result = smoke_run(project, tracking_uri, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_smoke_run(project, tracking_uri)


def test_a_project_left_out_names_the_test_that_runs_it() -> None:
    """``covered_by`` in smoke.yaml must name a test function that exists."""
    covered = {p: smoke_config(p).get("covered_by") for p in project_dirs()}
    named = {project: node for project, node in covered.items() if node}
    assert named, "no project is left to another test"
    for project, node in named.items():
        path, function = node.split("::")
        assert f"\ndef {function}(" in (ROOT / path).read_text(), (project.name, node)
