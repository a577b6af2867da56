"""Fake credentials planted in a test, and where a test looks for their values."""

from __future__ import annotations

import re
import secrets
import string
from pathlib import Path

# The shapes of AWS keys: what the repository and image scans look for.
AWS_KEY_ID = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}")
AWS_SECRET = re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}", re.IGNORECASE)


def aws_key_shapes(text: str) -> list[str]:
    """What in ``text`` has the shape of an AWS key id or a secret key assignment."""
    patterns = (AWS_KEY_ID, AWS_SECRET)
    return [match.group(0) for pattern in patterns for match in pattern.finditer(text)]


def fake_credentials() -> dict[str, str]:
    """Unique fake keys in the shape of real ones, made at run time (never in a file of the
    repository), so every scan that looks for real keys finds these too."""
    upper = string.ascii_uppercase + string.digits
    secret = string.ascii_letters + string.digits + "/+"
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
        "AWS_SECRET_ACCESS_KEY": "".join(secrets.choice(secret) for _ in range(40)),
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
