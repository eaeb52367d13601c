"""A GGUF file split in parts (llama.cpp's ``gguf-split``: ``…-00001-of-00003.gguf``, each part
with its own header and tensors, the first holding the metadata) joined into one file, which
lmgen maps as any other. Made once, in lmgen's home, keyed by the parts' blobs; written aside
and renamed into place (``staged_file``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lmgen.errors import CheckpointError

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def joined(parts: list[Path]) -> Path:
    """One GGUF file with every part's tensors and the first part's metadata (less split.*)."""
    from lmgen.formats.home import cache_dir

    key = hashlib.sha256("|".join(f"{p.resolve().name}:{p.stat().st_size}" for p in parts).encode()).hexdigest()[:16]
    stem = parts[0].name.rsplit("-00001-of-", 1)[0]
    target = cache_dir() / "joined" / f"{stem}-{key}.gguf"
    if not target.is_file():
        _join(parts, target)
    return target


def _join(parts: list[Path], target: Path) -> None:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from lmgen.formats.files import staged_file

    try:
        readers = [GGUFReader(p) for p in parts]
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"a part of the split GGUF file {parts[0].name} cannot be read: {exc}") from None
    first = readers[0].fields
    if "general.architecture" not in first:
        raise CheckpointError(f"{parts[0].name} has no general.architecture: not the first part of a split file")
    arch = first["general.architecture"].contents()
    with staged_file(target, force=True) as stage:
        writer = GGUFWriter(stage, arch)
        for field in first.values():
            if field.name in ("general.architecture", *SPLIT_KEYS) or field.name.startswith("GGUF."):
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        tensors = [t for r in readers for t in r.tensors]
        for t in tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.n_bytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(t.data)
        writer.close()
