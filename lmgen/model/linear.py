"""Linear layers for decoding: fp32/bf16 through the native kernels, and block-quantized.

``Linear`` is an ``nn.Linear`` (same parameters, same state-dict names) whose
few-row products — the decode step — run in lmgen's matrix-vector kernels;
long prompts still go through torch's matmul. ``BlockLinear`` and ``BlockEmbedding``
hold weights in llama.cpp's block formats (``lmgen.model.quant``), packed for the kernels;
``quantize_blocks`` swaps every projection and the embeddings for them, and a GGUF
file's blocks are put in place with ``set_block_weight``. Activations stay fp32.
With tied embeddings the token embedding and the LM head share one block tensor.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import Tensor, nn

from lmgen.config.layout import tied_aliases
from lmgen.model import kernels, quant


class Linear(nn.Linear):
    """With weights narrower than the activations (bf16 weights on the CPU) the weights are
    widened for the product, so that prefill computes exactly what the decode kernels do."""

    def reset_parameters(self) -> None:
        """No random init: the weights always come from a checkpoint (as the Decoder's embeddings do)."""

    def forward(self, x: Tensor) -> Tensor:
        if kernels.usable(x, self.weight):
            return kernels.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight.to(x.dtype), self.bias)


class BlockLinear(nn.Module):
    """A projection whose weight is block-quantized (``quant.FORMATS``): ``weight`` holds the
    blocks' bytes packed for the native kernels (``quant.pack``: groups of 16 rows). Without
    the kernels it is unpacked and dequantized for each product (slow, same values)."""

    def __init__(self, packed: Tensor, fmt: quant.BlockFormat, shape: tuple[int, int], bias: Tensor | None):
        super().__init__()
        self.format, (self.out_features, self.in_features) = fmt, shape
        self.register_buffer("weight", packed)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if kernels.block_usable(x):
            return kernels.block_linear(x, self.weight, self.format, self.out_features, self.in_features, self.bias)
        weight = quant.dequantize_packed(self.weight, self.format, self.out_features)
        return F.linear(x, weight.to(x.dtype), self.bias)


class BlockEmbedding(nn.Module):
    """Token embedding rows dequantized from packed blocks (the tensor a tied LM head also uses)."""

    def __init__(self, packed: Tensor, fmt: quant.BlockFormat, shape: tuple[int, int]):
        super().__init__()
        self.format, (self.num_embeddings, self.in_features) = fmt, shape
        self.register_buffer("weight", packed)

    def forward(self, ids: Tensor) -> Tensor:
        return quant.packed_rows(self.weight, self.format, ids)


def set_block_weight(model: nn.Module, name: str, packed: Tensor, fmt: quant.BlockFormat,
                     bias: Tensor | None) -> None:
    """Make the canonical weight ``name`` (``blocks.3.attn.q.weight``, ``embed.weight``,
    ``head.linear.weight``) block-quantized: its module replaced by a BlockLinear (or, for the
    token embedding, a BlockEmbedding) holding ``packed`` (``quant.pack``'s layout)."""
    path, _ = name.rsplit(".", 1)
    parent, attr = path.rsplit(".", 1) if "." in path else ("", path)
    owner = model.get_submodule(parent)
    shape = tuple(getattr(owner, attr).weight.shape)
    module = BlockEmbedding(packed, fmt, shape) if name == "embed.weight" else BlockLinear(packed, fmt, shape, bias)
    setattr(owner, attr, module)


def quantize_blocks(model: nn.Module, fmt: quant.BlockFormat, embed_fmt: quant.BlockFormat) -> nn.Module:
    """Replace every projection with block-quantized copies in ``fmt``, one tensor at a time; the
    token embedding and the LM head in ``embed_fmt`` (llama.cpp keeps them at 8 bits in its 4-bit
    files). Each float weight, a view of the mapped checkpoint, has its pages handed back to the
    kernel once its blocks are made: no float copy of the model is ever resident."""

    def blocks_of(weight: Tensor, format: quant.BlockFormat) -> Tensor:
        packed = quant.pack(quant.quantize(weight, format), format)
        drop_pages(weight)
        return packed

    for name, child in list(model.named_modules()):
        if isinstance(child, nn.Linear) and name.startswith("blocks."):
            set_block_weight(model, f"{name}.weight", blocks_of(child.weight, fmt), fmt, child.bias)
    tied = "head.linear.weight" in tied_aliases(model.cfg)  # then the head reads the embedding's blocks
    head = None if tied else blocks_of(model.head.linear.weight, embed_fmt)
    embedding = blocks_of(model.embed.weight, embed_fmt)
    set_block_weight(model, "embed.weight", embedding, embed_fmt, None)
    set_block_weight(model, "head.linear.weight", embedding if tied else head, embed_fmt, None)
    return model


def drop_pages(tensor: Tensor) -> None:
    """Tell the kernel the whole pages under a tensor that will not be read again may go
    (madvise MADV_DONTNEED): for a view of a privately mapped file, they leave the resident set."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    start = -(-tensor.data_ptr() // page) * page
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
    if end > start and hasattr(mmap, "MADV_DONTNEED"):
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


@functools.cache
def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)
