"""Import a GGUF file (llama.cpp's format) as a Hugging Face-layout directory.

``convert_gguf`` dequantizes every tensor to fp32 with the ``gguf`` library,
undoes what llama.cpp's converter did to each architecture's tensors (``gguf_arch.py``),
rebuilds the tokenizer from ``tokenizer.ggml.*`` metadata (``gguf_tokenizer.py``), and writes
config.json + model.safetensors + tokenizer.json (+ tokenizer_config.json with the chat template). The result loads in lmgen and
in transformers alike. Needs numpy, gguf, safetensors and tokenizers; no torch.

GGUF files come from strangers, so each way one can be wrong ends in one
``LmgenError``: the reader stops at the end of the file and at absurd arrays,
each metadata value is checked by key, each tensor's shape against the config
before anything is dequantized, the fp32 weights must fit in memory, and the
output is staged beside its target and renamed into place only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmgen.config import layout
from lmgen.config.model_config import LIMITS, ModelConfig
from lmgen.errors import CheckpointError
from lmgen.formats.files import check_directory_target, staged_directory
from lmgen.formats.gguf.arch import (
    ARCHS,
    POOLING_TYPES,
    ROPE_TENSORS,
    Arch,
    block_names,
    gemma_query_scalar,
    hf_tensor_name,
    restore,
    rope_config,
)
from lmgen.formats.gguf.metadata import (
    _REQUIRED,
    _token_id,
    integer,
    open_gguf,
    positive,
    printable,
    read_metadata,
    token_list,
    typed,
)
from lmgen.formats.gguf.validate import check_finite
from lmgen.resources import require_memory

SUPPORTED_ARCHS = tuple(ARCHS)

MEMORY_MARGIN = 512 << 20  # bytes kept free besides the fp32 weights: temporaries, the tokenizer


def gguf_hf_config(reader, meta: dict) -> dict:
    """The config.json a GGUF file stands for: its metadata, its architecture's fixed facts
    (gguf_arch.py), and what its tensors tell: a head of its own, biases, rotary scaling."""
    name = typed(meta, "general.architecture", "a string")
    if name not in ARCHS:
        supported = ", ".join(SUPPORTED_ARCHS)
        raise CheckpointError(f"GGUF architecture {printable(repr(name))} is not supported (supported: {supported})")
    arch, sizes = ARCHS[name], gguf_sizes(meta, name)
    n_tokens = len(token_list(meta)) if "tokenizer.ggml.tokens" in meta else sizes["vocab_size"]
    if n_tokens > sizes["vocab_size"]:
        raise CheckpointError(f"GGUF metadata has {n_tokens} tokens but {name}.vocab_size is {sizes['vocab_size']}")
    names = {t.name for t in reader.tensors}
    from lmgen.formats.hf_config import ARCHITECTURES

    hf = {
        "architectures": [ARCHITECTURES[arch.model_type]], "model_type": arch.model_type,
        "vocab_size": sizes["vocab_size"], "hidden_size": sizes["d_model"], "num_hidden_layers": sizes["n_layers"],
        "num_attention_heads": sizes["n_heads"], "num_key_value_heads": sizes["n_kv_heads"],
        "head_dim": sizes["head_dim"], "intermediate_size": sizes["d_mlp"], "max_position_embeddings": sizes["max_context"],
        "rms_norm_eps": positive(meta, f"{name}.attention.layer_norm_rms_epsilon"),
        "rope_theta": positive(meta, f"{name}.rope.freq_base", 1e6 if name == "gemma3" else 10000.0),
        "attention_bias": "blk.0.attn_q.bias" in names,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _token_id(meta, "bos", n_tokens),
        "eos_token_id": _token_id(meta, "eos", n_tokens),
        "torch_dtype": "float32",
    }
    hf |= rope_config(name, sizes["head_dim"], _rope_tensors(reader), lambda *args: typed(meta, *args))
    for key, gguf_key in arch.extra.items():
        value = typed(meta, f"{name}.{gguf_key}", "a number", None)
        if value:  # 0 is llama.cpp's "none" for a sliding window
            hf[key] = value
    pooling = typed(meta, f"{name}.pooling_type", "an integer", None)
    if pooling in POOLING_TYPES:  # an embedding model's
        hf["pooling_type"] = POOLING_TYPES[pooling]
    if arch.model_type.startswith("gemma"):
        hf["query_pre_attn_scalar"] = gemma_query_scalar(name, sizes["n_layers"], sizes["d_model"],
                                                         sizes["n_heads"], sizes["head_dim"])
    return hf


def _rope_tensors(reader) -> dict[str, np.ndarray]:
    """The small tensors that hold rotary scaling, as fp32 vectors."""
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        if t.name in ROPE_TENSORS:
            try:
                tensors[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            except NotImplementedError:
                raise CheckpointError(f"GGUF tensor {t.name} has type {t.tensor_type.name}, which gguf cannot read")
            if not np.isfinite(tensors[t.name]).all():
                raise CheckpointError(f"GGUF tensor {t.name} holds values that are not finite")
    return tensors


def gguf_sizes(meta: dict, arch: str) -> dict[str, int]:
    """ModelConfig's sizes, each bounded by config.LIMITS before anything is allocated for it."""

    def size(field: str, key: str, default=_REQUIRED) -> int:
        return integer(meta, f"{arch}.{key}", 1, LIMITS[field], default)

    sizes = dict(d_model=size("d_model", "embedding_length"), n_layers=size("n_layers", "block_count"),
                 n_heads=size("n_heads", "attention.head_count"), d_mlp=size("d_mlp", "feed_forward_length"),
                 max_context=size("max_context", "context_length"))
    sizes["n_kv_heads"] = size("n_kv_heads", "attention.head_count_kv", sizes["n_heads"])
    sizes["head_dim"] = size("head_dim", "attention.key_length", sizes["d_model"] // sizes["n_heads"])
    tokens = token_list(meta) if "tokenizer.ggml.tokens" in meta else None  # inspect can do without
    sizes["vocab_size"] = size("vocab_size", "vocab_size", len(tokens) if tokens else _REQUIRED)
    return sizes


def expected_shapes(cfg: ModelConfig, arch: Arch) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name → its shape (Hugging Face order) for every tensor the config implies."""
    shapes = layout.canonical_shapes(cfg)
    names = ["token_embd.weight", "output_norm.weight", "output.weight",
             *(f"blk.{i}.{name}" for i in range(cfg.n_layers) for name in block_names(arch))]
    mapped = {name: layout.map_name(cfg.family, hf_tensor_name(arch, name)) for name in names}
    return {name: layout.stored_shape(m, shapes) for name, m in mapped.items() if shapes.keys() >= set(m.targets)}


def gguf_arch(meta: dict) -> Arch:
    return ARCHS[meta["general.architecture"]]  # checked by gguf_hf_config


def check_tensors(reader, cfg: ModelConfig, arch: Arch) -> None:
    """Every tensor is one the config implies, with the shape it implies, and none is missing
    (the rotary-scaling tensors were checked as the config was read); then every value and
    block scale is finite, so that nothing lmgen runs or writes from the file is NaN or infinite
    (its layout was checked as it was opened)."""
    _check_names_and_shapes(reader, cfg, arch)
    check_finite(reader)


def _check_names_and_shapes(reader, cfg: ModelConfig, arch: Arch) -> None:
    expected = expected_shapes(cfg, arch)
    for t in reader.tensors:
        if hf_tensor_name(arch, t.name) is None:  # a name no model has is an error of its own
            continue
        if t.name not in expected:
            raise CheckpointError(f"GGUF tensor {printable(t.name)} is not part of the model its metadata describes")
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        if shape != expected[t.name]:
            raise CheckpointError(f"GGUF tensor {t.name} has shape {shape}; the metadata implies {expected[t.name]}")
    missing = sorted(expected.keys() - {t.name for t in reader.tensors})
    if missing:
        raise CheckpointError(f"GGUF file lacks {len(missing)} tensor(s) its metadata implies, e.g. {missing[0]}")


def check_memory(reader, src: Path) -> None:
    """Refuse before dequantizing if the fp32 weights (held at once, for saving) would not fit."""
    require_memory(4 * sum(int(t.n_elements) for t in reader.tensors) + MEMORY_MARGIN, f"converting {src}")


def gguf_tensors(reader, cfg: ModelConfig, arch: Arch) -> dict:
    """HF name → fp32 numpy array for every weight in the file (call check_tensors first)."""
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        name = hf_tensor_name(arch, t.name)
        if name is None:
            continue
        try:
            array = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except NotImplementedError:
            raise CheckpointError(f"GGUF tensor {t.name} has type {t.tensor_type.name}, which gguf cannot read")
        array = array.reshape(tuple(int(n) for n in reversed(t.shape)))
        tensors[name] = np.ascontiguousarray(restore(arch, t.name, array, cfg.n_heads, cfg.n_kv_heads))
    return tensors


def convert_gguf(src: str | Path, out: str | Path, force: bool = False) -> ModelConfig:
    """Write an HF-layout directory for the GGUF file ``src`` into ``out`` (if non-empty: with ``force``).

    All is checked before anything is dequantized, and written into a staging directory that
    replaces ``out`` only when complete: a failure, or a second convert at once, leaves no half model.
    """
    from safetensors.numpy import save_file

    from lmgen.formats.hf_config import from_hf

    src, out = Path(src), Path(out)
    check_directory_target(out, force)  # before the GGUF file is read: a bad OUTDIR fails fast
    reader = open_gguf(src)
    meta = read_metadata(reader)
    hf = gguf_hf_config(reader, meta)
    cfg, arch = from_hf(hf), gguf_arch(meta)
    check_tensors(reader, cfg, arch)
    check_memory(reader, src)
    with staged_directory(out, force) as stage:
        write_small_files(stage, meta, hf, cfg)
        metadata = {"format": "pt", "source": src.name}
        save_file(gguf_tensors(reader, cfg, arch), str(stage / "model.safetensors"), metadata=metadata)
    return cfg


def write_small_files(directory: Path, meta: dict, hf: dict, cfg: ModelConfig) -> None:
    """config.json, tokenizer.json and tokenizer_config.json (the chat template) from the metadata."""
    from lmgen.formats.gguf import tokenizer as gguf_tokenizer

    tokenizer, tok_config = gguf_tokenizer.rebuild(meta), gguf_tokenizer.tokenizer_config(meta, cfg)
    (directory / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    write_json(directory / "tokenizer_config.json", tok_config)
    write_json(directory / "config.json", hf)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
