"""A GGUF file's tensor table and block scales, checked as llama.cpp checks them.

The ``gguf`` library's reader trusts the table: it adds each tensor's offset to the start of
the data section as a uint64, so an offset of 2**64 - 32 wraps round to point into the header;
it slices whatever bytes lie there, another tensor's or the header's; and it never looks at
the values. Such a file would be converted or run as garbage, so lmgen refuses it, as
llama.cpp's ``gguf_init`` and ``ggml_validate_row_data`` do, with one ``CheckpointError``
naming the tensor and the problem:

- ``check_layout`` (as the file is read, before the reader slices any tensor's bytes): every row a
  whole number of blocks, the byte count shape × type size, computed with Python ints from the
  raw table so that nothing wraps; each offset a multiple of ``general.alignment``; each tensor
  inside the data section; no byte shared by two tensors.
- ``check_finite`` (before any weight is used or written): every F32, F16, BF16 and F64 value
  finite, and every block's fp16 scale (and minimum) finite — exactly the fields
  ``ggml_validate_row_data`` checks; with those finite, every dequantized weight is finite.

Vectorised over strided views of the scale fields, a chunk of blocks at a time, and each
tensor's pages handed back once checked, so a large file costs neither time nor memory.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lmgen.errors import CheckpointError, printable

MAX_DIM = 1 << 63  # llama.cpp reads dimensions as int64
CHUNK = 1 << 20  # blocks checked at once: bounds the temporaries


@dataclass(frozen=True)
class Field:
    """A floating-point field of a block: where it lies, and the bits that make it NaN or infinite."""

    name: str
    offset: int  # bytes into the block
    dtype: str  # its bits as an unsigned integer
    exponent: int  # all ones: NaN or infinity
    mantissa: int  # non-zero with an all-ones exponent: NaN


def _f16(name: str, offset: int) -> Field:
    return Field(name, offset, "<u2", 0x7C00, 0x03FF)


# The value types: each "block" one value.
VALUES = {
    "F32": (Field("value", 0, "<u4", 0x7F800000, 0x007FFFFF),),
    "F16": (_f16("value", 0),),
    "BF16": (Field("value", 0, "<u2", 0x7F80, 0x007F),),
    "F64": (Field("value", 0, "<u8", 0x7FF << 52, (1 << 52) - 1),),
}
# The block types: the scale fields ggml_validate_row_data checks (layouts of ggml-common.h).
SCALES = {
    **{name: (_f16("d", 0),) for name in ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "IQ1_S", "IQ2_XXS", "IQ2_XS",
                                          "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")},
    **{name: (_f16("d", 0), _f16("m", 2)) for name in ("Q4_1", "Q5_1")},
    **{name: (_f16("d", 0), _f16("dmin", 2)) for name in ("Q4_K", "Q5_K")},
    "Q2_K": (_f16("d", 80), _f16("dmin", 82)),  # after 16 scales and 64 bytes of quants
    "Q3_K": (_f16("d", 108),),  # last, after hmask, quants and scales
    "Q6_K": (_f16("d", 208),),  # last, after ql, qh and 16 int8 scales
    "TQ1_0": (_f16("d", 52),),
    "TQ2_0": (_f16("d", 64),),
    "Q8_K": (Field("d", 0, "<u4", 0x7F800000, 0x007FFFFF),),
    "MXFP4": (Field("e", 0, "u1", 0xFF, 0xFF),),  # E8M0: 0xFF is its NaN
}
FIELDS = VALUES | SCALES


@dataclass(frozen=True)
class TableEntry:
    """A tensor as the file's table describes it, before the gguf reader turns it into an array."""

    name: str
    type: int  # ggml's type number
    dims: tuple[int, ...]  # innermost first, as stored
    offset: int  # from the start of the data section


def check_layout(entries: list[TableEntry], alignment: int, data_size: int) -> None:
    """Every tensor's bytes lie inside the data section, at the file's alignment, apart from every
    other tensor's, and are as many as its shape and type imply."""
    _check_apart([_span(entry, alignment, data_size) for entry in entries])


def _span(entry: TableEntry, alignment: int, data_size: int) -> tuple[int, int, str]:
    """(start, end, name) of a tensor in the data section, in Python ints: nothing wraps."""
    name, dims, offset = printable(entry.name), entry.dims, entry.offset
    if entry.type not in GGMLQuantizationType._value2member_map_:
        raise CheckpointError(f"GGUF tensor {name} has an unknown type ({entry.type})")
    qtype = GGMLQuantizationType(entry.type)
    if any(n >= MAX_DIM for n in dims):
        raise CheckpointError(f"GGUF tensor {name} has a dimension of {max(dims)}, beyond what GGUF allows")
    block, type_size = GGML_QUANT_SIZES[qtype]
    if dims and dims[0] % block:
        raise CheckpointError(f"GGUF tensor {name} ({qtype.name}) has rows of {dims[0]} values, "
                              f"not a whole number of {block}-value blocks")
    nbytes = math.prod(dims) // block * type_size
    if offset % alignment:
        raise CheckpointError(f"GGUF tensor {name} starts at data offset {offset}, "
                              f"not a multiple of the file's alignment ({alignment})")
    if offset + nbytes > data_size:
        raise CheckpointError(f"GGUF tensor {name} ({nbytes} bytes at data offset {offset}) lies beyond "
                              f"the end of the data section ({data_size} bytes)")
    return offset, offset + nbytes, name


def _check_apart(spans: list[tuple[int, int, str]]) -> None:
    """No byte belongs to two tensors (sorted by start, an overlap is always between neighbours)."""
    spans = sorted(span for span in spans if span[1] > span[0])
    for (start, end, first), (other, _, second) in zip(spans, spans[1:]):
        if other == start:
            raise CheckpointError(f"GGUF tensors {first} and {second} both start at data offset {start}: "
                                  "they share their bytes")
        if other < end:
            raise CheckpointError(f"GGUF tensors {first} (data offsets {start}..{end}) and {second} "
                                  f"(from {other}) overlap")


def check_finite(reader) -> None:
    """Every value and block scale of every tensor is finite (call check_layout first)."""
    for t in reader.tensors:
        kind = t.tensor_type.name
        if not t.n_bytes or (kind not in FIELDS and kind != "IQ1_M"):  # integer types, as ggml's
            continue
        blocks = np.asarray(t.data).reshape(-1).view(np.uint8).reshape(-1, GGML_QUANT_SIZES[t.tensor_type][1])
        for first in range(0, len(blocks), CHUNK):
            for field, bits in _scale_bits(kind, blocks[first : first + CHUNK]):
                bad = np.flatnonzero((bits & field.exponent) == field.exponent)
                if len(bad):
                    _refuse(t, field, first + int(bad[0]), int(bits[bad[0]]), len(blocks))
        _release(reader.data, int(t.data_offset), int(t.n_bytes))


def _scale_bits(kind: str, blocks: np.ndarray):
    """(field, its bits in each block) for every field of ``kind`` that must be finite."""
    if kind == "IQ1_M":  # its fp16 scale is spread over the top nibbles of four 16-bit scale words
        words = blocks[:, 48:56].view("<u2")
        yield _f16("d", 0), (words[:, 0] >> 12) | ((words[:, 1] >> 8) & 0xF0) | ((words[:, 2] >> 4) & 0xF00) \
            | (words[:, 3] & 0xF000)
        return
    for field in FIELDS[kind]:
        width = np.dtype(field.dtype).itemsize
        yield field, blocks[:, field.offset : field.offset + width].view(field.dtype)[:, 0]


def _refuse(t, field: Field, index: int, bits: int, count: int) -> None:
    what = "a NaN" if bits & field.mantissa else "an infinity"
    kind, name = t.tensor_type.name, printable(t.name)
    if field.name == "value":
        raise CheckpointError(f"GGUF tensor {name} ({kind}) holds {what} (value {index} of {count})")
    raise CheckpointError(f"GGUF tensor {name} ({kind}) has {what} as scale {field.name} of block {index} of {count}")


def _release(data: np.ndarray, start: int, nbytes: int) -> None:
    """Hand a checked tensor's pages back (MADV_DONTNEED on the private read-only map): checking a
    large file must not make it resident all at once."""
    mapping = getattr(data, "_mmap", None)
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    length = min(start + nbytes, len(mapping)) - first
    if length > 0:
        mapping.madvise(mmap.MADV_DONTNEED, first, length)

