"""A checkpoint directory as llama.cpp's converter (``convert_hf_to_gguf.py``) would write it to
GGUF: the architecture's metadata, the tokenizer (``vocab.py``), and each tensor under its GGUF
name with what the converter does to it — the inverse of ``arch.restore``.

Only what lmgen's GGUF import reads back to the same model is written: the architecture names
come from ``arch.py``'s own tables (so writing and importing cannot disagree on a name), and the
metadata is read back through the import's ``gguf_hf_config`` before a tensor is written: a model
whose config GGUF cannot express (a Qwen2 sliding window, dynamic rotary scaling) is refused, not
written wrong. Families: llama (Q and K rows permuted, rotary scaling linear, yarn or llama3 as the
``rope_freqs`` tensor), qwen2, qwen3. The others are refused in one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np

from lmgen.config import layout
from lmgen.config.model_config import ModelConfig
from lmgen.errors import CheckpointError, InputError
from lmgen.formats.checkpoint import CheckpointFiles, Stored, read_config, stored_tensors
from lmgen.formats.gguf.arch import ARCHS, POOLING_TYPES, Arch, hf_tensor_name

WRITABLE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # family → GGUF architecture
ROPE_WRITABLE = (None, "linear", "yarn", "llama3")


@dataclass(frozen=True)
class Planned:
    """One tensor to write: its GGUF name, shape (rows, columns), and its fp32 values as llama.cpp
    stores them (``load`` is called once, when the tensor is written)."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


def gguf_arch_name(cfg: ModelConfig) -> str:
    """The GGUF architecture a family is written as; other families are refused (exit 2)."""
    if cfg.family not in WRITABLE:
        raise InputError(f"lmgen quantize writes the {', '.join(WRITABLE)} families; this model is {cfg.family}")
    return WRITABLE[cfg.family]


def checkpoint_plan(files: CheckpointFiles, ftype: int) -> tuple[object, list[Planned]]:
    """A ``GGUFWriter`` holding the checkpoint's metadata, and its tensors to write; the metadata
    checked by reading it back as lmgen's import does."""
    from lmgen.formats.gguf.vocab import add_tokenizer

    cfg = read_config(files)
    name = gguf_arch_name(cfg)
    plan = [*rope_tensors(cfg), *weight_tensors(files, cfg, ARCHS[name])]
    writer = new_writer(name)
    writer.add_type("model")
    writer.add_name(files.root.resolve().name)  # the converter's fallback when no model card names it
    add_architecture(writer, cfg, name, ftype)
    add_tokenizer(writer, files.root, cfg)
    check_read_back(writer, cfg, plan)
    return writer, plan


def new_writer(arch_name: str):
    """A ``GGUFWriter`` (no file yet) that also writes empty arrays, which the GGUF format allows
    and the library refuses (it cannot guess their item type): a byte-level vocabulary has no
    merges, yet llama.cpp requires ``tokenizer.ggml.merges``."""
    from gguf import GGUFValueType, GGUFWriter

    class Writer(GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(None, arch=arch_name)


def add_architecture(writer, cfg: ModelConfig, name: str, ftype: int) -> None:
    """TextModel.set_gguf_parameters, and LlamaModel's vocabulary size and rotary dimensions."""
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_context)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_mlp)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    add_rope_scaling(writer, cfg)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_file_type(ftype)
    if cfg.pooling is not None:  # an embedding model's (sentence-transformers' pooling, as the converter writes it)
        from gguf import PoolingType

        writer.add_pooling_type(PoolingType({kind: n for n, kind in POOLING_TYPES.items()}[cfg.pooling]))
    if name == "llama":
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_rope_dimension_count(cfg.rotary_dim)


def add_rope_scaling(writer, cfg: ModelConfig) -> None:
    """Linear and yarn scaling as metadata keys (llama3's is a tensor: ``rope_tensors``)."""
    from gguf import RopeScalingType

    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type")
    if kind not in ("linear", "yarn"):
        return
    writer.add_rope_scaling_type(RopeScalingType(kind))
    writer.add_rope_scaling_factor(scaling.get("factor") or  # yarn's default, as lmgen reads it
                                   cfg.max_context / scaling["original_max_position_embeddings"])
    if kind == "yarn":
        writer.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
        for key, add in (("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if scaling.get(key) is not None:
                add(scaling[key])


def rope_tensors(cfg: ModelConfig) -> list[Planned]:
    """Llama 3's scaling as the converter stores it: ``rope_freqs``, each frequency's divisor
    (LlamaModel.generate_extra_tensors). Other scalings are metadata, or refused."""
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type") not in ROPE_WRITABLE:
        raise InputError(f"rotary scaling {scaling['rope_type']!r} has no GGUF form lmgen can write "
                         f"(it writes {', '.join(str(k) for k in ROPE_WRITABLE[1:])} and none)")
    if scaling.get("rope_type") != "llama3":
        return []
    freqs = llama3_rope_freqs(scaling, cfg.head_dim, cfg.rope_theta)
    return [Planned("rope_freqs.weight", freqs.shape, lambda: freqs)]


def llama3_rope_freqs(scaling: dict, head_dim: int, theta: float) -> np.ndarray:
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    divisors = []
    for freq in 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < context / high:
            divisors.append(1.0)
        elif wavelen > context / low:
            divisors.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def weight_tensors(files: CheckpointFiles, cfg: ModelConfig, arch: Arch) -> list[Planned]:
    """Each stored weight under its GGUF name (the names ``arch.py`` imports back), as llama.cpp stores it."""
    names = gguf_names(cfg, arch)
    plan = []
    for stored in stored_tensors(files, cfg):
        (target,) = stored.mapped.targets  # the writable families store no fused or transposed tensors
        name = names[target]
        plan.append(Planned(name, stored.shape, _loader(stored, arch, name, cfg)))
    return plan


def gguf_names(cfg: ModelConfig, arch: Arch) -> dict[str, str]:
    """lmgen's canonical tensor name → its GGUF name: arch.py's map from GGUF names, inverted."""
    from lmgen.formats.gguf.reader import expected_shapes

    names = {}
    for gguf_name in expected_shapes(cfg, arch):
        mapped = layout.map_name(cfg.family, hf_tensor_name(arch, gguf_name))
        names |= {target: gguf_name for target in mapped.targets}
    return names


def _loader(stored: Stored, arch: Arch, name: str, cfg: ModelConfig) -> Callable[[], np.ndarray]:
    return lambda: prepare(arch, name, read_stored(stored), cfg.n_heads, cfg.n_kv_heads)


def prepare(arch: Arch, gguf_name: str, array: np.ndarray, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to one tensor: the inverse of ``arch.restore``."""
    if arch.permuted_qk and re.search(r"\.attn_[qk]\.(weight|bias)$", gguf_name):
        return permute_rows(array, n_heads if ".attn_q." in gguf_name else n_kv_heads)
    if arch.norm_shift and gguf_name.endswith("norm.weight"):
        return array + np.float32(arch.norm_shift)
    return array


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaving of the rotary halves in Q/K rows (LlamaModel.permute), per head."""
    half = weight.shape[0] // n_heads // 2
    return np.ascontiguousarray(weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2)
                                .reshape(weight.shape))


NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def read_stored(stored: Stored) -> np.ndarray:
    """A stored tensor's values as fp32, read from its file (bf16 widened bit for bit)."""
    dtype = np.dtype(NUMPY_DTYPES[stored.dtype])
    count = math.prod(stored.shape)
    if count * dtype.itemsize != stored.nbytes:
        raise CheckpointError(f"tensor {stored.name} has {stored.nbytes} bytes of data, not the {count} values "
                              "its shape needs")
    try:
        with open(stored.path, "rb") as f:
            f.seek(stored.offset)
            raw = np.fromfile(f, dtype, count)
    except OSError as exc:
        raise CheckpointError(f"cannot read tensor {stored.name} from {stored.path}: {exc.strerror or exc}") from None
    if raw.size != count:
        raise CheckpointError(f"tensor {stored.name} runs past the end of {stored.path}")
    if stored.dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(stored.shape)
    with np.errstate(over="ignore"):  # an F64 beyond fp32's range: refused as not finite
        return raw.astype(np.float32, copy=False).reshape(stored.shape)


def check_read_back(writer, cfg: ModelConfig, plan: list[Planned]) -> None:
    """Read the metadata as lmgen's GGUF import will (``gguf_hf_config``) and require the same
    config: what the architecture's keys cannot express is refused before anything is written."""
    from lmgen.formats.gguf.reader import gguf_hf_config
    from lmgen.formats.hf_config import from_hf

    from gguf import GGMLQuantizationType

    meta = {key: field.value for key, field in writer.kv_data[0].items()}
    tensors = [SimpleNamespace(name=p.name, data=p.load() if p.name.startswith("rope_") else None,
                               tensor_type=GGMLQuantizationType.F32) for p in plan]
    back = from_hf(gguf_hf_config(SimpleNamespace(tensors=tensors), meta))
    for field, value in cfg.to_dict().items():
        if field not in ("bos_token_id", "eos_token_ids") and not _same(value, getattr(back, field)):
            raise InputError(f"GGUF's {meta['general.architecture']} metadata cannot express this model's "
                             f"{field} ({value!r}; it would read back as {getattr(back, field)!r})")


def _same(a, b) -> bool:
    """Equal, floats within fp32's rounding (GGUF stores them as fp32)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b
