"""Linear layers for decoding: fp32/bf16 through the native kernels, and int8 weight-only.

``Linear`` is an ``nn.Linear`` (same parameters, same state-dict names) whose
few-row products — the decode step — run in lmgen's matrix-vector kernels;
long prompts still go through torch's matmul. ``quantize_int8`` swaps every
projection (and the embedding) for an int8 copy with one fp32 scale per output
row: weights at a quarter of their fp32 size, activations stay fp32. With tied
embeddings the token embedding and the LM head keep sharing one int8 tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmgen import kernels, quant
from lmgen.layout import tied_aliases


class Linear(nn.Linear):
    """With weights narrower than the activations (bf16 weights on the CPU) the weights are
    widened for the product, so that prefill computes exactly what the decode kernels do."""

    def reset_parameters(self) -> None:
        """No random init: the weights always come from a checkpoint (as the Decoder's embeddings do)."""

    def forward(self, x: Tensor) -> Tensor:
        if kernels.usable(x, self.weight):
            return kernels.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight.to(x.dtype), self.bias)


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: weight ≈ q * scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None):
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if kernels.usable(x, self.weight):
            return kernels.linear(x, self.weight, self.bias, self.scale)
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)  # scaled after the sum, as the kernels do
        return y if self.bias is None else y + self.bias


class Int8Embedding(nn.Module):
    """Token embedding rows read from int8 weights (the tensor a tied LM head also uses)."""

    def __init__(self, q: Tensor, scale: Tensor):
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[ids].float() * self.scale[ids][..., None]


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every projection, the LM head and the token embedding with int8 copies."""
    for block in model.blocks:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(*quantize_rows(child.weight), child.bias))
    q, scale = quantize_rows(model.embed.weight)
    model.embed = Int8Embedding(q, scale)
    if "head.linear.weight" in tied_aliases(model.cfg):
        model.head.linear = Int8Linear(q, scale, None)  # the same int8 tensor as the embedding
    else:
        model.head.linear = Int8Linear(*quantize_rows(model.head.linear.weight), None)
    return model


class BlockLinear(nn.Module):
    """A projection whose weight is block-quantized (``quant.FORMATS``): ``weight`` holds the
    blocks' bytes, (out_features, in_features / 32 * block bytes), in the native kernels' and
    GGUF's layout. Without the kernels it is dequantized for each product (slow, same values)."""

    def __init__(self, blocks: Tensor, fmt: quant.BlockFormat, in_features: int, bias: Tensor | None):
        super().__init__()
        self.format, self.in_features = fmt, in_features
        self.register_buffer("weight", blocks)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if kernels.block_usable(x):
            return kernels.block_linear(x, self.weight, self.format, self.in_features, self.bias)
        return F.linear(x, quant.dequantize(self.weight, self.format).to(x.dtype), self.bias)


class BlockEmbedding(nn.Module):
    """Token embedding rows dequantized from blocks (the tensor a tied LM head also uses)."""

    def __init__(self, blocks: Tensor, fmt: quant.BlockFormat, dim: int):
        super().__init__()
        self.format, self.in_features = fmt, dim
        self.register_buffer("weight", blocks)

    def forward(self, ids: Tensor) -> Tensor:
        return quant.dequantize_rows(self.weight, self.format, ids)


def set_block_weight(model: nn.Module, name: str, blocks: Tensor, fmt: quant.BlockFormat,
                     bias: Tensor | None) -> None:
    """Make the canonical weight ``name`` (``blocks.3.attn.q.weight``, ``embed.weight``,
    ``head.linear.weight``) block-quantized: its module replaced by a BlockLinear (or, for the
    token embedding, a BlockEmbedding) holding ``blocks``."""
    path, _ = name.rsplit(".", 1)
    parent, attr = path.rsplit(".", 1) if "." in path else ("", path)
    owner = model.get_submodule(parent)
    in_features = getattr(owner, attr).weight.shape[1]
    module = BlockEmbedding(blocks, fmt, in_features) if name == "embed.weight" else \
        BlockLinear(blocks, fmt, in_features, bias)
    setattr(owner, attr, module)


def quantize_blocks(model: nn.Module, fmt: quant.BlockFormat, embed_fmt: quant.BlockFormat) -> nn.Module:
    """Replace every projection with block-quantized copies in ``fmt``, one tensor at a time (each
    float weight is freed as its blocks replace it); the token embedding and the LM head in
    ``embed_fmt`` (llama.cpp keeps them at 8 bits in its 4-bit files)."""
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.Linear) and name.startswith("blocks."):
            set_block_weight(model, f"{name}.weight", quant.quantize(child.weight, fmt), fmt, child.bias)
    embedding = quant.quantize(model.embed.weight, embed_fmt)
    set_block_weight(model, "embed.weight", embedding, embed_fmt, None)
    tied = "head.linear.weight" in tied_aliases(model.cfg)  # then the head reads the embedding's blocks
    head = embedding if tied else quant.quantize(model.head.linear.weight, embed_fmt)
    set_block_weight(model, "head.linear.weight", head, embed_fmt, None)
    return model
