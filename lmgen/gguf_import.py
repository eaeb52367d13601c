"""Import a GGUF file (llama.cpp's format) as a Hugging Face-layout directory.

``convert_gguf`` dequantizes every tensor to fp32 with the ``gguf`` library,
undoes the row permutation that llama.cpp applies to Llama's Q and K
projections, rebuilds the byte-level BPE tokenizer from ``tokenizer.ggml.*``
metadata, and writes config.json + model.safetensors + tokenizer.json (+
tokenizer_config.json with the chat template). The result loads in lmgen and
in transformers alike. Needs numpy, gguf, safetensors and tokenizers; no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmgen.config import ModelConfig, to_hf
from lmgen.errors import CheckpointError

SUPPORTED_ARCHS = ("llama", "qwen2")

# GGUF tensor name → Hugging Face name (layer index as {0})
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# llama.cpp token types
_CONTROL, _USER_DEFINED = 3, 4


def hf_tensor_name(gguf_name: str) -> str:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    raise CheckpointError(f"GGUF tensor {gguf_name} has no known Hugging Face name")


def unpermute_rows(weight, n_heads: int):
    """Undo llama.cpp's interleaving of the rotary halves in Q/K rows (per head)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_metadata(reader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    return meta


def gguf_config(meta: dict, tied: bool) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise CheckpointError(f"GGUF metadata lacks {arch}.{key}")
        return value

    d_model, n_heads = get("embedding_length"), get("attention.head_count")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        family=arch,
        vocab_size=meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        d_model=d_model,
        n_layers=get("block_count"),
        n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv", n_heads),
        head_dim=get("attention.key_length", d_model // n_heads),
        d_mlp=get("feed_forward_length"),
        max_context=get("context_length"),
        norm="rmsnorm",
        norm_eps=get("attention.layer_norm_rms_epsilon"),
        positions="rope",
        rope_theta=float(get("rope.freq_base", 10000.0)),
        mlp="swiglu",
        activation="silu",
        qkv_bias=arch == "qwen2",
        tied_embeddings=tied,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[eos] if eos is not None else [],
    )


def gguf_tensors(reader, cfg: ModelConfig) -> dict:
    """HF name → fp32 numpy array for every tensor in the file."""
    import numpy as np
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        array = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        array = array.reshape(tuple(int(n) for n in reversed(t.shape)))
        if cfg.family == "llama" and name.endswith("q_proj.weight"):
            array = unpermute_rows(array, cfg.n_heads)
        elif cfg.family == "llama" and name.endswith("k_proj.weight"):
            array = unpermute_rows(array, cfg.n_kv_heads)
        tensors[name] = np.ascontiguousarray(array)
    return tensors


def gguf_tokenizer(meta: dict):
    """A ``tokenizers.Tokenizer`` rebuilt from byte-level BPE metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"), pre_tokenizers)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    types = list(meta.get("tokenizer.ggml.token_type", []))
    special = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == _CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == _USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B", special_tokens=[(tokens[bos], bos)]
        )
    return tokenizer


def _pre_tokenizer(pre: str, pre_tokenizers):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # llama.cpp's "smollm": every digit on its own, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "gpt-2", "default"):
        return byte_level
    raise CheckpointError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: smollm, gpt2, default)")


def tokenizer_config(meta: dict, cfg: ModelConfig) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str):
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": cfg.max_context,
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def open_gguf(src: Path):
    """A ``gguf.GGUFReader`` for src, or a CheckpointError saying why not."""
    from gguf import GGUFReader

    if not src.is_file():
        raise CheckpointError(f"GGUF file {src} does not exist")
    try:
        return GGUFReader(src)
    except Exception as exc:  # gguf raises ValueError, struct.error, ... on bad files
        raise CheckpointError(f"{src} is not a readable GGUF file ({exc})") from None


def convert_gguf(src: str | Path, out: str | Path) -> ModelConfig:
    """Write an HF-layout directory for the GGUF file ``src`` into ``out``."""
    from safetensors.numpy import save_file

    src, out = Path(src), Path(out)
    reader = open_gguf(src)
    meta = read_metadata(reader)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    cfg = gguf_config(meta, tied)
    tokenizer = gguf_tokenizer(meta)
    tensors = gguf_tensors(reader, cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "source": src.name})
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config(meta, cfg))
    _write_json(out / "config.json", to_hf(cfg))  # last: its presence marks a complete import
    return cfg


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
