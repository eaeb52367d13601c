"""What models are here: the default model in lmgen's home and what the Hugging Face cache holds
that lmgen can run (``models``); a ledger of what lmgen itself fetched, and removing only that
(``removable``, ``remove``). Torch-free and network-free.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from lmgen.errors import CheckpointError
from lmgen.formats.hub.choose import gguf_models, is_gguf_repo
from lmgen.formats.hub.ledger import forget, read_ledger
from lmgen.formats.hub.pull import Hub, cached_files, snapshot
from lmgen.formats.hub.reference import HubRef



@dataclass(frozen=True)
class Entry:
    name: str  # what --model takes
    format: str  # gguf or safetensors
    family: str  # config.json's model_type, or the GGUF file's architecture
    size: int
    quant: str  # the GGUF file's tag, or the checkpoint's dtype ("-" if unknown)
    path: Path
    pulled_by_lmgen: bool
    repo: str | None = None  # the Hub repo it is in (None: lmgen's default model)

    def record(self) -> dict:
        return {"name": self.name, "format": self.format, "family": self.family, "size": self.size,
                "quant": self.quant, "path": str(self.path), "pulled_by_lmgen": self.pulled_by_lmgen}


def models(hub: Hub | None = None) -> list[Entry]:
    """Every model lmgen can run here: the default, then the Hub cache's, by name."""
    from lmgen.formats.paths import DEFAULT_GGUF_FILE, default_model_dir

    hub = hub or Hub.from_environment()
    out = []
    default = default_model_dir() / DEFAULT_GGUF_FILE
    if default.is_file():
        out.append(Entry("(default)", "gguf", gguf_architecture(default), default.stat().st_size, "Q4_1", default, False))
    ledger = read_ledger()
    for root in sorted(hub.cache.glob("models--*--*")) if hub.cache.is_dir() else []:
        repo = root.name[len("models--"):].replace("--", "/", 1)
        found = snapshot(HubRef(repo), hub)
        if found is not None:
            out += _entries(repo, *found, ledger.get(repo, {}))
    return out


def _entries(repo: str, commit: str, folder: Path, pulled: dict) -> list[Entry]:
    files = cached_files(folder)
    mine = set(pulled.get(commit, []))
    if is_gguf_repo(files):
        return [Entry(f"{repo}:{m.tag}" if m.tag else f"hf://{repo}/{m.name}", "gguf",
                      gguf_architecture(folder / m.name), m.size, m.tag or "-", folder / m.name,
                      all(p.name in mine for p in m.parts), repo)
                for m in gguf_models(files) if all((folder / p.name).is_file() for p in m.parts)]
    if not (folder / "config.json").is_file() or not any(f.name.endswith(".safetensors") for f in files):
        return []
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        family, dtype = str(config.get("model_type", "-")), str(config.get("torch_dtype") or config.get("dtype") or "-")
    except (OSError, ValueError, AttributeError):
        family, dtype = "-", "-"
    size = sum(f.size for f in files if f.name.endswith(".safetensors"))
    return [Entry(repo, "safetensors", family, size, dtype, folder, bool(mine), repo)]


def gguf_architecture(path: Path) -> str:
    """general.architecture, read from the first key-value pairs of a GGUF header (it comes first
    in files llama.cpp writes; '-' where it is not among the first 64 or the header is not GGUF)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return "-"
            f.read(4 + 8)  # version, tensor count
            (count,) = struct.unpack("<Q", f.read(8))
            for _ in range(min(count, 64)):
                key = f.read(struct.unpack("<Q", f.read(8))[0])
                (kind,) = struct.unpack("<I", f.read(4))
                if kind == 8:  # a string
                    value = f.read(struct.unpack("<Q", f.read(8))[0])
                    if key == b"general.architecture":
                        return value.decode("utf-8", "replace")
                elif kind in sizes:
                    f.read(sizes[kind])
                else:  # an array: the architecture is not after it in files lmgen has seen
                    return "-"
    except (OSError, struct.error):
        pass
    return "-"


def removable(name: str, hub: Hub | None = None) -> tuple[Entry, list[Path]]:
    """The entry ``name`` means and the files removing it deletes (snapshot links and the blobs
    no other link uses); refused unless lmgen fetched it."""
    matches = [e for e in models(hub) if e.name.lower() == name.lower()]
    if not matches:
        raise CheckpointError(f"no model {name} here (`lmgen list` shows what there is)")
    entry = matches[0]
    if not entry.pulled_by_lmgen:
        raise CheckpointError(f"{name} was not fetched by lmgen: lmgen removes only what it fetched "
                              "(`hf cache rm` removes anything in the Hugging Face cache)")
    links = sorted(entry.path.iterdir()) if entry.path.is_dir() else \
        [entry.path.parent / p.name for m in gguf_models(cached_files(entry.path.parent))
         if m.name == entry.path.name for p in m.parts]
    return entry, links


def remove(entry: Entry, links: list[Path]) -> int:
    """Delete the links and the blobs no other link uses, and the entry's lines of the ledger;
    the bytes freed."""
    freed = 0
    for link in links:
        blob = link.resolve()
        link.unlink(missing_ok=True)
        if blob != link and blob.exists() and not _still_linked(blob):
            freed += blob.stat().st_size
            blob.unlink()
    folder = entry.path if entry.path.is_dir() else entry.path.parent
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    forget(entry.repo, {link.name for link in links})
    return freed


def _still_linked(blob: Path) -> bool:
    """Whether another snapshot of the repo still points at the blob."""
    return any(p.is_symlink() and p.resolve() == blob for p in (blob.parent.parent / "snapshots").rglob("*"))

