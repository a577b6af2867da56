"""Credentials never reach what the tools print: URL passwords and credential variables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from project_tools.redaction import MASK, redact

PROJECT = "projects/mnist-conda"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://mlflow:p@ss@db:5432/mlflow", f"postgresql://mlflow:{MASK}@db:5432/mlflow"),
        ("https://alice:s3cret@mlflow.example:8443/", f"https://alice:{MASK}@mlflow.example:8443/"),
        ("http://a:b@h and http://c:d@e/x", f"http://a:{MASK}@h and http://c:{MASK}@e/x"),
        # No password: nothing to mask.
        ("s3://bucket/runs/a@b", "s3://bucket/runs/a@b"),
        ("mail alice@example.com", "mail alice@example.com"),
        ("http://alice@host:5000", "http://alice@host:5000"),
    ],
)
def test_url_password_masked(text: str, masked: str) -> None:
    assert redact(text, {}) == masked


def test_credential_values_masked() -> None:
    environ = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtn/K7MDENG", "MLFLOW_TRACKING_PASSWORD": "pw"}
    text = "key wJalrXUtn/K7MDENG and pw in a typo"
    # A 2-character value would mask ordinary text: it is left alone.
    assert redact(text, environ) == f"key {MASK} and pw in a typo"


def test_uncaught_traceback_masked() -> None:
    """A project's CLI masks the traceback of an exception nothing catches: a real process."""
    program = (
        "from project_tools.cli import OneLineParser\n"
        "OneLineParser(description='probe')\n"
        "raise RuntimeError('cannot reach postgresql://mlflow:pa@ss-9@db:5432/mlflow')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert f"postgresql://mlflow:{MASK}@db:5432/mlflow" in result.stderr, result.stderr
    assert "pa@ss-9" not in result.stderr
