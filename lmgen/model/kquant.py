"""llama.cpp's 5- and 6-bit block formats and its K-quants: Q5_0, Q5_1, Q4_K, Q5_K and Q6_K.

As a GGUF file stores them (ggml-common.h), a weight row of K values is blocks of

    Q5_0   22 bytes / 32 values: d (fp16), qh (32 fifth bits), 16 bytes of nibbles   w = d (q - 16)
    Q5_1   24 bytes / 32 values: d, m, qh, nibbles                                    w = d q + m
    Q4_K  144 bytes / 256 values: d, dmin, 12 bytes of eight 6-bit scales and mins,
          128 bytes of nibbles                                    w = d sc q - dmin mn per 32 values
    Q5_K  176 bytes / 256 values: as Q4_K, then 32 bytes of fifth bits before the nibbles
    Q6_K  210 bytes / 256 values: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8
          scales (one per 16 values), d                           w = d sc (q - 32)

``fields`` decodes blocks into their parts (every value's q, 0..63, and the scales, per block
of 32 values); ``values`` turns parts into weights with the same fp32 operations as the ``gguf``
library's ``dequantize``. ``pack`` lays the parts out for the kernels (csrc/kquant.h: groups
of 16 rows, per block of 32 the rows' nibbles interleaved four bytes at a time as Q4_0's are,
the high bits rearranged so that one shift puts them in place, then the scales); ``unpack``
gives the parts back. A packed tensor holds as many bytes as the file's, but for the K-quants'
scales and mins, unpacked from 6 bits to a byte each (148 and 180 bytes per 256 values instead
of 144 and 176).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GROUP = 16  # weight rows interleaved in the packed layout
FIELD_SHAPES = {  # per block of the file: the scale fields, and their shapes past (rows, blocks)
    "q5_0": {"d": (2,)},
    "q5_1": {"d": (2,), "m": (2,)},
    "q4_k": {"sc": (8,), "mn": (8,), "d": (2,), "dmin": (2,)},
    "q5_k": {"sc": (8,), "mn": (8,), "d": (2,), "dmin": (2,)},
    "q6_k": {"sc": (16,), "d": (2,)},
}
SUPER = {"q5_0": 32, "q5_1": 32, "q4_k": 256, "q5_k": 256, "q6_k": 256}  # values per block of the file
HIGH_BITS = {"q5_0": 1, "q5_1": 1, "q4_k": 0, "q5_k": 1, "q6_k": 2}


@dataclass
class Fields:
    """Blocks of one format in parts: q (rows, K / 32, 32) uint8, and each scale field (rows,
    blocks of the file, ...) as uint8 bytes (fp16 fields as their two bytes)."""

    q: Tensor
    scales: dict[str, Tensor]


def _halves(b: Tensor) -> Tensor:
    """(..., 2) uint8 → (...) float32: fp16 bytes as their values."""
    return b.contiguous().view(torch.float16)[..., 0].float()


def _nibbles(b: Tensor) -> tuple[Tensor, Tensor]:
    return b & 15, b >> 4


def _bits(word: Tensor, count: int) -> Tensor:
    """(..., 4) bytes of a little-endian 32-bit word → (..., count) of its bits, lowest first."""
    shifts = torch.arange(count) % 8
    return (word[..., torch.arange(count) // 8] >> shifts) & 1


def _scales_k4(s: Tensor) -> tuple[Tensor, Tensor]:
    """Q4_K/Q5_K's 12 bytes → the eight 6-bit scales and mins (ggml's get_scale_min_k4)."""
    lo_sc, lo_mn = s[..., 0:4] & 63, s[..., 4:8] & 63
    hi_sc = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    hi_mn = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return torch.cat([lo_sc, hi_sc], -1), torch.cat([lo_mn, hi_mn], -1)


def fields(blocks: Tensor, name: str, block_bytes: int) -> Fields:
    """The parts of blocks (rows, n · block_bytes) of format ``name``."""
    rows = blocks.shape[0]
    b = blocks.reshape(rows, -1, block_bytes)
    if name in ("q5_0", "q5_1"):
        head = 2 if name == "q5_0" else 4
        lo, hi = _nibbles(b[..., head + 4 :])
        q = torch.cat([lo, hi], -1) | (_bits(b[..., head : head + 4], 32) << 4)
        scales = {"d": b[..., 0:2]} | ({} if name == "q5_0" else {"m": b[..., 2:4]})
        return Fields(q.to(torch.uint8), scales)
    if name in ("q4_k", "q5_k"):
        qs = b[..., -128:].reshape(rows, -1, 4, 32)
        lo, hi = _nibbles(qs)
        q = torch.stack([lo, hi], 3).reshape(rows, -1, 8, 32)  # sub-block 2p: low nibbles, 2p + 1: high
        if name == "q5_k":  # bit s of qh[l]: the fifth bit of value l of sub-block s
            q = q | (((b[..., 16:48, None] >> torch.arange(8)) & 1).transpose(-1, -2) << 4)
        sc, mn = _scales_k4(b[..., 4:16])
        return Fields(q.reshape(rows, -1, 32).to(torch.uint8),
                      {"sc": sc, "mn": mn, "d": b[..., 0:2], "dmin": b[..., 2:4]})
    ql, qh = b[..., :128].reshape(rows, -1, 2, 64), b[..., 128:192].reshape(rows, -1, 2, 1, 32)
    low = torch.cat([ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4], -1)
    high = (qh >> torch.tensor([0, 2, 4, 6])[:, None]) & 3  # (rows, n, 2, 4, 32): values 32k + l
    q = low.reshape(rows, -1, 2, 4, 32) | (high << 4)
    return Fields(q.reshape(rows, -1, 32).to(torch.uint8), {"sc": b[..., 192:208], "d": b[..., 208:210]})


def _word(bits: Tensor) -> Tensor:
    """(..., 32) bits → (..., 4) bytes of the little-endian word holding them, lowest first."""
    return (bits.reshape(*bits.shape[:-1], 4, 8).to(torch.int64) << torch.arange(8)).sum(-1).to(torch.uint8)


def _pack_scales_k4(sc: Tensor, mn: Tensor) -> Tensor:
    """The eight 6-bit scales and mins → Q4_K/Q5_K's 12 bytes (the inverse of ``_scales_k4``)."""
    return torch.cat([sc[..., :4] | ((sc[..., 4:] >> 4) << 6), mn[..., :4] | ((mn[..., 4:] >> 4) << 6),
                      (sc[..., 4:] & 15) | ((mn[..., 4:] & 15) << 4)], -1)


def to_blocks(f: Fields, name: str) -> Tensor:
    """The blocks (rows, n · block bytes) that ``fields`` decodes into ``f``: the file's bytes."""
    rows = f.q.shape[0]
    q, s = f.q, f.scales
    if name in ("q5_0", "q5_1"):
        nibbles = (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)
        parts = [s["d"], *([s["m"]] if name == "q5_1" else []), _word((q >> 4) & 1), nibbles]
        return torch.cat(parts, -1).reshape(rows, -1)
    q = q.reshape(rows, -1, 8, 32)
    if name in ("q4_k", "q5_k"):
        pairs = q.reshape(rows, -1, 4, 2, 32)
        qs = ((pairs[..., 0, :] & 15) | ((pairs[..., 1, :] & 15) << 4)).reshape(rows, -1, 128)
        qh = [(((q >> 4) & 1).to(torch.int64) << torch.arange(8)[:, None]).sum(-2).to(torch.uint8)] \
            if name == "q5_k" else []
        return torch.cat([s["d"], s["dmin"], _pack_scales_k4(s["sc"], s["mn"]), *qh, qs], -1).reshape(rows, -1)
    v = q.reshape(rows, -1, 2, 4, 32)  # (half, k, l): value 128 half + 32 k + l
    low, high = v & 15, (v >> 4) & 3
    ql = torch.cat([low[..., 0, :] | (low[..., 2, :] << 4), low[..., 1, :] | (low[..., 3, :] << 4)], -1)
    qh = (high.to(torch.int64) << torch.tensor([0, 2, 4, 6])[:, None]).sum(-2).to(torch.uint8)
    return torch.cat([ql.reshape(rows, -1, 128), qh.reshape(rows, -1, 64), s["sc"], s["d"]], -1).reshape(rows, -1)


def values(f: Fields, name: str) -> Tensor:
    """The float32 weights (rows, K) of the parts, as ``gguf.quants.dequantize`` computes them."""
    rows, n_sub = f.q.shape[:2]
    q, s = f.q.float(), f.scales
    if name == "q5_0":
        return (_halves(s["d"])[..., None] * (q - 16)).reshape(rows, -1)
    if name == "q5_1":
        return (_halves(s["d"])[..., None] * q + _halves(s["m"])[..., None]).reshape(rows, -1)
    q = q.reshape(rows, -1, 8, 32)
    d = _halves(s["d"])[..., None, None]
    if name == "q6_k":
        scale = (d[..., 0] * s["sc"].view(torch.int8).float()).reshape(rows, -1, 8, 2, 1)
        return (scale * (q.reshape(rows, -1, 8, 2, 16) - 32)).reshape(rows, -1)
    d1 = d * s["sc"].float()[..., None]
    m1 = _halves(s["dmin"])[..., None, None] * s["mn"].float()[..., None]
    return (d1 * q - m1).reshape(rows, -1)


def dequantize(blocks: Tensor, name: str, block_bytes: int) -> Tensor:
    return values(fields(blocks, name, block_bytes), name)


# ---------------------------------------------------------------------------------- packing


def _spread(bits: Tensor, width: int):
    """(..., 32) high bits (``width`` per value) → (..., 4) bytes: byte t holds, for c = 0..3,
    value 4c+t's in bits c·width.. and (width 1) value 16+4c+t's in bit 2c+1."""
    first, second = bits[..., :16].reshape(*bits.shape[:-1], 4, 4), bits[..., 16:].reshape(*bits.shape[:-1], 4, 4)
    shift = (torch.arange(4) * 2)[:, None]
    if width == 1:
        return ((first << shift) | (second << (shift + 1))).sum(-2, dtype=torch.uint8)
    return (first << shift).sum(-2, dtype=torch.uint8), (second << shift).sum(-2, dtype=torch.uint8)


def pack(f: Fields, name: str) -> Tensor:
    """The parts in the kernels' layout: (groups of 16 rows, bytes), missing rows zero."""
    rows, n_sub = f.q.shape[:2]
    pad = -rows % GROUP
    groups = (rows + pad) // GROUP
    subs = SUPER[name] // 32

    def grouped(t: Tensor) -> Tensor:  # (rows, ...) → (groups, 16, ...), zero rows added
        return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]).reshape(groups, GROUP, *t.shape[1:])

    q = grouped(f.q)  # (G, 16, n_sub, 32)
    lo, hi = q[..., :16] & 15, (q[..., 16:] & 15) << 4
    parts = [(lo | hi).reshape(groups, GROUP, n_sub, 4, 4).permute(0, 2, 3, 1, 4).reshape(groups, n_sub, 256)]
    width = HIGH_BITS[name]
    if width == 1:
        parts.append(_spread((q >> 4) & 1, 1).permute(0, 2, 1, 3).reshape(groups, n_sub, 64))
    elif width == 2:
        parts += [w.permute(0, 2, 1, 3).reshape(groups, n_sub, 64) for w in _spread((q >> 4) & 3, 2)]
    blocks = torch.cat(parts, -1).reshape(groups, n_sub // subs, -1)  # the sub-blocks of each block of the file
    tail = [grouped(s).movedim(1, -2 if s.shape[-1] == 2 else -1).reshape(groups, n_sub // subs, -1)
            for s in f.scales.values()]  # (16 rows × 2 bytes), or (8 or 16 per block × 16 rows)
    return torch.cat([blocks, *tail], -1).reshape(groups, -1)


def unpack(packed: Tensor, name: str, rows: int | None = None) -> Fields:
    """The parts ``pack`` laid out in ``packed`` (its first ``rows`` rows)."""
    groups = packed.shape[0]
    subs, width = SUPER[name] // 32, HIGH_BITS[name]
    sub_bytes = 256 + 64 * width
    shapes = FIELD_SHAPES[name]
    tail_bytes = sum(GROUP * shape[0] for shape in shapes.values())
    p = packed.reshape(groups, -1, subs * sub_bytes + tail_bytes)
    n_blocks = p.shape[1]
    sub = p[..., : subs * sub_bytes].reshape(groups, n_blocks * subs, sub_bytes)
    nib = sub[..., :256].reshape(groups, -1, 4, GROUP, 4).permute(0, 3, 1, 2, 4).reshape(groups, GROUP, -1, 16)
    q = torch.cat([nib & 15, nib >> 4], -1)
    shift = (torch.arange(4) * 2)[:, None]
    for w in range(width):  # the high bits back in place: one word (Q5), two (Q6_K) or none
        word = sub[..., 256 + 64 * w : 320 + 64 * w].reshape(groups, -1, GROUP, 1, 4).permute(0, 2, 1, 3, 4)
        if width == 1:
            bits = torch.cat([((word >> shift) & 1).reshape(*word.shape[:3], 16),
                              ((word >> (shift + 1)) & 1).reshape(*word.shape[:3], 16)], -1)
            q = q | (bits << 4).to(torch.uint8)
        else:
            half = slice(16 * w, 16 * w + 16)
            q[..., half] |= ((((word >> shift) & 3).reshape(*word.shape[:3], 16)) << 4).to(torch.uint8)
    scales, at = {}, subs * sub_bytes
    for field, (size,) in shapes.items():
        chunk = p[..., at : at + GROUP * size]
        at += GROUP * size
        scales[field] = (chunk.reshape(groups, n_blocks, GROUP, 2) if size == 2 else
                         chunk.reshape(groups, n_blocks, size, GROUP).transpose(-1, -2)).transpose(1, 2)
    keep = slice(None, rows)
    return Fields(q.reshape(groups * GROUP, -1, 32)[keep],
                  {k: v.reshape(groups * GROUP, n_blocks, -1)[keep] for k, v in scales.items()})


def packed_rows(packed: Tensor, name: str, ids: Tensor) -> Tensor:
    """Rows ``ids`` (any shape) of a packed matrix as float32 (..., K): an embedding lookup."""
    flat = ids.reshape(-1)
    picked = unpack(packed[flat // GROUP], name)
    rows = torch.arange(flat.shape[0]) * GROUP + flat % GROUP
    part = Fields(picked.q[rows], {k: v[rows] for k, v in picked.scales.items()})
    return values(part, name).reshape(*ids.shape, -1)
