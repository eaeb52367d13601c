"""What lmgen keeps of a GGUF file it runs as it is: its config, tokenizer and tensor table.

Parsing a GGUF header with the ``gguf`` library's reader takes seconds for a model with a large
vocabulary (it builds Python objects for every token and merge). So the first run of a file
parses it once — checking its metadata and every tensor's name and shape as ``lmgen convert``
does — and writes config.json, tokenizer.json, tokenizer_config.json (the chat template) and
tensors.json (each tensor's name, type, shape and byte range) into lmgen's cache, under a key
made of the file's content (``formats.fingerprint``: a changed file is never served from another
file's entry). Later runs read those and map the file.
Torch-free: ``generate`` reads the config from here before it imports torch.
"""

from __future__ import annotations

from pathlib import Path

from lmgen.errors import CheckpointError
from lmgen.formats.files import read_json, regular_file, staged_directory

TABLE = "tensors.json"


def cache_path(src: Path, suffix: str = "") -> Path:
    """Where files derived from a GGUF file live in the cache, under a key made of its bytes."""
    from lmgen.formats.fingerprint import content_digest
    from lmgen.formats.home import cache_dir

    return cache_dir() / "gguf" / f"{src.stem}-{content_digest(src)[:32]}{suffix}"


def gguf_index(src: Path) -> Path:
    """The cache directory holding src's config, tokenizer and tensor table (made on first use,
    and made again if what is there is damaged: it is lmgen's own, derived from the file)."""
    regular_file(src, "GGUF file")
    target = cache_path(src)
    if not all((target / name).is_file() for name in SMALL_FILES) or _table(target) is None:
        _build(src, target)
    return target


SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", TABLE)
FIELDS = {"name": str, "type": int, "shape": list, "offset": int, "nbytes": int}  # of each tensor in the table


def _table(root: Path) -> dict | None:
    """The tensor table in root, or None if it is missing or not what _build writes."""
    try:
        table = read_json(root / TABLE, "GGUF tensor table")
    except CheckpointError:
        return None
    tensors = table.get("tensors") if isinstance(table, dict) else None
    well_formed = isinstance(table, dict) and isinstance(table.get("architecture"), str) and isinstance(tensors, list) \
        and all(isinstance(t, dict) and all(type(t.get(k)) is kind for k, kind in FIELDS.items()) for t in tensors) \
        and all(type(n) is int for t in tensors for n in t["shape"])
    return table if well_formed else None


def _build(src: Path, target: Path) -> None:
    from lmgen.formats.gguf.metadata import open_gguf, read_metadata
    from lmgen.formats.gguf.reader import check_tensors, gguf_arch, gguf_hf_config, write_json, write_small_files
    from lmgen.formats.hf_config import from_hf

    reader = open_gguf(src)
    meta = read_metadata(reader)
    hf = gguf_hf_config(reader, meta)
    cfg = from_hf(hf)
    check_tensors(reader, cfg, gguf_arch(meta))
    tensors = [{"name": t.name, "type": int(t.tensor_type), "shape": [int(n) for n in reversed(t.shape.tolist())],
                "offset": int(t.data_offset), "nbytes": int(t.n_bytes)} for t in reader.tensors]
    with staged_directory(target, force=True) as stage:
        write_small_files(stage, meta, hf, cfg)
        write_json(stage / TABLE, {"architecture": meta["general.architecture"], "tensors": tensors})


def read_table(root: Path, src: Path) -> tuple[str, list[dict]]:
    """(architecture, tensors) from the table, each tensor's bytes checked to lie inside src."""
    table = _table(root)
    if table is None:
        raise CheckpointError(f"{root / TABLE} is damaged; remove {root} and lmgen will read {src} again")
    size = src.stat().st_size
    for t in table["tensors"]:
        if not 0 <= t["offset"] <= t["offset"] + t["nbytes"] <= size:
            raise CheckpointError(f"GGUF tensor {t['name']} lies beyond the end of {src}")
    return table["architecture"], table["tensors"]


def expanded(src: Path) -> Path:
    """The HF-layout fp32 directory of a GGUF file (what ``--dtype`` loads it from): converted
    once and kept in lmgen's cache beside the file's index (``lmgen setup`` makes the default
    model's)."""
    from lmgen.formats.gguf.reader import convert_gguf

    target = cache_path(src, "-fp32")
    if not (target / "config.json").exists():
        convert_gguf(src, target, force=True)
    return target
