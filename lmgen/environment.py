"""lmgen's environment variables, read and checked here as options are checked.

Each variable the README documents is read through one of these functions where it acts, so a
bad value is one line naming the variable and what it accepts (``InputError``: exit 2) rather
than a traceback, exit 1, or a value quietly taken for the default. Unset or empty means the
default. ``LMGEN_SERVER`` and ``LMGEN_API_KEY`` are options' fallbacks (typer reads them):
``server_url`` and ``api_key`` check the value whichever gave it, named as it was given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lmgen.errors import InputError, printable


def value(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty."""
    return os.environ.get(name) or None


def _refuse(name: str, text: str, accepted: str) -> InputError:
    return InputError(f"{name} must be {accepted}, got {printable(repr(text))}")


def choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (LMGEN_KERNELS, LMGEN_AMX): anything else is refused rather than read as
    the default, so a typo never silently changes what runs."""
    text = value(name)
    if text is None:
        return default
    if text not in choices:
        raise _refuse(name, text, ", ".join(choices[:-1]) + " or " + choices[-1])
    return text


def number(name: str, default: float, low: float, high: float, unit: str = "") -> float:
    """A finite number from ``low`` to ``high`` (LMGEN_SPINNER_DELAY)."""
    text = value(name)
    if text is None:
        return default
    try:
        found = float(text)
    except ValueError:
        found = math.nan
    if not low <= found <= high:  # NaN too
        raise _refuse(name, text, f"a number{unit} from {low:g} to {high:g}")
    return found


def whole(name: str, low: int, high: int) -> int | None:
    """A whole number from ``low`` to ``high`` (LMGEN_THREADS), or None when unset."""
    text = value(name)
    if text is None:
        return None
    try:
        found = int(text.strip())
    except ValueError:
        found = low - 1
    if not low <= found <= high:
        raise _refuse(name, text, f"a whole number from {low} to {high}")
    return found


def directory(name: str) -> Path | None:
    """A directory lmgen may create (LMGEN_HOME): anything there but a directory is refused."""
    text = value(name)
    if text is None:
        return None
    path = Path(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise _refuse(name, text, "a directory (or a path where lmgen may make one)")
    return path


def server_url(url: str, where: str) -> str:
    """An http:// or https:// URL with a host (and an optional port and path): what ``--server``
    and $LMGEN_SERVER accept. ``where`` names the one that gave it."""
    from urllib.parse import urlsplit

    accepted = "an http:// or https:// URL with a host, such as http://127.0.0.1:8000"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise _refuse(where, url, f"{accepted} (no spaces or control characters)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port out of range or not a number is a ValueError)
    except ValueError:
        raise _refuse(where, url, accepted) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _refuse(where, url, accepted)
    return url


def api_key(key: str, where: str) -> str:
    """An API key: visible ASCII characters, as an HTTP header can carry them (a line break or a
    character beyond ASCII could never be sent). ``where`` names the option or variable."""
    if not all("!" <= ch <= "~" for ch in key):
        raise InputError(f"{where} must be visible ASCII characters (no spaces, line breaks or other "
                         "characters), as an Authorization header carries it")
    return key
