"""The mlflow version the store's tooling was written for.

A module that calls names MLflow does not document (a private module, an undocumented
function) checks the running mlflow first: after an upgrade it stops in one line that says so,
instead of an ``AttributeError`` deep inside MLflow.
"""

from __future__ import annotations

import mlflow

WRITTEN_FOR = "3.17.2"


def version_problem(who: str, calls: str, installed: str = mlflow.__version__) -> str | None:
    """None when ``installed`` is the version ``who`` was written for, else the line to show;
    ``calls`` names the undocumented MLflow names it relies on."""
    if installed == WRITTEN_FOR:
        return None
    return (
        f"{who} was written for mlflow {WRITTEN_FOR} (it calls {calls}, which MLflow does not "
        f"document); this environment has mlflow {installed}: pin mlflow=={WRITTEN_FOR}"
    )
