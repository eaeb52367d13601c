"""A model reference: a local path, or a name on the Hugging Face Hub.

    ORG/REPO[:QUANT]                   Qwen/Qwen3-0.6B-GGUF:Q4_K_M (QUANT picks a GGUF file)
    hf://ORG/REPO[/FILE][@REVISION]    hf://Qwen/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q8_0.gguf@main

How a string is read (``parse``): ``hf://…`` is always a Hub name. Otherwise a path that exists
is that path; ``ORG/REPO`` or ``ORG/REPO:QUANT`` that is no existing path is a Hub name (a name
ending in .gguf, .safetensors or .json reads as a path: a missing file, not a repo). Anything
else is a path. Torch-free and network-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lmgen.errors import InputError, printable

PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"  # an org or repo name, as the Hub allows them
NAME = re.compile(rf"({PART})/({PART})(?::([A-Za-z0-9_.-]{{1,32}}))?")
PATH_SUFFIXES = (".gguf", ".safetensors", ".json", ".toml")


@dataclass(frozen=True)
class HubRef:
    repo: str  # ORG/REPO
    quant: str | None = None  # a GGUF quantization tag (Q4_K_M), matched case-insensitively
    file: str | None = None  # one file of the repo
    revision: str | None = None  # a branch, tag or commit (default: main)

    def __str__(self) -> str:
        if self.file is None and self.revision is None:
            return self.repo + (f":{self.quant}" if self.quant else "")
        return f"hf://{self.repo}" + (f"/{self.file}" if self.file else "") + (f"@{self.revision}" if self.revision else "")


def parse(text: str) -> HubRef | None:
    """The Hub name text means, or None for a path (see the module's rules)."""
    if text.startswith("hf://"):
        return _parse_url(text)
    if os.path.lexists(text) or text.lower().endswith(PATH_SUFFIXES):
        return None
    match = NAME.fullmatch(text)
    if match is None or any(".." in p or "--" in p for p in match.group(1, 2)):
        return None
    return HubRef(f"{match.group(1)}/{match.group(2)}", match.group(3))


def shadowed(text: str) -> bool:
    """An existing path that also reads as a Hub name: the path is used, and a note says so."""
    return not text.startswith("hf://") and os.path.lexists(text) and NAME.fullmatch(text) is not None


def _parse_url(text: str) -> HubRef:
    rest, revision = text[len("hf://"):], None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}", revision) or ".." in revision:
            raise InputError(f"{printable(repr(text))}: the revision after @ must be a branch, tag or commit")
    org, _, tail = rest.partition("/")
    repo, _, file = tail.partition("/")
    if NAME.fullmatch(f"{org}/{repo}") is None or ":" in repo:
        raise InputError(f"{printable(repr(text))} is not a Hub reference: write hf://ORG/REPO[/FILE][@REVISION]")
    if file and (file.startswith("/") or any(part in ("", ".", "..") for part in file.split("/"))):
        raise InputError(f"{printable(repr(text))}: the file must be a path inside the repo")
    return HubRef(f"{org}/{repo}", None, file or None, revision)
