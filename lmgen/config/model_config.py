"""ModelConfig: one dataclass that describes every decoder lmgen can run.

Read from lmgen's own TOML files (``configs/*.toml``) or from a Hugging Face
``config.json`` by ``lmgen.formats.config_file``. Each family's differences from a plain
pre-norm Llama block are fields here, set from the family table in ``families.py``.
This module imports no torch, so ``inspect`` stays fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from lmgen.config import families
from lmgen.errors import ConfigError

FAMILIES = tuple(families.FAMILIES)
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "sandwich", "post")  # before each sublayer; before and after; after only
QK_NORMS = (None, "head", "projection")  # RMSNorm of each query/key head, or of the whole projection
POSITIONS = ("learned", "rope")
MLPS = ("plain", "gated")  # down(act(up x)), or down(act(gate x) * up x)
ACTIVATIONS = ("gelu", "gelu_tanh", "silu")
POOLINGS = ("mean", "last", "cls")  # an embedding's: every position's average, the last, the first

# Upper bounds on a config's sizes: generous for any small decoder, and small enough that no
# product of them overflows or makes lmgen allocate before the weight files are checked.
LIMITS = {"vocab_size": 1 << 24, "d_model": 1 << 16, "n_layers": 4096, "n_heads": 4096, "n_kv_heads": 4096,
          "head_dim": 4096, "d_mlp": 1 << 20, "max_context": 1 << 26}


@dataclass
class ModelConfig:
    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    max_context: int
    # The block
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    norm_offset: float = 0.0  # Gemma's norms scale by (1 + weight)
    mlp: str = "gated"
    activation: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # Attention
    qk_norm: str | None = None
    attn_scale: float | None = None  # the query scaling; None: head_dim ** -0.5
    attn_softcap: float | None = None  # scores → cap · tanh(scores / cap) (Gemma 2)
    sliding_window: int | None = None
    sliding_layers: list[int] | None = None  # the layers that slide; None: all, when there is a window
    # Positions
    positions: str = "rope"
    rope_theta: float = 10000.0
    rope_dim: int | None = None  # rotated dims of each head; None: all (Phi-4-mini rotates 3/4)
    rope_scaling: dict | None = None  # rope_type and its parameters, as transformers names them (rope.py)
    local_rope_theta: float | None = None  # the sliding layers' own unscaled rotary base (Gemma 3)
    nope_layers: list[int] = field(default_factory=list)  # layers without positions (SmolLM3)
    # Embeddings and head
    embed_scale: float = 1.0  # Gemma multiplies the embeddings by sqrt(d_model)
    tied_embeddings: bool = False
    logit_softcap: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pooling: str | None = None  # embeddings' default (a GGUF's pooling_type); None: mean

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family '{self.family}' is not supported (supported: {', '.join(FAMILIES)})")
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not is_int(value) or not 1 <= value <= limit:
                raise ConfigError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS), ("activation", ACTIVATIONS),
                              ("norm_placement", NORM_PLACEMENTS), ("qk_norm", QK_NORMS),
                              ("pooling", (None, *POOLINGS))):
            if getattr(self, name) not in allowed:
                shown = ", ".join(str(a).lower() for a in allowed)
                raise ConfigError(f"{name} must be one of {shown}, got {getattr(self, name)!r}")
        for name in ("norm_eps", "rope_theta", "embed_scale"):
            _check_positive(name, getattr(self, name))
        for name in ("attn_scale", "attn_softcap", "logit_softcap", "local_rope_theta"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if not is_number(self.norm_offset) or not math.isfinite(self.norm_offset):
            raise ConfigError(f"norm_offset must be a finite number, got {self.norm_offset!r}")
        for name in ("qkv_bias", "o_bias", "mlp_bias", "tied_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) for grouped-query attention"
            )
        if self.rope_dim is not None and (not is_int(self.rope_dim) or not 2 <= self.rope_dim <= self.head_dim):
            raise ConfigError(f"rope_dim must be an integer from 2 to head_dim ({self.head_dim}), got {self.rope_dim!r}")
        if self.positions == "rope" and self.rotary_dim % 2:
            raise ConfigError(f"the rotated part of each head ({self.rotary_dim}) must be even for rotary positions")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling, self.rotary_dim, self.rope_theta)
        if self.sliding_window is not None and (not is_int(self.sliding_window) or self.sliding_window < 1):
            raise ConfigError(f"sliding_window must be a positive integer, got {self.sliding_window!r}")
        for name in ("sliding_layers", "nope_layers"):
            layers = getattr(self, name)
            if layers is not None and (not isinstance(layers, list) or
                                       not all(is_int(i) and 0 <= i < self.n_layers for i in layers)):
                raise ConfigError(f"{name} must be a list of layer numbers below n_layers ({self.n_layers}), got {layers!r}")
        if not isinstance(self.eos_token_ids, list):
            raise ConfigError(f"eos_token_ids must be a list of token ids, got {self.eos_token_ids!r}")
        # An id beyond the vocabulary (a small config keeping GPT-2's 50256) is harmless: the model
        # can never produce it. Loading notes it and leaves it out (loading.end_ids); only a
        # value that is not an integer is refused.
        for name, value in [("bos_token_id", self.bos_token_id)] + [("eos_token_id", i) for i in self.eos_token_ids]:
            if value is not None and not is_int(value):
                raise ConfigError(f"{name} must be a token id (an integer), got {value!r}")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return self.head_dim if self.rope_dim is None else self.rope_dim

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of a layer's attention, or None where it sees every earlier position."""
        if self.sliding_window is None or (self.sliding_layers is not None and layer not in self.sliding_layers):
            return None
        return self.sliding_window

    def layer_rope(self, layer: int) -> str | None:
        """Which rotary table a layer uses: "global", "local" (Gemma 3's sliding layers) or None."""
        if self.positions != "rope" or layer in self.nope_layers:
            return None
        if self.local_rope_theta is not None and self.layer_window(layer) is not None:
            return "local"
        return "global"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise ConfigError(f"config is missing required field(s): {', '.join(missing)}")
        return cls(**data)


# Rotary scaling as transformers names it: each type's required parameters (rope.py computes them).
ROPE_SCALINGS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("original_max_position_embeddings",),  # factor: max_context / original by default
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
}
ROPE_OPTIONAL = ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate", "factor",
                 "original_max_position_embeddings")


def _check_rope_scaling(scaling, rotary_dim: int, theta: float) -> None:
    if not isinstance(scaling, dict) or scaling.get("rope_type") not in ROPE_SCALINGS:
        shown = scaling.get("rope_type") if isinstance(scaling, dict) else scaling
        raise ConfigError(f"rope_type {shown!r} is not supported (supported: default, {', '.join(ROPE_SCALINGS)})")
    kind = scaling["rope_type"]
    required = ROPE_SCALINGS[kind]
    for key, value in scaling.items():
        if key == "rope_type" or value is None:
            continue
        if key not in required and key not in ROPE_OPTIONAL:
            raise ConfigError(f"rope scaling {kind!r} has an unknown parameter {key!r}")
        if key in ("short_factor", "long_factor"):
            if not isinstance(value, list) or len(value) != rotary_dim // 2 or not all(
                    is_number(v) and math.isfinite(v) and v > 0 for v in value):
                raise ConfigError(f"rope scaling {key} must be {rotary_dim // 2} positive numbers (one per frequency)")
        elif key == "truncate":
            if not isinstance(value, bool):
                raise ConfigError(f"rope scaling truncate must be true or false, got {value!r}")
        else:
            _check_positive(f"rope scaling {key}", value)
            if value > LIMITS["max_context"]:
                raise ConfigError(f"rope scaling {key} must be at most {LIMITS['max_context']}, got {value!r}")
    missing = [key for key in required if scaling.get(key) is None]
    if missing:
        raise ConfigError(f"rope scaling {kind!r} needs {', '.join(missing)}")
    # What the formulas in rope.py divide by, or take the logarithm of, must not be 0.
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError("rope scaling llama3 needs high_freq_factor above low_freq_factor")
    if kind == "dynamic" and rotary_dim < 4:
        raise ConfigError("rope scaling dynamic needs at least 4 rotated dims per head")
    if kind in ("yarn", "longrope") and not scaling["original_max_position_embeddings"] >= 2:
        raise ConfigError(f"rope scaling {kind} needs original_max_position_embeddings of at least 2")
    if kind == "yarn" and not theta > 1:
        raise ConfigError(f"rope scaling yarn needs rope_theta above 1, got {theta!r}")


def _check_positive(name: str, value) -> None:
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite positive number, got {value!r}")


def is_int(value) -> bool:
    """An int that is not a bool (True is an int to Python, never a size or a token id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_toml(cfg: ModelConfig) -> str:
    """lmgen's own TOML form of a config (the format of configs/*.toml)."""
    lines = ["[model]"]
    for key, value in cfg.to_dict().items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, dict):  # an inline table: TOML's keys are bare, its values as below
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    return json.dumps(value)
