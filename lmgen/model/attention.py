"""Grouped-query self-attention with every per-family variation as config data.

Queries and keys may be RMS-normalised (per head for Qwen3 and Gemma 3, over the whole
projection for OLMo 2) before their rotary positions; a layer may slide (attend only the
last ``sliding_window`` positions) and may have no positions at all (SmolLM3); the scores
may be scaled other than by 1/sqrt(head_dim) and soft-capped (Gemma).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmgen.config.model_config import ModelConfig
from lmgen.config.rope import apply_rope
from lmgen.model.linear import Linear


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, make_norm):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q = Linear(cfg.d_model, cfg.q_dim, bias=cfg.qkv_bias)
        self.k = Linear(cfg.d_model, cfg.kv_dim, bias=cfg.qkv_bias)
        self.v = Linear(cfg.d_model, cfg.kv_dim, bias=cfg.qkv_bias)
        self.o = Linear(cfg.q_dim, cfg.d_model, bias=cfg.o_bias)
        q_norm_dim, k_norm_dim = {"head": (cfg.head_dim,) * 2, "projection": (cfg.q_dim, cfg.kv_dim)}.get(
            cfg.qk_norm, (None, None))
        self.q_norm = make_norm(q_norm_dim) if q_norm_dim else None
        self.k_norm = make_norm(k_norm_dim) if k_norm_dim else None
        self.scale = cfg.attn_scale or cfg.head_dim**-0.5
        self.window = cfg.layer_window(layer)
        self.rope = cfg.layer_rope(layer)

    def forward(self, x: Tensor, ctx) -> Tensor:
        cfg = self.cfg
        batch, seq, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if cfg.qk_norm == "projection":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, seq, cfg.n_heads, cfg.head_dim)
        k = k.view(batch, seq, cfg.n_kv_heads, cfg.head_dim)
        if cfg.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(batch, seq, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if self.rope is not None:
            q, k = apply_rope(q, *ctx.rope[self.rope]), apply_rope(k, *ctx.rope[self.rope])
        if ctx.cache is not None:
            k, v = ctx.store(self.layer, k, v)
        mask, causal = ctx.mask(self.window)
        y = attend(q, k, v, mask, causal, self.scale, cfg.attn_softcap)
        return self.o(y.transpose(1, 2).reshape(batch, seq, cfg.q_dim))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float,
           softcap: float | None) -> Tensor:
    """softmax(q·kᵀ·scale, soft-capped, masked)·v for q (batch, heads, seq, hd), k and v
    (batch, kv_heads, keys, hd)."""
    if q.shape[2] == 1 and mask is None:
        return single_query_attention(q, k, v, scale, softcap)
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=k.shape[1] != q.shape[1])
    if mask is None:  # is_causal, which only SDPA takes: the same mask made explicit
        seq, keys = q.shape[2], k.shape[2]
        mask = torch.ones(seq, keys, dtype=torch.bool, device=q.device).tril(keys - seq)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = soft_cap(torch.matmul(q, k.transpose(-1, -2)) * scale, softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.float().softmax(dim=-1).to(q.dtype), v)


def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """cap · tanh(x / cap): x unchanged near zero, bounded by ±cap (Gemma's scores and logits)."""
    return x if cap is None else torch.tanh(x / cap) * cap


def single_query_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, softcap: float | None = None) -> Tensor:
    """Attention of one new query per head over the whole cache (the decode step).

    Two batched matmuls with the query heads of each key/value group side by side:
    several times faster on CPU than the fused kernel for this shape, and no copy
    of the grouped keys and values.
    """
    batch, n_heads, _, head_dim = q.shape
    n_kv = k.shape[1]
    grouped = q.view(batch, n_kv, n_heads // n_kv, head_dim)
    scores = soft_cap(torch.matmul(grouped, k.transpose(-1, -2)) * scale, softcap)
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    return torch.matmul(probs, v).view(batch, n_heads, 1, head_dim)


def attention_mask(start_pos: int, seq: int, window: int | None, device) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for queries at start_pos.. attending keys 0..start_pos+seq-1."""
    total = start_pos + seq
    windowed = window is not None and total > window
    if seq == 1 and not windowed:
        return None, False
    if start_pos == 0 and not windowed:
        return None, True
    q_pos = torch.arange(start_pos, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if windowed:
        allowed &= q_pos - k_pos < window
    return allowed, False
