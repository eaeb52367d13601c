"""Block-quantized weights in llama.cpp's formats: Q8_0, Q4_0 and Q4_1.

A weight row of K values is K / 32 blocks stored one after another, each block its own scale:

    Q8_0  34 bytes: d (fp16), 32 int8 q            w = d * q
    Q4_0  18 bytes: d (fp16), 16 bytes of nibbles   w = d * (q - 8), q in 0..15
    Q4_1  20 bytes: d (fp16), m (fp16), nibbles     w = d * q + m

with the low nibbles of the 16 bytes holding values 0..15 of the block and the high nibbles
values 16..31. These are the bytes a GGUF file stores, so its tensors are used as they are; a
matrix is a uint8 tensor of shape (rows, K / 32 * block bytes). ``quantize`` rounds exactly as
llama.cpp's reference quantizers (and the ``gguf`` library) do, so that the bytes are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 32  # values per block in every format here


@dataclass(frozen=True)
class BlockFormat:
    name: str
    block_bytes: int
    code: int  # the weight format's number in kernels.c


FORMATS = {
    "q8_0": BlockFormat("q8_0", 34, 3),
    "q4_0": BlockFormat("q4_0", 18, 4),
    "q4_1": BlockFormat("q4_1", 20, 5),
}


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
    """The float32 matrix (rows, K) that blocks (rows, K / 32 * block bytes) stand for."""
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
