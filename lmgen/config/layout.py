"""Which tensors a config implies, and what each family calls them.

lmgen's *canonical* tensor names are the model's parameter names before the
loader fuses q/k/v into one projection and gate/up into one: for example
``blocks.3.attn.q.weight`` or ``head.linear.weight``. Each family's names are
mapped onto them by a list of rules (the job mlx-lm calls ``sanitize``).

Torch-free: ``inspect`` uses this to count parameters from headers alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmgen.config.model_config import ModelConfig

Shape = tuple[int, ...]


def canonical_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor the model needs, in canonical names, with its shape (a tied head is none:
    see ``tied_aliases``)."""
    d, ff = cfg.d_model, cfg.d_mlp
    shapes: dict[str, Shape] = {"embed.weight": (cfg.vocab_size, d)}
    if cfg.positions == "learned":
        shapes["pos_embed.weight"] = (cfg.max_context, d)

    def norm(prefix: str) -> None:
        shapes[f"{prefix}.weight"] = (d,)
        if cfg.norm == "layernorm":
            shapes[f"{prefix}.bias"] = (d,)

    def linear(name: str, n_out: int, n_in: int, bias: bool) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    pre, post = cfg.norm_placement in ("pre", "sandwich"), cfg.norm_placement in ("sandwich", "post")
    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        if pre:
            norm(f"{b}.attn_norm")
        linear(f"{b}.attn.q", cfg.q_dim, d, cfg.qkv_bias)
        linear(f"{b}.attn.k", cfg.kv_dim, d, cfg.qkv_bias)
        linear(f"{b}.attn.v", cfg.kv_dim, d, cfg.qkv_bias)
        linear(f"{b}.attn.o", d, cfg.q_dim, cfg.o_bias)
        if cfg.qk_norm:
            per_head = cfg.qk_norm == "head"
            shapes[f"{b}.attn.q_norm.weight"] = (cfg.head_dim if per_head else cfg.q_dim,)
            shapes[f"{b}.attn.k_norm.weight"] = (cfg.head_dim if per_head else cfg.kv_dim,)
        if post:
            norm(f"{b}.attn_post_norm")
        if pre:
            norm(f"{b}.mlp_norm")
        if cfg.mlp == "gated":
            linear(f"{b}.mlp.gate", ff, d, cfg.mlp_bias)
        linear(f"{b}.mlp.up", ff, d, cfg.mlp_bias)
        linear(f"{b}.mlp.down", d, ff, cfg.mlp_bias)
        if post:
            norm(f"{b}.mlp_post_norm")
    norm("head.norm")
    shapes["head.linear.weight"] = (cfg.vocab_size, d)
    for alias in tied_aliases(cfg):
        del shapes[alias]
    return shapes


def tied_aliases(cfg: ModelConfig) -> dict[str, str]:
    """Canonical tensors that *are* another one: with tied embeddings, the LM head's weight is
    the token embedding. The one place that reads ``tied_embeddings`` to shape a model: the
    loader, the Decoder, int8 quantization and ``inspect`` all ask here."""
    return {"head.linear.weight": "embed.weight"} if cfg.tied_embeddings else {}


@dataclass(frozen=True)
class Rule:
    """One family tensor name → one or more canonical tensors.

    ``targets`` are formatted with the pattern's groups; several targets mean
    the stored tensor is their concatenation along dim 0 (GPT-2's c_attn).
    ``transpose`` marks Conv1D-style storage (in_features, out_features).
    """

    pattern: str
    targets: tuple[str, ...]
    transpose: bool = False


@dataclass(frozen=True)
class FamilyNames:
    prefix: str
    rules: tuple[Rule, ...]
    ignored: str  # buffers some checkpoints carry that are not parameters


_QKV = tuple(f"blocks.{{0}}.attn.{p}.{{1}}" for p in "qkv")

GPT2_NAMES = FamilyNames(
    prefix="transformer.",
    rules=(
        Rule(r"wte\.weight", ("embed.weight",)),
        Rule(r"wpe\.weight", ("pos_embed.weight",)),
        Rule(r"h\.(\d+)\.ln_1\.(weight|bias)", ("blocks.{0}.attn_norm.{1}",)),
        Rule(r"h\.(\d+)\.attn\.c_attn\.(weight)", _QKV, transpose=True),
        Rule(r"h\.(\d+)\.attn\.c_attn\.(bias)", _QKV),
        Rule(r"h\.(\d+)\.attn\.c_proj\.(weight)", ("blocks.{0}.attn.o.{1}",), transpose=True),
        Rule(r"h\.(\d+)\.attn\.c_proj\.(bias)", ("blocks.{0}.attn.o.{1}",)),
        Rule(r"h\.(\d+)\.ln_2\.(weight|bias)", ("blocks.{0}.mlp_norm.{1}",)),
        Rule(r"h\.(\d+)\.mlp\.c_fc\.(weight)", ("blocks.{0}.mlp.up.{1}",), transpose=True),
        Rule(r"h\.(\d+)\.mlp\.c_fc\.(bias)", ("blocks.{0}.mlp.up.{1}",)),
        Rule(r"h\.(\d+)\.mlp\.c_proj\.(weight)", ("blocks.{0}.mlp.down.{1}",), transpose=True),
        Rule(r"h\.(\d+)\.mlp\.c_proj\.(bias)", ("blocks.{0}.mlp.down.{1}",)),
        Rule(r"ln_f\.(weight|bias)", ("head.norm.{0}",)),
        Rule(r"lm_head\.weight", ("head.linear.weight",)),
    ),
    ignored=r"h\.\d+\.attn\.(bias|masked_bias)",
)

# The Llama-like families share their projections, embedding and head; they differ in their norms.
_PROJECTIONS = (
    Rule(r"embed_tokens\.weight", ("embed.weight",)),
    Rule(r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", ("blocks.{0}.attn.{1}.{2}",)),
    Rule(r"layers\.(\d+)\.self_attn\.([qk])_norm\.weight", ("blocks.{0}.attn.{1}_norm.weight",)),
    Rule(r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", ("blocks.{0}.mlp.{1}.{2}",)),
    Rule(r"norm\.weight", ("head.norm.weight",)),
    Rule(r"lm_head\.weight", ("head.linear.weight",)),
)
_ROTARY = r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"


def _norms(**names: str) -> tuple[Rule, ...]:
    """Rules for a family's block norms: its name for each of lmgen's."""
    return tuple(Rule(rf"layers\.(\d+)\.{theirs}\.weight", (f"blocks.{{0}}.{ours}.weight",))
                 for ours, theirs in names.items())


LLAMA_NAMES = FamilyNames("model.", _norms(attn_norm="input_layernorm", mlp_norm="post_attention_layernorm")
                          + _PROJECTIONS, _ROTARY)
GEMMA_NAMES = FamilyNames("model.", _norms(attn_norm="input_layernorm", attn_post_norm="post_attention_layernorm",
                                           mlp_norm="pre_feedforward_layernorm",
                                           mlp_post_norm="post_feedforward_layernorm") + _PROJECTIONS, _ROTARY)
OLMO2_NAMES = FamilyNames("model.", _norms(attn_post_norm="post_attention_layernorm",
                                           mlp_post_norm="post_feedforward_layernorm") + _PROJECTIONS, _ROTARY)
PHI3_NAMES = FamilyNames("model.", LLAMA_NAMES.rules + (  # fused: q, k, v stacked; gate and up stacked
    Rule(r"layers\.(\d+)\.self_attn\.qkv_proj\.(weight)", _QKV),
    Rule(r"layers\.(\d+)\.mlp\.gate_up_proj\.(weight)", ("blocks.{0}.mlp.gate.{1}", "blocks.{0}.mlp.up.{1}")),
), _ROTARY)

FAMILY_NAMES = {"gpt2": GPT2_NAMES, "llama": LLAMA_NAMES, "qwen2": LLAMA_NAMES, "mistral": LLAMA_NAMES,
                "qwen3": LLAMA_NAMES, "smollm3": LLAMA_NAMES, "gemma2": GEMMA_NAMES, "gemma3_text": GEMMA_NAMES,
                "olmo2": OLMO2_NAMES, "phi3": PHI3_NAMES}

IGNORED = object()


@dataclass(frozen=True)
class Mapped:
    """A stored tensor resolved to its canonical target(s)."""

    targets: tuple[str, ...]
    transpose: bool


def map_name(family: str, name: str) -> Mapped | object | None:
    """Resolve a stored tensor name: a ``Mapped``, ``IGNORED``, or None if unknown."""
    names = FAMILY_NAMES[family]
    bare = name.removeprefix(names.prefix)
    if re.fullmatch(names.ignored, bare):
        return IGNORED
    for rule in names.rules:
        match = re.fullmatch(rule.pattern, bare)
        if match:
            return Mapped(tuple(t.format(*match.groups()) for t in rule.targets), rule.transpose)
    return None


def stored_shape(mapped: Mapped, shapes: dict[str, Shape]) -> Shape:
    """The shape the stored tensor must have, given its targets' canonical shapes."""
    first = shapes[mapped.targets[0]]
    rows = sum(shapes[t][0] for t in mapped.targets)
    shape = (rows, *first[1:])
    return tuple(reversed(shape)) if mapped.transpose else shape
