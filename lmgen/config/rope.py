"""Rotary position embeddings: the inverse frequencies of each scaling type, and the tables.

One small pure function per ``rope_type``, computing what transformers' ``modeling_rope_utils``
computes, in the same float32 steps: (inverse frequencies, attention factor) from the config
and, for the two types that depend on it, the length the forward pass reaches. ``dynamic``
(NTK) and ``longrope`` change their frequencies with that length, so a cached generation
rotates its early keys with other frequencies than its late ones, exactly as transformers does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmgen.config.model_config import ModelConfig


def default_frequencies(theta: float, dim: int) -> Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def linear(cfg: ModelConfig, p: dict, seq_len: int) -> tuple[Tensor, float]:
    """Positions divided by ``factor`` (on the frequencies, which is the same)."""
    return default_frequencies(cfg.rope_theta, cfg.rotary_dim) / p["factor"], 1.0


def dynamic(cfg: ModelConfig, p: dict, seq_len: int) -> tuple[Tensor, float]:
    """NTK-aware: past the trained context, a larger base for the sequence's whole length
    (lmgen's max_context for such a model is the trained context times ``factor``)."""
    dim, factor, context = cfg.rotary_dim, p["factor"], p.get("original_max_position_embeddings", cfg.max_context)
    if seq_len <= context:  # transformers' initial frequencies, computed with Python floats
        base = cfg.rope_theta * ((factor * context / context) - (factor - 1)) ** (dim / (dim - 2))
        return default_frequencies(base, dim), 1.0
    length = torch.tensor(seq_len)  # in the forward pass transformers computes the base as a tensor
    base = cfg.rope_theta * ((factor * length / context) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0


def llama3(cfg: ModelConfig, p: dict, seq_len: int) -> tuple[Tensor, float]:
    """Llama 3.1: low frequencies divided by ``factor``, high ones kept, a smooth ramp between."""
    inv_freq = default_frequencies(cfg.rope_theta, cfg.rotary_dim)
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_context = p["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


def yarn(cfg: ModelConfig, p: dict, seq_len: int) -> tuple[Tensor, float]:
    """YaRN: interpolate the low frequencies, extrapolate the high ones, and scale attention."""
    dim, base, original = cfg.rotary_dim, cfg.rope_theta, p["original_max_position_embeddings"]
    factor = p.get("factor") or cfg.max_context / original
    attention = p.get("attention_factor")
    if attention is None:
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
        attention = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                     if mscale and mscale_all_dim else _yarn_mscale(factor))

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention)


def _yarn_mscale(scale: float, mscale: float = 1) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def longrope(cfg: ModelConfig, p: dict, seq_len: int) -> tuple[Tensor, float]:
    """Phi-3's LongRoPE: per-frequency factors, the long set once the sequence passes the
    original context, and attention scaled by how far the context was stretched."""
    original = p["original_max_position_embeddings"]
    factor = p.get("factor") or cfg.max_context / original
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = torch.tensor(p["long_factor"] if seq_len > original else p["short_factor"], dtype=torch.float32)
    shape = torch.arange(0, cfg.rotary_dim, 2, dtype=torch.int64).float() / cfg.rotary_dim
    return 1.0 / (ext * cfg.rope_theta**shape), float(attention)


SCALINGS = {"linear": linear, "dynamic": dynamic, "llama3": llama3, "yarn": yarn, "longrope": longrope}


def frequencies(cfg: ModelConfig, kind: str, seq_len: int) -> tuple[Tensor, float]:
    """(inverse frequencies, attention factor) of the "global" or "local" rotary table."""
    if kind == "local":  # Gemma 3's sliding layers: their own base, never scaled
        return default_frequencies(cfg.local_rope_theta, cfg.rotary_dim), 1.0
    if cfg.rope_scaling is None:
        return default_frequencies(cfg.rope_theta, cfg.rotary_dim), 1.0
    return SCALINGS[cfg.rope_scaling["rope_type"]](cfg, cfg.rope_scaling, seq_len)


LENGTH_DEPENDENT = ("dynamic", "longrope")


def rope_tables(cfg: ModelConfig, positions: Tensor, dtype: torch.dtype,
                memo: dict | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """cos and sin, each (seq, rotary_dim), for every rotary table some layer uses. ``memo``
    keeps the frequencies between calls (they change with the length only for dynamic and
    longrope scaling): a decode step then costs a few small products, not a recomputation."""
    memo = {} if memo is None else memo
    if "kinds" not in memo:
        memo["kinds"] = sorted({cfg.layer_rope(i) for i in range(cfg.n_layers)} - {None})
    seq_len = int(positions[-1]) + 1
    tables = {}
    for kind in memo["kinds"]:
        if kind == "global" and (cfg.rope_scaling or {}).get("rope_type") in LENGTH_DEPENDENT:
            inv_freq, attention = frequencies(cfg, kind, seq_len)
        else:
            if kind not in memo:
                memo[kind] = frequencies(cfg, kind, seq_len)
            inv_freq, attention = memo[kind]
        freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        tables[kind] = ((angles.cos() * attention).to(dtype), (angles.sin() * attention).to(dtype))
    return tables


def rope_rows(cfg: ModelConfig, positions: Tensor, dtype: torch.dtype, memo: dict) -> dict[str, tuple[Tensor, Tensor]]:
    """Tables with one row per sequence of a ragged batch, each at its own position: (B, rotary_dim).
    Where the frequencies follow the length (dynamic, longrope), each row's are its own."""
    if (cfg.rope_scaling or {}).get("rope_type") not in LENGTH_DEPENDENT:
        return rope_tables(cfg, positions, dtype, memo)
    per_row = [rope_tables(cfg, positions[i : i + 1], dtype, memo) for i in range(len(positions))]
    return {kind: tuple(torch.cat([t[kind][j] for t in per_row]) for j in range(2)) for kind in per_row[0]}


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first cos.shape[-1] dims of each head; the rest pass (partial rotary)."""
    dim = cos.shape[-1]
    if dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rotated, passed = x[..., :dim], x[..., dim:]
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)
