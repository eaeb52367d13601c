"""ModelConfig: one dataclass that describes every decoder lmgen can run.

Read from lmgen's own TOML files (``configs/*.toml``) or from a Hugging Face
``config.json``. This module imports no torch, so ``inspect`` stays fast.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from lmgen.errors import ConfigError

FAMILIES = ("gpt2", "llama", "qwen2", "mistral")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu")


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
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_mlp", "max_context"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}) for grouped-query attention"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary positions")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be a positive integer, got {self.sliding_window!r}")

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



def load_toml(path: Path) -> ModelConfig:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    return ModelConfig.from_dict(data.get("model", data))


def load_hf_json(path: Path) -> ModelConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    return from_hf(data)


def from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face config.json dict into a ModelConfig."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    try:
        return _gpt2(hf) if model_type == "gpt2" else _llama_like(hf, model_type)
    except KeyError as exc:
        raise ConfigError(f"config.json for {model_type} is missing the field {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ConfigError(f"config.json for {model_type} has a field of the wrong type: {exc}") from None


def _eos_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _gpt2(hf: dict) -> ModelConfig:
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
        raise ConfigError(f"n_embd ({d_model}) must be divisible by n_head ({n_heads})")
    activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
        hf.get("activation_function", "gelu_new")
    )
    if activation is None:
        raise ConfigError(f"activation_function {hf.get('activation_function')!r} is not supported for gpt2")
    return ModelConfig(
        family="gpt2",
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=d_model // n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        max_context=hf["n_positions"],
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        positions="learned",
        mlp="gelu",
        activation=activation,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tied_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_eos_list(hf.get("eos_token_id")),
    )


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"rope_type {rope_type!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_like(hf: dict, family: str) -> ModelConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ConfigError(f"hidden_size ({d_model}) must be divisible by num_attention_heads ({n_heads})")
        head_dim = d_model // n_heads
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf.get('hidden_act')!r} is not supported for {family} (only silu)")
    attention_bias = bool(hf.get("attention_bias", False))
    sliding_window = None
    if family == "mistral" or (family == "qwen2" and hf.get("use_sliding_window")):
        sliding_window = hf.get("sliding_window")
    return ModelConfig(
        family=family,
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        d_mlp=hf["intermediate_size"],
        max_context=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        positions="rope",
        rope_theta=_rope_theta(hf),
        mlp="swiglu",
        activation="silu",
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=attention_bias if family == "llama" else False,
        mlp_bias=bool(hf.get("mlp_bias", False)) if family == "llama" else False,
        tied_embeddings=hf.get("tie_word_embeddings", False),
        sliding_window=sliding_window,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_eos_list(hf.get("eos_token_id")),
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
