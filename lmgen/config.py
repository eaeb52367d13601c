"""ModelConfig: one dataclass that describes every decoder lmgen can run.

Read from lmgen's own TOML files (``configs/*.toml``) or from a Hugging Face
``config.json``. This module imports no torch, so ``inspect`` stays fast.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from lmgen.errors import ConfigError

FAMILIES = ("gpt2", "llama", "qwen2", "mistral")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu")

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
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    positions: str = "rope"
    rope_theta: float = 10000.0
    mlp: str = "swiglu"
    activation: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tied_embeddings: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family '{self.family}' is not supported (supported: {', '.join(FAMILIES)})")
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not is_int(value) or not 1 <= value <= limit:
                raise ConfigError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
        for name in ("qkv_bias", "o_bias", "mlp_bias", "tied_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) for grouped-query attention"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary positions")
        if self.sliding_window is not None and (not is_int(self.sliding_window) or self.sliding_window < 1):
            raise ConfigError(f"sliding_window must be a positive integer, got {self.sliding_window!r}")
        if not isinstance(self.eos_token_ids, list):
            raise ConfigError(f"eos_token_ids must be a list of token ids, got {self.eos_token_ids!r}")
        for name, value in [("bos_token_id", self.bos_token_id)] + [("eos_token_id", i) for i in self.eos_token_ids]:
            if value is not None and (not is_int(value) or not 0 <= value < self.vocab_size):
                raise ConfigError(f"{name} must be a token id below vocab_size ({self.vocab_size}), got {value!r}")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

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



def is_int(value) -> bool:
    """An int that is not a bool (True is an int to Python, never a size or a token id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_toml(path: Path) -> ModelConfig:
    from lmgen.files import read_text

    try:
        data = tomllib.loads(read_text(Path(path), "config"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    model = data.get("model", data)
    if not isinstance(model, dict):
        raise ConfigError(f"config {path}: [model] must be a table")
    return ModelConfig.from_dict(model)


def load_hf_json(path: Path) -> ModelConfig:
    from lmgen.files import read_json

    return from_hf(read_json(Path(path), "config"))


class HFFields:
    """Typed reads of a config.json dict: each wrong type is a ConfigError naming the field."""

    def __init__(self, hf: dict, model_type: str):
        self.hf, self.where = hf, f"config.json for {model_type}"

    def get(self, key: str, default=MISSING):
        if key in self.hf and self.hf[key] is not None:
            return self.hf[key]
        if default is MISSING:
            raise ConfigError(f"{self.where} is missing the field {key!r}")
        return default

    def _wrong(self, key: str, expected: str):
        return ConfigError(f"{self.where}: {key} must be {expected}, got {self.hf[key]!r}")

    def int(self, key: str, default=MISSING) -> int:
        value = self.get(key, default)
        if value is not default and not is_int(value):
            raise self._wrong(key, "an integer")
        return value

    def float(self, key: str, default=MISSING) -> float:
        value = self.get(key, default)
        if value is not default and not _is_number(value):
            raise self._wrong(key, "a number")
        return value if value is None else float(value)

    def bool(self, key: str, default=MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def dict(self, key: str) -> dict:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise self._wrong(key, "an object")
        return value

    def token_ids(self, key: str) -> list[int]:
        value = self.get(key, [])
        ids = value if isinstance(value, list) else [value]
        if not all(is_int(i) for i in ids):
            raise self._wrong(key, "a token id or a list of them")
        return ids


def from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face config.json dict into a ModelConfig."""
    if not isinstance(hf, dict):
        raise ConfigError(f"config.json must hold an object, not {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    fields_ = HFFields(hf, model_type)
    return _gpt2(fields_) if model_type == "gpt2" else _llama_like(fields_, model_type)


def _divisible(d_model: int, n_heads: int, names: str) -> int:
    if n_heads < 1 or d_model % n_heads:
        raise ConfigError(f"{names.format(d_model, n_heads)}")
    return d_model // n_heads


def _gpt2(hf: HFFields) -> ModelConfig:
    d_model, n_heads = hf.int("n_embd"), hf.int("n_head")
    head_dim = _divisible(d_model, n_heads, "n_embd ({}) must be divisible by n_head ({})")
    activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
        str(hf.get("activation_function", "gelu_new"))
    )
    if activation is None:
        raise ConfigError(f"activation_function {hf.get('activation_function')!r} is not supported for gpt2")
    return ModelConfig(
        family="gpt2",
        vocab_size=hf.int("vocab_size"),
        d_model=d_model,
        n_layers=hf.int("n_layer"),
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=head_dim,
        d_mlp=hf.int("n_inner", 4 * d_model),
        max_context=hf.int("n_positions"),
        norm="layernorm",
        norm_eps=hf.float("layer_norm_epsilon", 1e-5),
        positions="learned",
        mlp="gelu",
        activation=activation,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tied_embeddings=hf.bool("tie_word_embeddings", True),
        bos_token_id=hf.int("bos_token_id", None),
        eos_token_ids=hf.token_ids("eos_token_id"),
    )


def _rope_theta(hf: HFFields) -> float:
    params, scaling = hf.dict("rope_parameters"), hf.dict("rope_scaling")
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"rope_type {rope_type!r} is not supported (only the default rotary embedding)")
    if "rope_theta" in params:
        return HFFields(params, "rope_parameters").float("rope_theta")
    return hf.float("rope_theta", 10000.0)


def _llama_like(hf: HFFields, family: str) -> ModelConfig:
    d_model, n_heads = hf.int("hidden_size"), hf.int("num_attention_heads")
    head_dim = hf.int("head_dim", None)
    if head_dim is None:
        head_dim = _divisible(d_model, n_heads, "hidden_size ({}) must be divisible by num_attention_heads ({})")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf.get('hidden_act')!r} is not supported for {family} (only silu)")
    attention_bias = hf.bool("attention_bias", False)
    sliding_window = None
    if family == "mistral" or (family == "qwen2" and hf.bool("use_sliding_window", False)):
        sliding_window = hf.int("sliding_window", None)
    return ModelConfig(
        family=family,
        vocab_size=hf.int("vocab_size"),
        d_model=d_model,
        n_layers=hf.int("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=hf.int("num_key_value_heads", n_heads),
        head_dim=head_dim,
        d_mlp=hf.int("intermediate_size"),
        max_context=hf.int("max_position_embeddings", 2048),
        norm="rmsnorm",
        norm_eps=hf.float("rms_norm_eps", 1e-6),
        positions="rope",
        rope_theta=_rope_theta(hf),
        mlp="swiglu",
        activation="silu",
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=attention_bias if family == "llama" else False,
        mlp_bias=hf.bool("mlp_bias", False) if family == "llama" else False,
        tied_embeddings=hf.bool("tie_word_embeddings", False),
        sliding_window=sliding_window,
        bos_token_id=hf.int("bos_token_id", None),
        eos_token_ids=hf.token_ids("eos_token_id"),
    )


def to_hf(cfg: ModelConfig) -> dict:
    """A Hugging Face config.json for a llama-family ModelConfig (used by GGUF import)."""
    if cfg.family not in ("llama", "qwen2", "mistral"):
        raise ConfigError(f"writing a config.json for family {cfg.family!r} is not supported")
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
    hf = {
        "architectures": [arch[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_mlp,
        "max_position_embeddings": cfg.max_context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else cfg.eos_token_ids or None,
        "torch_dtype": "float32",
    }
    if cfg.family == "llama":
        hf["attention_bias"] = cfg.qkv_bias
    return hf


def to_toml(cfg: ModelConfig) -> str:
    """lmgen's own TOML form of a config (the format of configs/*.toml)."""
    lines = ["[model]"]
    for key, value in cfg.to_dict().items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
