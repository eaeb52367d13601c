"""A GGUF file's block tensors in the kernels' packed layout, kept in lmgen's cache and mapped.

The first load of a GGUF file packs its Q8_0/Q4_0/Q4_1 tensors (and re-quantizes any other
format to Q8_0) for the kernels (``quant.pack``), then writes the packed bytes beside the file's
index (``gguf_index``: keyed by the file's content) as one file, and a
table of where each tensor lies. Later loads map that file: the tensors are views of it, read
by the kernels straight from the page cache, with nothing packed or copied (the first token
comes sooner than from the fp32 expansion). A table that does not match its file is ignored,
and the tensors packed again: the cache is lmgen's own, derived from the GGUF file.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from lmgen.model import quant

PACKED, TABLE = "packed.bin", "packed.json"
ALIGN = 64  # each tensor starts on a cache line


def read(root: Path) -> tuple[dict, dict] | None:
    """(canonical name → (packed tensor, BlockFormat), the re-quantization report's fields), or
    None when there is no usable packed file yet."""
    try:
        table = json.loads((root / TABLE).read_text(encoding="utf-8"))
        size = (root / PACKED).stat().st_size
        entries = table["tensors"]
        if table["size"] != size or not all(0 <= e["offset"] <= e["offset"] + e["nbytes"] <= size for e in entries):
            return None
        data = np.memmap(root / PACKED, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        with warnings.catch_warnings():  # the map is read-only, and nothing ever writes weights
            warnings.simplefilter("ignore", UserWarning)
            blocks = {e["name"]: (torch.from_numpy(data[e["offset"]: e["offset"] + e["nbytes"]]).view(e["groups"], -1),
                                  quant.ALL_FORMATS[e["format"]]) for e in entries}
        return blocks, table["requantized"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(root: Path, blocks: dict, requantized: dict) -> None:
    """Keep the packed tensors in root (written aside, then renamed: a reader never sees half).
    A cache that cannot be written (a read-only disk) only costs the packing next time."""
    entries, offset = [], 0
    for name, (packed, fmt) in blocks.items():
        offset = -(-offset // ALIGN) * ALIGN
        entries.append({"name": name, "format": fmt.name, "offset": offset, "nbytes": packed.numel(),
                        "groups": packed.shape[0]})
        offset += packed.numel()
    partial = root / f".{PACKED}.{os.getpid()}.partial"
    try:
        with open(partial, "wb") as out:
            for entry, (packed, _) in zip(entries, blocks.values()):
                out.seek(entry["offset"])
                out.write(packed.contiguous().numpy())
            out.truncate(offset)
        os.replace(partial, root / PACKED)
        table = root / f".{TABLE}.{os.getpid()}.partial"
        table.write_text(json.dumps({"size": offset, "tensors": entries, "requantized": requantized}), encoding="utf-8")
        os.replace(table, root / TABLE)
    except OSError:
        partial.unlink(missing_ok=True)
