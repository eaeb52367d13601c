"""What is inside a checkpoint, from its config and tensor headers alone.

No torch and no weights read: every count is a sum of the shapes in the
safetensors (or GGUF) headers, grouped by part of the model, so the totals are
the sums of the tensor sizes by construction. With tied embeddings the LM head
*is* the embedding matrix: it is counted once, under the token embedding.

Accepts a checkpoint directory, a ``.safetensors`` file (its directory's
config is used), a ``.gguf`` file, or a TOML config (counts from the config).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

from lmgen.config import layout
from lmgen.config.model_config import ModelConfig
from lmgen.errors import CheckpointError
from lmgen.formats.checkpoint import find_config, gguf_file, locate, read_config, safetensors_header
from lmgen.formats.config_file import load_config_file

PARTS = ("token_embedding", "position_embedding", "attention", "mlp", "norms", "head")


@dataclass(frozen=True)
class TensorInfo:
    name: str  # as stored in the file
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    role: str | None  # the part of the model this tensor is, or None (a buffer, an unknown name)
    tied: bool = False  # a head tensor stored although the head is tied: not counted

    @property
    def part(self) -> str | None:
        """The part this tensor's parameters are counted under (None: not counted)."""
        return None if self.tied else self.role

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def part_of(canonical: str) -> str:
    if canonical.startswith("embed."):
        return "token_embedding"
    if canonical.startswith("pos_embed."):
        return "position_embedding"
    if "norm." in canonical:
        return "norms"
    if ".attn." in canonical:
        return "attention"
    if ".mlp." in canonical:
        return "mlp"
    return "head"


def tensor_info(cfg: ModelConfig, name: str, hf_name: str, shape, dtype: str, nbytes: int) -> TensorInfo:
    mapped = layout.map_name(cfg.family, hf_name) if hf_name is not None else None  # None: rotary factors
    if mapped is None or mapped is layout.IGNORED:
        return TensorInfo(name, tuple(shape), dtype, nbytes, None)
    tied = all(t in layout.tied_aliases(cfg) for t in mapped.targets)
    return TensorInfo(name, tuple(shape), dtype, nbytes, part_of(mapped.targets[0]), tied=tied)


def _safetensors_tensors(cfg: ModelConfig, files: tuple[Path, ...]) -> list[TensorInfo]:
    tensors = []
    for path in files:
        for name, info in safetensors_header(path).items():
            start, end = info["data_offsets"]
            tensors.append(tensor_info(cfg, name, name, info["shape"], info["dtype"], end - start))
    return tensors


def _config_tensors(cfg: ModelConfig) -> list[TensorInfo]:
    """The tensors a config implies (lmgen's canonical names, fp32), for a bare config."""
    return [
        TensorInfo(name, shape, "F32", 4 * math.prod(shape), part_of(name))
        for name, shape in layout.canonical_shapes(cfg).items()
    ]


def _gguf(path: Path) -> tuple[ModelConfig, list[TensorInfo]]:
    """From lmgen's index of the file (read once, kept in the cache: the header of a large
    vocabulary takes seconds to parse)."""
    from gguf import GGMLQuantizationType

    from lmgen.formats.gguf.arch import ARCHS, hf_tensor_name
    from lmgen.formats.gguf.index import gguf_index, read_table

    root = gguf_index(path)
    cfg = load_config_file(root / "config.json")
    architecture, table = read_table(root, path)
    arch = ARCHS[architecture]
    tensors = [tensor_info(cfg, t["name"], hf_tensor_name(arch, t["name"]), t["shape"],
                           GGMLQuantizationType(t["type"]).name, t["nbytes"]) for t in table]
    return cfg, tensors


def load_source(path: str | Path) -> tuple[str, ModelConfig, list[TensorInfo], str]:
    """(what was read, config, tensors, kind) for any path inspect accepts."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir() and gguf_file(path) is not None:  # a directory holding one GGUF file (and no config)
        path = gguf_file(path)
    if path.is_dir():
        files = locate(path)
        cfg = read_config(files)
        return str(path), cfg, _safetensors_tensors(cfg, files.weights), "safetensors"
    if path.suffix == ".gguf":
        cfg, tensors = _gguf(path)
        return str(path), cfg, tensors, "gguf"
    if path.suffix in (".toml", ".json"):
        cfg = load_config_file(path)
        return str(path), cfg, _config_tensors(cfg), "config"
    if path.suffix == ".safetensors":
        sibling = load_config_file(find_config(path.parent))
        return str(path), sibling, _safetensors_tensors(sibling, (path,)), "safetensors"
    raise CheckpointError(
        f"{path} is not something inspect reads (a checkpoint directory, .safetensors, .gguf or .toml config)"
    )


def report(path: str | Path, tensor_glob: str | None = None, stats: bool = False) -> dict:
    """Everything ``lmgen inspect`` shows, as plain data (with ``stats``, the bytes read per token)."""
    source, cfg, tensors, kind = load_source(path)
    counted = [t for t in tensors if t.part is not None]
    parts = {part: sum(t.numel for t in counted if t.part == part) for part in PARTS}
    total = sum(parts.values())
    head_params = cfg.d_model * cfg.vocab_size
    tied = "head.linear.weight" in layout.tied_aliases(cfg)
    head_stored = any(t.role == "head" for t in tensors)
    kv_per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim
    info = {
        "path": source,
        "source": kind,
        "family": cfg.family,
        "architecture": {
            "d_model": cfg.d_model,
            "layers": cfg.n_layers,
            "heads": cfg.n_heads,
            "kv_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "mlp_width": cfg.d_mlp,
            "mlp": cfg.mlp,
            "norm": cfg.norm,
            "positions": cfg.positions,
            "context_length": cfg.max_context,
            "vocab_size": cfg.vocab_size,
        },
        "lm_head": {
            "shape": [cfg.d_model, cfg.vocab_size],
            "tied_in_config": tied,
            "separate_tensor_stored": head_stored,
            "parameters": head_params,
            "share_of_model": head_params / total if total else 0.0,
        },
        "parameters": {**parts, "total": total, "tied_counted_once": tied},
        "memory_bytes": {
            "stored": sum(t.nbytes for t in counted),
            "stored_dtypes": sorted({t.dtype for t in counted}),
            "fp32": 4 * total,
            "bf16": 2 * total,
            "q8": quantized_bytes(counted, "q8_0", "q8_0"),
            "q4": quantized_bytes(counted, "q4_1", "q8_0"),
        },
        "formats": formats(counted),
        "bits_per_weight": bits_per_weight(sum(t.nbytes for t in counted), total),
        "kv_cache_bytes_per_token": {"fp32": 4 * kv_per_token, "bf16": 2 * kv_per_token},
        "features": features(cfg),
        "config": cfg.to_dict(),
    }
    if stats:
        info["bytes_read_per_token"] = bytes_read_per_token(cfg, counted)
    if tensor_glob is not None:
        info["tensor_match"] = {"glob": tensor_glob, "example_name": tensors[0].name if tensors else None}
        info["tensors"] = [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes, "part": t.part}
            for t in tensors
            if fnmatch.fnmatchcase(t.name, tensor_glob)
        ]
    return info


BLOCK_BYTES = {"q8_0": 34, "q4_1": 20, "q4_0": 18}  # bytes per block of 32 values
PACKED_ROWS = 16  # quant.pack interleaves rows in groups of 16, the last padded with zero rows


def quantized_bytes(counted: list[TensorInfo], projections: str, embeddings: str) -> int:
    """The weights' bytes under ``--dtype`` q8 or q4, as ``quantize_blocks`` makes them: each
    projection's matrix in blocks of ``projections``, the token embedding and an untied LM head in
    ``embeddings`` (rows packed in groups); norms, biases and position embeddings stay fp32."""
    def blocks(t: TensorInfo, fmt: str) -> int:
        rows, width = t.shape
        return -(-rows // PACKED_ROWS) * PACKED_ROWS * width // 32 * BLOCK_BYTES[fmt]

    def size(t: TensorInfo) -> int:
        if t.part in ("token_embedding", "head"):
            return blocks(t, embeddings)
        if t.part in ("attention", "mlp") and len(t.shape) == 2:
            return blocks(t, projections)
        return 4 * t.numel

    return sum(size(t) for t in counted)


def bits_per_weight(nbytes: int, parameters: int) -> float:
    return 8 * nbytes / parameters if parameters else 0.0


def formats(counted: list[TensorInfo]) -> dict[str, dict]:
    """Each stored format (a dtype, or a GGUF block format: Q8_0, Q4_K, ...) with its tensors,
    parameters, bytes and bits per weight: what a file of mixed formats really costs."""
    out = {}
    for t in counted:
        entry = out.setdefault(t.dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["parameters"] += t.numel
        entry["bytes"] += t.nbytes
    for entry in out.values():
        entry["bits_per_weight"] = bits_per_weight(entry["bytes"], entry["parameters"])
    return dict(sorted(out.items()))


def bytes_read_per_token(cfg: ModelConfig, counted: list[TensorInfo]) -> dict:
    """The weights one decode step reads, as stored: decoding is bound by them. Every tensor but
    the embeddings, of which a token reads one row (left out, as the model's own count leaves
    it) — unless the LM head is tied to the token embedding, which the head then reads whole."""
    tied = "head.linear.weight" in layout.tied_aliases(cfg)
    read = [t for t in counted
            if t.part not in ("token_embedding", "position_embedding") or (tied and t.part == "token_embedding")]
    by_format = {}
    for t in read:
        by_format[t.dtype] = by_format.get(t.dtype, 0) + t.nbytes
    return {"total": sum(by_format.values()), "formats": dict(sorted(by_format.items())),
            "embedding_read_whole": tied}


def _layers(layers: list[int], n_layers: int) -> str:
    shown = ", ".join(map(str, layers[:8])) + (", …" if len(layers) > 8 else "")
    return f"{len(layers)} of {n_layers} layers ({shown})"


def features(cfg: ModelConfig) -> dict[str, str]:
    """What sets this model apart from a plain pre-norm Llama, one line each (empty: nothing)."""
    out = {}
    offset = f" scaled by ({cfg.norm_offset:g} + weight)" if cfg.norm_offset else ""
    placement = {"pre": "before each sublayer", "sandwich": "before and after each sublayer",
                 "post": "after each sublayer (on its output)"}[cfg.norm_placement]
    out["norms"] = f"{cfg.norm}{offset}, {placement}"
    if cfg.qk_norm:
        out["q/k norm"] = {"head": "RMSNorm of each query and key head",
                           "projection": "RMSNorm of the whole query and key projections"}[cfg.qk_norm]
    if cfg.attn_scale is not None and not math.isclose(cfg.attn_scale, cfg.head_dim**-0.5):
        out["attention scale"] = f"{cfg.attn_scale:.6g} (not 1/sqrt(head_dim) = {cfg.head_dim ** -0.5:.6g})"
    caps = [f"{name} {value:g}" for name, value in (("attention scores", cfg.attn_softcap),
                                                    ("final logits", cfg.logit_softcap)) if value]
    if caps:
        out["soft-capping"] = ", ".join(caps)
    if cfg.sliding_window is not None:
        sliding = [i for i in range(cfg.n_layers) if cfg.layer_window(i)]
        out["sliding window"] = f"{cfg.sliding_window} tokens on {_layers(sliding, cfg.n_layers)}; full attention elsewhere"
    if cfg.positions == "rope":
        rope = f"theta {cfg.rope_theta:g}"
        if cfg.rope_dim is not None:
            rope += f", rotating {cfg.rope_dim} of {cfg.head_dim} dims per head"
        if cfg.rope_scaling:
            params = {k: v for k, v in cfg.rope_scaling.items() if k != "rope_type" and not isinstance(v, list)}
            rope += f"; {cfg.rope_scaling['rope_type']} scaling (" + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()) + ")"
        if cfg.local_rope_theta is not None:
            rope += f"; sliding layers theta {cfg.local_rope_theta:g}, unscaled"
        if cfg.nope_layers:
            rope += f"; none on {_layers(cfg.nope_layers, cfg.n_layers)}"
        out["rotary positions"] = rope
    if cfg.embed_scale != 1.0:
        out["embedding scale"] = f"× {cfg.embed_scale:.6g}"
    return out
