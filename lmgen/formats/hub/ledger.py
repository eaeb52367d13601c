"""What lmgen itself fetched into the Hugging Face cache (``pulled.json`` in lmgen's home:
{"ORG/REPO": {"COMMIT": [file, ...]}}): ``lmgen rm`` removes only that."""

from __future__ import annotations

import json
import os

from lmgen.formats.home import cache_dir

LEDGER = "pulled.json"


def read_ledger() -> dict:
    try:
        ledger = json.loads((cache_dir() / LEDGER).read_text(encoding="utf-8"))
        return ledger if isinstance(ledger, dict) else {}
    except (OSError, ValueError):
        return {}


def record_pull(repo: str, commit: str, names: list[str]) -> None:
    """Note in the ledger that lmgen fetched these files (so that `lmgen rm` may remove them)."""
    ledger = read_ledger()
    have = ledger.setdefault(repo, {}).setdefault(commit, [])
    have += [n for n in names if n not in have]
    target = cache_dir() / LEDGER
    partial = target.with_name(f".{LEDGER}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(ledger, indent=1), encoding="utf-8")
        os.replace(partial, target)
    except OSError:
        partial.unlink(missing_ok=True)
