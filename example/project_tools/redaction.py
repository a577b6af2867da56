"""Mask credentials in text: the values of credential variables and passwords in URLs.

Free of MLflow and of the rest of the repository: `make store` and the make targets mask what
they print with it before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Mapping

# Environment variables whose value is a credential (matched anywhere in the name).
SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|SESSION_KEY|PRIVATE_KEY|API_KEY|CONNECTION_STRING"
    r"|CREDENTIAL",
    re.IGNORECASE,
)
# user:password@ in a URL (a tracking URI or a database URI). A password may hold "@": it runs
# to the last "@" before the host, which has none.
URL_PASSWORD = re.compile(
    r"(?P<scheme>[A-Za-z][\w+.-]*://[^/@\s:]+):[^/\s]*@(?=[^@/\s]*(?:[/\s]|$))"
)
MASK = "***"


def secret_values(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of credential variables, longest first (a value inside another is masked
    with it). Values under 4 characters are not masked: they would mask ordinary text."""
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """``text`` with every credential value of ``environ`` and every URL password masked."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return URL_PASSWORD.sub(rf"\g<scheme>:{MASK}@", text)


def mask_uncaught_exceptions() -> None:
    """From now on this process prints an uncaught exception's traceback with :func:`redact`
    applied (``sys.excepthook``): a URL or an error message that holds a credential is masked
    there too."""
    if getattr(sys.excepthook, "masks_credentials", False):
        return

    def print_masked(kind, value, trace) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, trace))))

    print_masked.masks_credentials = True  # type: ignore[attr-defined]
    sys.excepthook = print_masked
