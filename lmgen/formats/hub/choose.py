"""Which files of a Hub repo a reference means (pure: a listing in, a choice out).

A GGUF repo holds one file per quantization (``Qwen3-0.6B-Q4_K_M.gguf``; a large one split in
parts ``…-00001-of-00003.gguf``). ``:QUANT`` picks the file whose name carries that tag
(case-insensitive); without one, Q4_K_M, else the smallest file at 4 bits per weight or more,
said in one note. A repo with no GGUF file is a checkpoint: its config, tokenizer, chat
template and safetensors shards, nothing else (no other formats, no subfolders).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from lmgen.errors import CheckpointError

DEFAULT_QUANT = "Q4_K_M"
TAG = re.compile(r"(?:^|[-._])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|FP16|F32|TQ\d_\d|MXFP4)(?=$|[-._])", re.IGNORECASE)
SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<parts>\d{5})\.gguf$", re.IGNORECASE)
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                    "model.safetensors.index.json", "*.safetensors")


@dataclass(frozen=True)
class RepoFile:
    name: str  # the path in the repo
    size: int
    sha256: str | None = None  # an LFS file's, as the Hub lists it


@dataclass(frozen=True)
class GGUFModel:
    """One quantization of a GGUF repo: its file, or its split file's parts in order."""

    tag: str | None
    parts: tuple[RepoFile, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def name(self) -> str:
        return self.parts[0].name


def tag_of(name: str) -> str | None:
    """The quantization tag a GGUF file's name carries (upper case), or None."""
    base = name.rsplit("/", 1)[-1]
    split = SPLIT.match(base)
    stem = split["stem"] if split else base[: -len(".gguf")] if base.lower().endswith(".gguf") else base
    tags = TAG.findall(stem)
    return tags[-1].upper() if tags else None


def bits(tag: str | None) -> float:
    """Nominal bits per weight of a tag (Q4_K_M: 4, F16: 16; unknown: 0)."""
    if tag in ("F16", "FP16", "BF16"):
        return 16
    if tag == "F32":
        return 32
    if tag == "MXFP4":
        return 4
    digits = re.match(r"I?T?Q(\d)", tag or "")
    return float(digits.group(1)) if digits else 0


def gguf_models(files: list[RepoFile]) -> list[GGUFModel]:
    """The repo's GGUF models (vision projectors left out), split parts joined; a split file with
    parts missing is refused."""
    singles, splits = [], {}
    for f in files:
        base = f.name.rsplit("/", 1)[-1]
        if not base.lower().endswith(".gguf") or base.lower().startswith("mmproj"):
            continue
        split = SPLIT.match(f.name)
        if split:
            splits.setdefault((split["stem"], int(split["parts"])), []).append((int(split["part"]), f))
        else:
            singles.append(GGUFModel(tag_of(f.name), (f,)))
    for (stem, count), parts in splits.items():
        if sorted(n for n, _ in parts) != list(range(1, count + 1)):
            raise CheckpointError(f"the split GGUF file {stem} has {len(parts)} of its {count} parts in the repo")
        singles.append(GGUFModel(tag_of(parts[0][1].name), tuple(f for _, f in sorted(parts, key=lambda p: p[0]))))
    return sorted(singles, key=lambda m: (len(m.name), m.name))


def choose_gguf(repo: str, files: list[RepoFile], quant: str | None, file: str | None) -> tuple[GGUFModel, str | None]:
    """(the model a reference means, a note saying which one when no quant was given)."""
    models = gguf_models(files)
    if file is not None:
        for m in models:
            if file in (p.name for p in m.parts):
                return m, None
        raise CheckpointError(f"{repo} has no GGUF file {file}" + _listing(models))
    if quant is not None:
        for m in models:
            if (m.tag or "").upper() == quant.upper():
                return m, None
        raise CheckpointError(f"{repo} has no {quant} file" + _listing(models))
    for m in models:
        if m.tag == DEFAULT_QUANT:
            return m, f"{repo}: no quantization given, using {DEFAULT_QUANT} ({m.name})"
    wide = sorted((m for m in models if bits(m.tag) >= 4), key=lambda m: (m.size, m.name))
    pick = wide[0] if wide else max(models, key=lambda m: (m.size, m.name))
    rule = "the smallest at 4 bits per weight or more" if wide else "the largest, none has 4 bits per weight"
    return pick, f"{repo} has no {DEFAULT_QUANT}: using {pick.tag or pick.name}, {rule} ({pick.name})"


def _listing(models: list[GGUFModel]) -> str:
    tags = sorted({m.tag or m.name for m in models})
    return f"; it has {', '.join(tags)}" if tags else "; it has no GGUF file"


def checkpoint_files(files: list[RepoFile]) -> list[RepoFile]:
    """A checkpoint repo's files lmgen runs: config, tokenizer, template, weights (top level only)."""
    return [f for f in files if "/" not in f.name and any(fnmatch.fnmatch(f.name, p) for p in CHECKPOINT_FILES)]


def is_gguf_repo(files: list[RepoFile]) -> bool:
    return any(f.name.lower().endswith(".gguf") for f in files)
