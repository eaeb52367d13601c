"""Which tensors a config implies, and what each family calls them.

lmgen's *canonical* tensor names are the model's parameter names before the
loader fuses q/k/v into one projection and gate/up into one: for example
``blocks.3.attn.q.weight`` or ``head.linear.weight``. Each family's names are
mapped onto them by a list of rules (the job mlx-lm calls ``sanitize``), kept with the
rest of each family's facts in ``families.py``.

Torch-free: ``inspect`` uses this to count parameters from headers alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmgen.config.families import FAMILIES
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


# Each family's names for the canonical tensors (families.py holds them).
FAMILY_NAMES = {family.model_type: family.names for family in FAMILIES.values()}

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
