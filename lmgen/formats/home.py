"""lmgen's home: where its caches and the default model live ($LMGEN_HOME). The lowest module of
formats: everything that keeps files there imports it, and it imports nothing of formats."""

from __future__ import annotations

import os
from pathlib import Path

from lmgen.environment import directory


def cache_dir() -> Path:
    """$LMGEN_HOME, else $XDG_CACHE_HOME/lmgen, else ~/.cache/lmgen."""
    home = directory("LMGEN_HOME")
    if home is not None:
        return home
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmgen"


def keep(path: Path, text: str) -> bool:
    """Write one of lmgen's own small files (a memo, a ledger) whole or not at all: written aside,
    then renamed. Best effort: a home that cannot be written only costs the work next time
    (False)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
        return True
    except OSError:
        partial.unlink(missing_ok=True)
        return False
