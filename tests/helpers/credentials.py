"""Fake credentials planted in a test, and where a test looks for their values."""

from __future__ import annotations

import secrets
from pathlib import Path


def fake_credentials() -> dict[str, str]:
    """Recognisable, unique fake keys (no real key's shape: the repository scan stays clean)."""
    return {
        "AWS_ACCESS_KEY_ID": f"FAKEKEYID{secrets.token_hex(8).upper()}",
        "AWS_SECRET_ACCESS_KEY": f"fake-secret-{secrets.token_hex(16)}",
        "MLFLOW_TRACKING_PASSWORD": f"fake-password-{secrets.token_hex(8)}",
    }


def with_password(url: str, password: str) -> str:
    """``url`` (http://host:port) with the user ``alice`` and ``password`` in it."""
    return url.replace("://", f"://alice:{password}@", 1)


def leaked(values: dict[str, str], *texts: str | bytes) -> list[str]:
    """The names of ``values`` whose value is in any of ``texts``."""
    return [
        name
        for name, value in values.items()
        for text in texts
        if (value if isinstance(text, str) else value.encode()) in text
    ]


def command_lines() -> list[bytes]:
    """The arguments of every process now running (``/proc/*/cmdline``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:  # gone meanwhile
                continue
    return found
