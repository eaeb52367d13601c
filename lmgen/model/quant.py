"""Block-quantized weights in llama.cpp's formats: Q8_0, Q4_0 and Q4_1 here; Q5_0, Q5_1, Q4_K,
Q5_K and Q6_K (read from GGUF files, never made by lmgen) in ``kquant``, which ``pack``,
``dequantize`` and ``packed_rows`` hand them to.

A weight row of K values is K / 32 blocks stored one after another, each block its own scale:

    Q8_0  34 bytes: d (fp16), 32 int8 q            w = d * q
    Q4_0  18 bytes: d (fp16), 16 bytes of nibbles   w = d * (q - 8), q in 0..15
    Q4_1  20 bytes: d (fp16), m (fp16), nibbles     w = d * q + m

with the low nibbles of the 16 bytes holding values 0..15 of the block and the high nibbles
values 16..31. These are the bytes a GGUF file stores, so its tensors are used as they are; a
matrix is a uint8 tensor of shape (rows, K / 32 * block bytes). ``quantize`` rounds exactly as
llama.cpp's reference quantizers (and the ``gguf`` library) do, so that the bytes are the same.

The native kernels read the same bytes rearranged (``pack``), as llama.cpp's CPU back end
repacks Q4_0 for AVX-512 and ARM: rows in groups of 16, and for each block of a group, its 16
rows' quants interleaved four bytes at a time, then the 16 scales d, then (Q4_1) the 16
minimums m. Four bytes of a Q4 block hold values 4c..4c+3 in their low nibbles and 16+4c..
16+4c+3 in their high ones; Q8 bytes are stored plus 128 (as unsigned bytes, which is what the
CPU's integer dot product takes). ``unpack`` gives the blocks back, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from lmgen.model import kquant
from lmgen.model.kernels_abi import FIRST_KQUANT, FORMAT_CODES

BLOCK = 32  # values per block in every format here


@dataclass(frozen=True)
class BlockFormat:
    name: str
    block_bytes: int
    block_values: int = BLOCK  # weights per block of the file (a K-quant's super-block: 256)

    @property
    def code(self) -> int:
        """The weight format's number in the kernels (kernels_abi.FORMAT_CODES: csrc/common.h's enum)."""
        return FORMAT_CODES[self.name]

    @property
    def k(self) -> bool:
        """One of kquant's formats (5- and 6-bit, K-quants), which lmgen reads but never writes."""
        return self.code >= FIRST_KQUANT


FORMATS = {  # what lmgen quantizes to (--dtype q8, q4; GGUF files' tensors in other formats)
    "q8_0": BlockFormat("q8_0", 34),
    "q4_0": BlockFormat("q4_0", 18),
    "q4_1": BlockFormat("q4_1", 20),
}
READ_ONLY = {  # what lmgen runs as a GGUF file stores it, but never makes (kquant)
    "q5_0": BlockFormat("q5_0", 22),
    "q5_1": BlockFormat("q5_1", 24),
    "q4_k": BlockFormat("q4_k", 144, 256),
    "q5_k": BlockFormat("q5_k", 176, 256),
    "q6_k": BlockFormat("q6_k", 210, 256),
}
ALL_FORMATS = FORMATS | READ_ONLY


def _round_half_away(v: Tensor) -> Tensor:
    """C's roundf (torch.round rounds halves to even)."""
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def _inverse(d: Tensor) -> Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def _fp16_bytes(v: Tensor) -> Tensor:
    return v.to(torch.float16).view(torch.uint8).reshape(v.shape[0], 2)


def _nibbles(q: Tensor) -> Tensor:
    """(blocks, 32) values 0..15 → (blocks, 16) bytes: value i in the low nibble, i + 16 in the high."""
    q = q.to(torch.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _unpack_nibbles(packed: Tensor) -> Tensor:
    return torch.cat([packed & 0x0F, packed >> 4], dim=1)


CHUNK_VALUES = 1 << 20  # quantized a slice of rows at a time: temporaries stay a few MB


def quantize(weight: Tensor, fmt: BlockFormat) -> Tensor:
    """A (rows, K) float matrix as blocks: a uint8 tensor (rows, K / 32 * fmt.block_bytes)."""
    rows, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"{fmt.name} needs rows of a multiple of {BLOCK} values, not {k}")
    step = max(1, CHUNK_VALUES // k)
    return torch.cat([_quantize_rows(weight[i : i + step], fmt) for i in range(0, rows, step)])


def _quantize_rows(weight: Tensor, fmt: BlockFormat) -> Tensor:
    rows = weight.shape[0]
    blocks = weight.detach().to(torch.float32).reshape(-1, BLOCK)
    if fmt.name == "q8_0":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        q = _round_half_away(blocks * _inverse(d)).to(torch.int8).view(torch.uint8)
        packed = torch.cat([_fp16_bytes(d), q], dim=1)
    elif fmt.name == "q4_0":
        peak = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))
        d = peak / -8
        q = torch.trunc(blocks * _inverse(d) + 8.5).clamp(0, 15)
        packed = torch.cat([_fp16_bytes(d), _nibbles(q)], dim=1)
    else:
        low, high = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
        d = (high - low) / 15
        q = torch.trunc((blocks - low) * _inverse(d) + 0.5).clamp(0, 15)
        packed = torch.cat([_fp16_bytes(d), _fp16_bytes(low), _nibbles(q)], dim=1)
    return packed.reshape(rows, -1)


def dequantize(packed: Tensor, fmt: BlockFormat) -> Tensor:
    """The float32 matrix (rows, K) that blocks (rows, K / block values * block bytes) stand for."""
    if fmt.k:
        return kquant.dequantize(packed, fmt.name, fmt.block_bytes)
    rows = packed.shape[0]
    blocks = packed.reshape(-1, fmt.block_bytes)
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    if fmt.name == "q8_0":
        values = d * blocks[:, 2:].contiguous().view(torch.int8).float()
    elif fmt.name == "q4_0":
        values = d * (_unpack_nibbles(blocks[:, 2:]).float() - 8)
    else:
        m = blocks[:, 2:4].contiguous().view(torch.float16).float()
        values = d * _unpack_nibbles(blocks[:, 4:]).float() + m
    return values.reshape(rows, -1)


def dequantize_rows(packed: Tensor, fmt: BlockFormat, ids: Tensor) -> Tensor:
    """Rows ``ids`` (any shape) of a block matrix, as float32 (..., K): an embedding lookup."""
    picked = packed[ids.reshape(-1)]
    return dequantize(picked, fmt).reshape(*ids.shape, -1)


GROUP = 16  # weight rows interleaved in the packed layout


def _header_bytes(fmt: BlockFormat) -> int:
    return 4 if fmt.name == "q4_1" else 2  # d, and m for Q4_1


def pack(blocks: Tensor, fmt: BlockFormat) -> Tensor:
    """Blocks (rows, K / 32 * block bytes) in the kernels' layout: (groups of 16 rows, K / 32 *
    16 * block bytes), the last group padded with zero rows."""
    if fmt.k:
        return kquant.pack(kquant.fields(blocks, fmt.name, fmt.block_bytes), fmt.name)
    rows, width = blocks.shape
    groups, n_blocks = -(-rows // GROUP), width // fmt.block_bytes
    packed = torch.empty(groups, n_blocks * GROUP * fmt.block_bytes, dtype=torch.uint8)
    from lmgen.model import kernels

    lib = kernels.library()
    if lib is not None and blocks.is_contiguous() and blocks.device.type == "cpu":  # the same bytes, 50x sooner
        lib.pack_blocks(blocks.data_ptr(), packed.data_ptr(), rows, n_blocks, fmt.block_bytes, _header_bytes(fmt),
                        int(fmt.name == "q8_0"))
        return packed
    step = max(1, CHUNK_VALUES // (GROUP * width))  # a few MB of temporaries at a time
    for g in range(0, groups, step):
        part = blocks[g * GROUP : (g + step) * GROUP]
        if part.shape[0] % GROUP:
            part = torch.cat([part, part.new_zeros(-part.shape[0] % GROUP, width)])
        packed[g : g + step] = _pack_groups(part.reshape(-1, GROUP, n_blocks, fmt.block_bytes), fmt)
    return packed


def _pack_groups(b: Tensor, fmt: BlockFormat) -> Tensor:
    """(groups, 16, blocks, block bytes) → (groups, blocks · 16 · block bytes)."""
    groups, _, n_blocks, _ = b.shape
    head = _header_bytes(fmt)
    quants = b[..., head:].reshape(groups, GROUP, n_blocks, -1, 4).permute(0, 2, 3, 1, 4)
    if fmt.name == "q8_0":
        quants = quants ^ 0x80
    scales = [b[..., i : i + 2].permute(0, 2, 1, 3) for i in range(0, head, 2)]  # d (and m), 16 of each
    parts = [quants.reshape(groups, n_blocks, -1)] + [s.reshape(groups, n_blocks, -1) for s in scales]
    return torch.cat(parts, dim=2).reshape(groups, -1)


def unpack(packed: Tensor, fmt: BlockFormat, rows: int | None = None) -> Tensor:
    """The blocks (rows, K / 32 * block bytes) that ``pack`` made ``packed`` of (its first rows)."""
    if fmt.k:
        return kquant.to_blocks(kquant.unpack(packed, fmt.name, rows), fmt.name)
    blocks = _unpermute(packed, fmt)
    if fmt.name == "q8_0":
        quants = blocks.reshape(blocks.shape[0], -1, fmt.block_bytes)[..., 2:]
        quants ^= 0x80
    return blocks[:rows]


def _unpermute(packed: Tensor, fmt: BlockFormat) -> Tensor:
    """``pack``'s rearrangement undone (Q8's offset left in): (groups · 16, K / 32 * block bytes)."""
    groups = packed.shape[0]
    n_blocks, head = packed.shape[1] // (GROUP * fmt.block_bytes), _header_bytes(fmt)
    p = packed.reshape(groups, n_blocks, GROUP * fmt.block_bytes)
    quant_bytes = GROUP * (fmt.block_bytes - head)
    quants = p[..., :quant_bytes].reshape(groups, n_blocks, -1, GROUP, 4).permute(0, 3, 1, 2, 4)
    scales = [p[..., quant_bytes + GROUP * i : quant_bytes + GROUP * (i + 2)].reshape(groups, n_blocks, GROUP, 2)
              .permute(0, 2, 1, 3) for i in range(0, head, 2)]
    blocks = torch.cat([*scales, quants.reshape(groups, GROUP, n_blocks, -1)], dim=3)
    return blocks.reshape(groups * GROUP, -1)


def dequantize_packed(packed: Tensor, fmt: BlockFormat, rows: int) -> Tensor:
    """The float32 matrix (rows, K) a packed block matrix stands for (without the kernels)."""
    if fmt.k:
        return kquant.values(kquant.unpack(packed, fmt.name, rows), fmt.name)
    return dequantize(unpack(packed, fmt, rows), fmt)


def packed_rows(packed: Tensor, fmt: BlockFormat, ids: Tensor) -> Tensor:
    """Rows ``ids`` (any shape) of a packed block matrix, as float32 (..., K): an embedding lookup,
    one gather of each row's bytes."""
    if fmt.k:
        return kquant.packed_rows(packed, fmt.name, ids)
    flat = ids.reshape(-1)
    where = _row_offsets(fmt, packed.shape[1] // (GROUP * fmt.block_bytes))
    blocks = packed.reshape(-1)[(flat // GROUP * packed.shape[1])[:, None] + where[flat % GROUP]]
    if fmt.name == "q8_0":
        quants = blocks.reshape(flat.shape[0], -1, fmt.block_bytes)[..., 2:]
        quants ^= 0x80
    return dequantize(blocks, fmt).reshape(*ids.shape, -1)


@lru_cache(maxsize=8)
def _row_offsets(fmt: BlockFormat, n_blocks: int) -> Tensor:
    """(16, n_blocks · block bytes): where in its group's packed bytes each byte of row i's blocks lies."""
    return _unpermute(torch.arange(GROUP * n_blocks * fmt.block_bytes).reshape(1, -1), fmt)
