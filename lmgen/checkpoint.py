"""Load a checkpoint directory into a Decoder.

A checkpoint directory holds a config (Hugging Face ``config.json`` or lmgen's
``config.toml``), weights as ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) and usually a ``tokenizer.json``. Tensors are
read through safetensors (memory-mapped, never pickle), renamed to lmgen's
canonical names (``layout.py``), checked against the config, then fused into
the model's own parameters.

Only the functions that build tensors import torch; finding files and reading
headers does not.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from lmgen import layout
from lmgen.config import ModelConfig, load_hf_json, load_toml
from lmgen.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TO_SAFETENSORS = "convert it to model.safetensors"
PICKLE_FILES = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class CheckpointFiles:
    root: Path
    config: Path
    weights: tuple[Path, ...]
    tokenizer: Path | None


def locate(path: str | Path) -> CheckpointFiles:
    """Find config, weights and tokenizer in a checkpoint directory."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"model path {root} does not exist")
    if root.is_file() and root.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{root} is a pickle checkpoint, which lmgen refuses to load (it can run code); {TO_SAFETENSORS}")
    if not root.is_dir():
        raise CheckpointError(f"model path {root} is not a directory (expected config + model.safetensors + tokenizer.json)")
    config = next((root / n for n in ("config.json", "config.toml") if (root / n).is_file()), None)
    if config is None:
        raise CheckpointError(f"{root} has no config.json or config.toml")
    return CheckpointFiles(root, config, _weight_files(root), _optional(root / "tokenizer.json"))


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None


def _weight_files(root: Path) -> tuple[Path, ...]:
    if (root / SINGLE_FILE).is_file():
        return (root / SINGLE_FILE,)
    if (root / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read {root / INDEX_FILE}: {exc}") from None
        shards = tuple(root / name for name in sorted(set(weight_map.values())))
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"shard {shard.name} listed in {INDEX_FILE} is missing")
        return shards
    pickles = [n for n in PICKLE_FILES if (root / n).exists()]
    if pickles:
        raise CheckpointError(
            f"{root / pickles[0]} is a pickle checkpoint, which lmgen refuses to load (it can run code); "
            + TO_SAFETENSORS
        )
    raise CheckpointError(f"{root} has no {SINGLE_FILE} (or {INDEX_FILE})")


def read_config(files: CheckpointFiles) -> ModelConfig:
    if files.config.suffix == ".toml":
        return load_toml(files.config)
    return load_hf_json(files.config)


def safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name → {dtype, shape, data_offsets}, read from the header alone."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(size))
            f.seek(0, 2)
            data_len = f.tell() - 8 - size
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if end > data_len:
        raise CheckpointError(f"{path} is truncated: the header needs {end} bytes of data, the file has {data_len}")
    return header


def _check_and_map(files: CheckpointFiles, cfg: ModelConfig) -> dict[str, tuple[Path, str, layout.Mapped]]:
    """Map every stored tensor to canonical targets, checking names and shapes."""
    shapes = layout.canonical_shapes(cfg)
    plan: dict[str, tuple[Path, str, layout.Mapped]] = {}
    unexpected: list[str] = []
    for path in files.weights:
        for name, info in safetensors_header(path).items():
            mapped = layout.map_name(cfg.family, name)
            if mapped is layout.IGNORED:
                continue
            if mapped is None or any(t not in shapes for t in mapped.targets):
                if mapped and mapped.targets == ("head.linear.weight",) and cfg.tied_embeddings:
                    continue  # a tied head stored anyway: the embedding is the source of truth
                unexpected.append(name)
                continue
            expected, found = layout.stored_shape(mapped, shapes), tuple(info["shape"])
            if found != expected:
                raise CheckpointError(
                    f"tensor {name} in {path.name} has shape {_fmt(found)} but the config implies {_fmt(expected)}"
                )
            plan[name] = (path, name, mapped)
    if unexpected:
        raise CheckpointError(f"unexpected tensor(s) that the config does not describe: {_some(unexpected)}")
    covered = {t for _, _, m in plan.values() for t in m.targets}
    missing = [t for t in shapes if t not in covered]
    if missing:
        raise CheckpointError(f"checkpoint is missing tensor(s) the config needs: {_some(missing)} (lmgen names)")
    return plan


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_canonical(files: CheckpointFiles, cfg: ModelConfig, dtype, vector_dtype=None) -> dict:
    """Canonical name → tensor for every tensor the config needs: matrices in ``dtype``,
    vectors (norm weights, biases) in ``vector_dtype`` (default: the same)."""
    from safetensors import SafetensorError, safe_open

    plan = _check_and_map(files, cfg)
    shapes = layout.canonical_shapes(cfg)
    tensors = {}
    by_file: dict[Path, list[tuple[str, layout.Mapped]]] = {}
    for path, name, mapped in plan.values():
        by_file.setdefault(path, []).append((name, mapped))
    for path, entries in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for name, mapped in entries:
                    t = f.get_tensor(name)
                    if mapped.transpose:
                        t = t.t()
                    parts = t.split([shapes[target][0] for target in mapped.targets]) if len(mapped.targets) > 1 else (t,)
                    for target, part in zip(mapped.targets, parts):
                        target_dtype = dtype if part.dim() > 1 else (vector_dtype or dtype)
                        tensors[target] = part.to(target_dtype).contiguous()
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from None
    return tensors


def fuse(tensors: dict, cfg: ModelConfig) -> dict:
    """Canonical tensors → the Decoder's state dict (q/k/v and gate/up concatenated)."""
    import torch

    sd = dict(tensors)
    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        for kind in ("weight", "bias"):
            if f"{b}.attn.q.{kind}" in sd:
                sd[f"{b}.attn.qkv.{kind}"] = torch.cat([sd.pop(f"{b}.attn.{p}.{kind}") for p in "qkv"])
            if cfg.mlp == "swiglu" and f"{b}.mlp.gate.{kind}" in sd:
                sd[f"{b}.mlp.gate_up.{kind}"] = torch.cat([sd.pop(f"{b}.mlp.gate.{kind}"), sd.pop(f"{b}.mlp.up.{kind}")])
    if cfg.tied_embeddings:
        sd["head.linear.weight"] = sd["embed.weight"]
    return sd


def load_model(path: str | Path, dtype=None, device: str = "cpu", vector_dtype=None):
    """Build a Decoder from a checkpoint directory. Returns (model, config, files).

    Weight matrices are stored in ``dtype``; norm weights and biases in ``vector_dtype``,
    which also sets the dtype of the activations (default: ``dtype``).
    """
    import torch

    from lmgen.model import Decoder

    files = locate(path)
    cfg = read_config(files)
    dtype = dtype or torch.float32
    state = fuse(load_canonical(files, cfg, dtype, vector_dtype), cfg)
    with torch.device("meta"):
        model = Decoder(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.to(device).eval(), cfg, files
