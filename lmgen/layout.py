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

from lmgen.config import ModelConfig

Shape = tuple[int, ...]


def canonical_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor the model needs, in canonical names, with its shape."""
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

    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        norm(f"{b}.attn_norm")
        linear(f"{b}.attn.q", cfg.q_dim, d, cfg.qkv_bias)
        linear(f"{b}.attn.k", cfg.kv_dim, d, cfg.qkv_bias)
        linear(f"{b}.attn.v", cfg.kv_dim, d, cfg.qkv_bias)
        linear(f"{b}.attn.o", d, cfg.q_dim, cfg.o_bias)
        norm(f"{b}.mlp_norm")
        if cfg.mlp == "swiglu":
            linear(f"{b}.mlp.gate", ff, d, cfg.mlp_bias)
        linear(f"{b}.mlp.up", ff, d, cfg.mlp_bias)
        linear(f"{b}.mlp.down", d, ff, cfg.mlp_bias)
    norm("head.norm")
    if not cfg.tied_embeddings:
        shapes["head.linear.weight"] = (cfg.vocab_size, d)
    return shapes


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

LLAMA_NAMES = FamilyNames(
    prefix="model.",
    rules=(
        Rule(r"embed_tokens\.weight", ("embed.weight",)),
        Rule(r"layers\.(\d+)\.input_layernorm\.weight", ("blocks.{0}.attn_norm.weight",)),
        Rule(r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", ("blocks.{0}.attn.{1}.{2}",)),
        Rule(r"layers\.(\d+)\.post_attention_layernorm\.weight", ("blocks.{0}.mlp_norm.weight",)),
        Rule(r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", ("blocks.{0}.mlp.{1}.{2}",)),
        Rule(r"norm\.weight", ("head.norm.weight",)),
        Rule(r"lm_head\.weight", ("head.linear.weight",)),
    ),
    ignored=r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
)

FAMILY_NAMES = {"gpt2": GPT2_NAMES, "llama": LLAMA_NAMES, "qwen2": LLAMA_NAMES, "mistral": LLAMA_NAMES}

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
