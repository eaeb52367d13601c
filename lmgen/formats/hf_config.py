"""Hugging Face ``config.json`` → ModelConfig (GGUF import writes one too: gguf_arch.py).

Each family's differences from a Llama block are one ``LlamaLike`` in the family table
(``lmgen/config/families.py``): the rest of this module reads the fields every Llama-like
config shares.
"""

from __future__ import annotations

from dataclasses import MISSING

from lmgen.config import families
from lmgen.config.families import LlamaLike
from lmgen.config.model_config import LIMITS, POOLINGS, ROPE_OPTIONAL, ROPE_SCALINGS, ModelConfig, is_int, is_number
from lmgen.errors import ConfigError


# model_type → how its config.json differs from Llama's, for every family but GPT-2 (families.py)
FAMILIES = {family.model_type: family.llama_like for family in families.FAMILIES.values()
            if family.llama_like is not None}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


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
        if value is not default and not is_number(value):
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
    if model_type not in tuple(families.FAMILIES):  # not a dict's lookup: model_type may be a list
        hint = " (the text model of a Gemma 3 vision checkpoint is not supported; gemma3_text is)" if model_type == "gemma3" else ""
        raise ConfigError(
            f"model_type {model_type!r} is not supported{hint} (supported: {', '.join(families.FAMILIES)})"
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
        mlp="plain",
        activation=_activation(hf, "activation_function", "gelu_new"),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tied_embeddings=hf.bool("tie_word_embeddings", True),
        bos_token_id=hf.int("bos_token_id", None),
        eos_token_ids=hf.token_ids("eos_token_id"),
        pooling=_pooling(hf),
    )


def _activation(hf: HFFields, key: str, default: str) -> str:
    name = hf.get(key, default)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"{hf.where}: {key} {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _llama_like(hf: HFFields, model_type: str) -> ModelConfig:
    family = FAMILIES[model_type]
    d_model, n_heads, n_layers = hf.int("hidden_size"), hf.int("num_attention_heads"), _layers(hf)
    head_dim = hf.int("head_dim", None)
    if head_dim is None:
        head_dim = _divisible(d_model, n_heads, "hidden_size ({}) must be divisible by num_attention_heads ({})")
    attention_bias = hf.bool("attention_bias", False) if family.biases == "attention_bias" else False
    nope_layers = _nope_layers(hf, n_layers) if family.nope else []
    window, sliding_layers = _sliding(hf, family, n_layers, nope_layers)
    rope = _rope(hf, family, head_dim)
    context = hf.int("max_position_embeddings", 2048)
    factor = (rope["rope_scaling"] or {}).get("factor")
    if rope["rope_scaling"] and rope["rope_scaling"]["rope_type"] == "dynamic" and is_number(factor) \
            and 0 < factor < LIMITS["max_context"]:  # NTK scaling is for going past the trained context
        context = int(context * factor)
    return ModelConfig(
        family=model_type,
        vocab_size=hf.int("vocab_size"),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=hf.int("num_key_value_heads", n_heads),
        head_dim=head_dim,
        d_mlp=hf.int("intermediate_size"),
        max_context=context,
        norm_eps=hf.float("rms_norm_eps", 1e-6),
        norm_placement=family.norm_placement,
        norm_offset=family.norm_offset,
        activation=_activation(hf, family.activation_key, "gelu_pytorch_tanh" if family.gemma else "silu"),
        qkv_bias=attention_bias or family.biases == "qkv",
        o_bias=attention_bias,
        mlp_bias=hf.bool("mlp_bias", False) if family.mlp_bias else False,
        qk_norm=family.qk_norm,
        attn_scale=_positive(hf, "query_pre_attn_scalar", 256.0) ** -0.5 if family.gemma else None,
        attn_softcap=hf.float("attn_logit_softcapping", None) if family.attn_softcap else None,
        sliding_window=window,
        sliding_layers=sliding_layers,
        **rope,
        nope_layers=nope_layers,
        embed_scale=d_model**0.5 if family.gemma else 1.0,
        tied_embeddings=hf.bool("tie_word_embeddings", family.tied),
        logit_softcap=hf.float("final_logit_softcapping", None) if family.gemma else None,
        bos_token_id=hf.int("bos_token_id", None),
        eos_token_ids=hf.token_ids("eos_token_id"),
        pooling=_pooling(hf),
    )


def _pooling(hf: HFFields) -> str | None:
    """pooling_type: how an embedding pools the positions (GGUF import writes it from the file's
    ``{arch}.pooling_type``); None where the config does not say."""
    value = hf.get("pooling_type", None)
    if value is not None and value not in POOLINGS:
        raise ConfigError(f"{hf.where}: pooling_type must be one of {', '.join(POOLINGS)}, got {value!r}")
    return value


def _layers(hf: HFFields) -> int:
    """num_hidden_layers, bounded before any per-layer list is made from it."""
    n_layers = hf.int("num_hidden_layers")
    if not 1 <= n_layers <= LIMITS["n_layers"]:
        raise ConfigError(f"n_layers must be an integer from 1 to {LIMITS['n_layers']}, got {n_layers!r}")
    return n_layers


def _period(hf: HFFields, key: str, default: int) -> int:
    value = hf.int(key, default)
    if value < 1:
        raise ConfigError(f"{hf.where}: {key} must be a positive integer, got {value!r}")
    return value


def _positive(hf: HFFields, key: str, default: float) -> float:
    value = hf.float(key, default)
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{hf.where}: {key} must be a finite positive number, got {value!r}")
    return value


def _nope_layers(hf: HFFields, n_layers: int) -> list[int]:
    """SmolLM3's no_rope_layers: 1 where a layer uses rotary positions, 0 where it does not."""
    flags = hf.get("no_rope_layers", None)
    if flags is None:
        interval = _period(hf, "no_rope_layer_interval", 4)
        flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
    if not isinstance(flags, list) or len(flags) != n_layers or not all(f in (0, 1) for f in flags):
        raise ConfigError(f"{hf.where}: no_rope_layers must be {n_layers} flags of 0 or 1")
    return [i for i, uses_rope in enumerate(flags) if not uses_rope]


def _sliding(hf: HFFields, family: LlamaLike, n_layers: int, nope_layers: list[int]):
    """(sliding_window, sliding_layers): the window, and which layers use it (None: all)."""
    if family.sliding is None:
        return None, None
    always = family.sliding in ("all", "alternate", "pattern")  # no use_sliding_window switch
    window = hf.int("sliding_window", None) if always or hf.bool("use_sliding_window", False) else None
    if window is None:
        return None, None
    types = hf.get("layer_types", None)
    if types is not None and family.sliding != "all":  # Mistral and Phi-3 slide everywhere, listed or not
        if not isinstance(types, list) or len(types) != n_layers or \
                not set(types) <= {"sliding_attention", "full_attention"}:
            raise ConfigError(f"{hf.where}: layer_types must list sliding_attention or full_attention "
                              f"for each of the {n_layers} layers")
        return window, [i for i, kind in enumerate(types) if kind == "sliding_attention"]
    if family.sliding == "all":
        return window, None
    if family.sliding == "from_max_window_layers":
        return window, list(range(max(0, hf.int("max_window_layers", 28)), n_layers))
    if family.sliding == "alternate":
        return window, list(range(0, n_layers, 2))
    if family.sliding == "pattern":
        pattern = _period(hf, "sliding_window_pattern", 6)
        return window, [i for i in range(n_layers) if (i + 1) % pattern]
    return window, nope_layers  # SmolLM3 slides where it has no positions


def _rope(hf: HFFields, family: LlamaLike, head_dim: int) -> dict:
    """rope_theta, rope_dim, rope_scaling and local_rope_theta, from either way transformers has
    written them: rope_scaling beside a top-level rope_theta, or rope_parameters (per layer type
    for Gemma 3)."""
    params, scaling = hf.dict("rope_parameters"), hf.dict("rope_scaling")
    nested = "full_attention" in params or "sliding_attention" in params
    rope = HFFields(params, "rope_parameters").dict("full_attention") if nested else {**scaling, **params}
    local = HFFields(params, "rope_parameters").dict("sliding_attention") if nested else {}
    reader = HFFields(rope, "rope_parameters")
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if not isinstance(kind, str):
        raise ConfigError(f"rope_type {kind!r} is not supported")
    if hf.hf["model_type"] == "phi3" and kind in ("su", "yarn"):
        kind = "longrope"  # Phi-3's early names for it, as transformers reads them
    factor = reader.float("partial_rotary_factor", hf.float("partial_rotary_factor", 1.0))
    if not 0 < factor <= 1:
        raise ConfigError(f"{hf.where}: partial_rotary_factor must be above 0 and at most 1, got {factor!r}")
    out = dict(
        rope_theta=reader.float("rope_theta", hf.float("rope_theta", 1e6 if family.local_rope else 10000.0)),
        rope_dim=int(head_dim * factor) if factor != 1.0 else None,
        rope_scaling=None if kind == "default" else _scaling(hf, rope, kind),
    )
    if family.local_rope:
        if (local.get("rope_type") or "default") != "default":
            raise ConfigError(f"{hf.where}: the sliding layers' rope_type must be default, got {local['rope_type']!r}")
        out["local_rope_theta"] = HFFields(local, "rope_parameters").float(
            "rope_theta", hf.float("rope_local_base_freq", 10000.0))
    return out


def _scaling(hf: HFFields, rope: dict, kind: str) -> dict:
    known = ROPE_SCALINGS.get(kind, ()) + ROPE_OPTIONAL
    scaling = {"rope_type": kind, **{key: rope[key] for key in known if rope.get(key) is not None}}
    trained = hf.int("max_position_embeddings", 2048)
    if kind == "dynamic":  # transformers scales from max_position_embeddings, whatever else is set
        scaling["original_max_position_embeddings"] = trained
    elif kind in ("llama3", "yarn", "longrope"):
        original = hf.int("original_max_position_embeddings", None)  # Phi-3 keeps it outside: it wins there
        scaling["original_max_position_embeddings"] = original or scaling.get("original_max_position_embeddings") or trained
    return scaling


# model_type → the class config.json's architectures names
ARCHITECTURES = {family.model_type: family.hf_class for family in families.FAMILIES.values()}
