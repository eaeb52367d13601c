"""What each GGUF architecture means: the Hugging Face config.json its metadata stands for, its
tensor names, and what llama.cpp's converter did to the tensors (which the import undoes).

Each architecture's facts are its family's entry in ``lmgen/config/families.py``.
A GGUF file says less than a config.json: llama.cpp fixes some facts per architecture in its
loader (Gemma 2 slides every other layer, Gemma 3 five layers in six, SmolLM3 has no rotary
positions in every fourth layer, Gemma's query scale follows the head size). The config.json
written here leaves those to the family defaults of ``hf_config.from_hf``, which are the same.
Rotary scaling that llama.cpp keeps as tensors (Llama 3's ``rope_freqs``, Phi-3's long and
short factors) is read back into ``rope_scaling``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from lmgen.config.families import FAMILIES, Family
from lmgen.errors import CheckpointError


@dataclass(frozen=True)
class Arch:
    """A GGUF architecture: its family's ``GGUFArch`` facts, and the family it stands for."""

    name: str  # general.architecture
    model_type: str  # the Hugging Face family
    norms: dict[str, str]  # GGUF block norm → Hugging Face name
    permuted_qk: bool  # llama.cpp interleaved the rotary halves of Q/K rows
    norm_shift: float  # added to every norm weight (Gemma's 1 + weight, stored summed)
    fused: bool  # attn_qkv and ffn_up (gate then up) kept fused (Phi-3)
    extra: dict[str, str]  # config.json keys read from "{arch}.KEY" metadata


def _arch(family: Family) -> Arch:
    return Arch(model_type=family.model_type, **vars(family.gguf))


# GGUF architecture name → Arch, for each family lmgen imports from GGUF (families.py)
ARCHS = {family.gguf.name: _arch(family) for family in FAMILIES.values() if family.gguf is not None}
# Tensors that hold rotary scaling, read into the config rather than written as weights.
ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
# llama.cpp's enum llama_pooling_type → the config's pooling (0 none and 4 rank pool nothing lmgen embeds)
POOLING_TYPES = {1: "mean", 2: "cls", 3: "last"}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}


def block_names(arch: Arch) -> dict[str, str]:
    """GGUF block tensor → Hugging Face name (in ``model.layers.N.``)."""
    names = {f"{gguf}.weight": f"{hf}.weight" for gguf, hf in arch.norms.items()}
    names |= {"attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
              "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
              "ffn_down.weight": "mlp.down_proj.weight"}
    if arch.fused:
        return names | {"attn_qkv.weight": "self_attn.qkv_proj.weight", "ffn_up.weight": "mlp.gate_up_proj.weight"}
    names |= {f"attn_{p}.{kind}": f"self_attn.{p}_proj.{kind}" for p in "qkv" for kind in ("weight", "bias")}
    return names | {f"ffn_{p}.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up")}


def hf_tensor_name(arch: Arch, gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor; None for a rotary-scaling tensor (no weight)."""
    if gguf_name in ROPE_TENSORS:
        return None
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    names = block_names(arch)
    if match and match.group(2) in names:
        return f"model.layers.{match.group(1)}.{names[match.group(2)]}"
    from lmgen.formats.gguf.metadata import printable

    raise CheckpointError(f"GGUF tensor {printable(gguf_name)} has no known Hugging Face name")


def restore(arch: Arch, gguf_name: str, array: np.ndarray, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """Undo what llama.cpp's converter did to one tensor."""
    if arch.permuted_qk and re.search(r"\.attn_[qk]\.(weight|bias)$", gguf_name):
        return unpermute_rows(array, n_heads if ".attn_q." in gguf_name else n_kv_heads)
    if arch.norm_shift and gguf_name.endswith("norm.weight"):
        return array - np.float32(arch.norm_shift)
    return array


def unpermute_rows(weight, n_heads: int):
    """Undo llama.cpp's interleaving of the rotary halves in Q/K rows (per head)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def rope_config(name: str, head_dim: int, rope_tensors: dict[str, np.ndarray], read) -> dict:
    """config.json's rotary fields: partial rotary, and scaling from metadata or tensors.
    ``read(key, kind, default)`` is gguf_import's typed metadata read."""
    hf: dict = {}
    dims = read(f"{name}.rope.dimension_count", "an integer", head_dim)
    if dims != head_dim:
        if name != "phi3" or not 2 <= dims < head_dim:
            raise CheckpointError(f"GGUF metadata {name}.rope.dimension_count must be the head size, {head_dim}")
        hf["partial_rotary_factor"] = dims / head_dim
    kind = read(f"{name}.rope.scaling.type", "a string", "none")
    original = read(f"{name}.rope.scaling.original_context_length", "an integer", None)
    if kind in ("linear", "yarn"):
        scaling = {"rope_type": kind, "factor": read(f"{name}.rope.scaling.factor", "a number")}
        if kind == "yarn":
            scaling |= {"original_max_position_embeddings": original,
                        "attention_factor": read(f"{name}.rope.scaling.yarn_attn_factor", "a number", None),
                        "beta_fast": read(f"{name}.rope.scaling.yarn_beta_fast", "a number", None),
                        "beta_slow": read(f"{name}.rope.scaling.yarn_beta_slow", "a number", None)}
        hf["rope_scaling"] = {k: v for k, v in scaling.items() if v is not None}
    elif kind not in ("none", "longrope"):
        raise CheckpointError(f"GGUF metadata {name}.rope.scaling.type {kind!r} is not supported "
                              "(none, linear, yarn, longrope are)")
    if "rope_freqs.weight" in rope_tensors:
        theta = read(f"{name}.rope.freq_base", "a number", 10000.0)
        hf["rope_scaling"] = llama3_scaling(rope_tensors["rope_freqs.weight"], theta, head_dim, original)
    if "rope_factors_long.weight" in rope_tensors or kind == "longrope":
        if name != "phi3" or original is None or set(ROPE_TENSORS[1:]) - rope_tensors.keys():
            raise CheckpointError(f"GGUF longrope scaling needs Phi-3's rope_factors_long/short tensors and "
                                  f"{name}.rope.scaling.original_context_length")
        hf["rope_scaling"] = {"rope_type": "longrope", "original_max_position_embeddings": original,
                              "long_factor": rope_tensors["rope_factors_long.weight"].tolist(),
                              "short_factor": rope_tensors["rope_factors_short.weight"].tolist()}
    return hf


def llama3_scaling(freqs: np.ndarray, theta: float, head_dim: int, original: int | None) -> dict:
    """Llama 3.1's scaling from the per-frequency divisors llama.cpp stores as rope_freqs: factor is
    their largest; the frequency factors are not stored, so llama.cpp's defaults (1 and 4, with an
    8192-token original context) are assumed and checked by recomputing every divisor."""
    if freqs.shape != (head_dim // 2,) or not freqs.min() >= 1 or not theta > 0:
        raise CheckpointError(f"GGUF tensor rope_freqs.weight must hold {head_dim // 2} factors of at least 1")
    factor, low, high, context = float(freqs.max()), 1.0, 4.0, original or 8192
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (context / wavelen - low) / (high - low)
    expected = np.where(wavelen < context / high, 1.0,
                        np.where(wavelen > context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    if not np.allclose(freqs, expected, rtol=1e-4):
        raise CheckpointError("GGUF tensor rope_freqs.weight is not Llama 3 scaling with llama.cpp's default "
                              "frequency factors (1 and 4): lmgen cannot recover its parameters")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": context}


def gemma_query_scalar(name: str, n_layers: int, d_model: int, n_heads: int, head_dim: int) -> float:
    """llama.cpp's Gemma query scale (not stored): d_model / heads for the 27B models (46 layers
    in Gemma 2, 62 in Gemma 3), the head size otherwise, as their config.json files have it."""
    big = {"gemma2": 46, "gemma3": 62}[name] == n_layers
    return d_model / n_heads if big else float(head_dim)
