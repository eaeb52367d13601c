"""What lmgen itself fetched into the Hugging Face cache (``pulled.json`` in lmgen's home:
{"ORG/REPO": {"COMMIT": [file, ...]}}): ``lmgen rm`` removes only that."""

from __future__ import annotations

import json

from lmgen.formats.home import cache_dir, keep

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
    keep(cache_dir() / LEDGER, json.dumps(ledger, indent=1))


def forget(repo: str, names: set[str]) -> None:
    """The files ``names`` (their file names) of ``repo`` removed from the ledger."""
    ledger = read_ledger()
    for commit, have in ledger.get(repo, {}).items():
        ledger[repo][commit] = [n for n in have if n.rsplit("/", 1)[-1] not in names]
    keep(cache_dir() / LEDGER, json.dumps(ledger, indent=1))
