"""Load a checkpoint directory into a Decoder.

A checkpoint directory holds a config (Hugging Face ``config.json`` or lmgen's
``config.toml``), weights as ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) and usually a ``tokenizer.json``. Every stored
tensor is mapped to lmgen's canonical names (``layout.py``) and checked against
the config from the safetensors headers alone, then mapped from the file into
the model's parameters (see ``read_state``). Pickle files are never loaded.

Only the functions that build tensors import torch; finding files and reading
headers does not.
"""

from __future__ import annotations

import math
import mmap
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmgen.config import layout
from lmgen.config.model_config import ModelConfig
from lmgen.errors import CheckpointError
from lmgen.formats.config_file import load_config_file
from lmgen.formats.files import read_json, regular_file
from lmgen.formats.safetensors_header import read_header
from lmgen.resources import require_memory

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
    return CheckpointFiles(root, find_config(root), _weight_files(root), _optional(root / "tokenizer.json"))


def gguf_file(path: Path) -> Path | None:
    """The GGUF file ``path`` names: itself, or the one .gguf in a directory without config.json
    (a checkpoint directory is a checkpoint, whatever else it holds)."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise CheckpointError(f"{path} holds {len(found)} GGUF files; name one with --model")
        return found[0] if found else None
    return None


def find_config(root: Path) -> Path:
    """config.json (Hugging Face) or config.toml (lmgen's own) in a directory."""
    config = next((root / n for n in ("config.json", "config.toml") if (root / n).exists()), None)
    if config is None:
        raise CheckpointError(f"{root} has no config.json or config.toml")
    return regular_file(config, "config")


def _optional(path: Path) -> Path | None:
    return regular_file(path, path.name) if path.exists() else None


def _weight_files(root: Path) -> tuple[Path, ...]:
    if (root / SINGLE_FILE).exists():
        return (root / SINGLE_FILE,)
    if (root / INDEX_FILE).exists():
        return _shards(root)
    pickles = [n for n in PICKLE_FILES if (root / n).exists()]
    if pickles:
        raise CheckpointError(
            f"{root / pickles[0]} is a pickle checkpoint, which lmgen refuses to load (it can run code); "
            + TO_SAFETENSORS
        )
    raise CheckpointError(f"{root} has no {SINGLE_FILE} (or {INDEX_FILE})")


def _shards(root: Path) -> tuple[Path, ...]:
    """The shard files an index names: plain file names in the model's own directory."""
    index = root / INDEX_FILE
    weight_map = read_json(index, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map must be an object mapping tensor names to shard files")
    for name in weight_map.values():
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise CheckpointError(f"{index} names the shard {name!r}; shards must be files in the model's directory")
    shards = tuple(root / name for name in sorted(set(weight_map.values())))
    for shard in shards:
        if not shard.exists():
            raise CheckpointError(f"shard {shard.name} listed in {INDEX_FILE} is missing")
    return shards


def read_config(files: CheckpointFiles) -> ModelConfig:
    return load_config_file(files.config)


def safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name → {dtype, shape, data_offsets}, read from the header alone."""
    return read_header(path)[0]


@dataclass(frozen=True)
class Stored:
    """One tensor in a safetensors file, and the canonical tensors it holds."""

    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int
    mapped: layout.Mapped


STORED_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}  # → torch dtype


def _check_and_map(files: CheckpointFiles, cfg: ModelConfig) -> list[Stored]:
    """Map every stored tensor to canonical targets, checking names, dtypes and shapes: each
    tensor the config implies is stored exactly once, in a dtype lmgen reads."""
    shapes = layout.canonical_shapes(cfg)
    plan: list[Stored] = []
    unexpected: list[str] = []
    for path in files.weights:
        header, data_start = read_header(path)
        for name, info in header.items():
            mapped = layout.map_name(cfg.family, name)
            if mapped is layout.IGNORED:
                continue
            if mapped is None or any(t not in shapes for t in mapped.targets):
                if mapped and all(t in layout.tied_aliases(cfg) for t in mapped.targets):
                    continue  # a tied head stored anyway: the embedding is the source of truth
                unexpected.append(name)
                continue
            expected, found = layout.stored_shape(mapped, shapes), tuple(info["shape"])
            if found != expected:
                raise CheckpointError(
                    f"tensor {name} in {path.name} has shape {_fmt(found)} but the config implies {_fmt(expected)}"
                )
            if info["dtype"] not in STORED_DTYPES:
                raise CheckpointError(f"tensor {name} has dtype {info['dtype']}; lmgen reads {', '.join(STORED_DTYPES)}")
            start, end = info["data_offsets"]
            plan.append(Stored(path, name, info["dtype"], found, data_start + start, end - start, mapped))
    if unexpected:
        raise CheckpointError(f"unexpected tensor(s) that the config does not describe: {_some(unexpected)}")
    targets = [t for stored in plan for t in stored.mapped.targets]
    covered = set(targets)
    if len(covered) < len(targets):
        twice = sorted(t for t, n in Counter(targets).items() if n > 1)
        raise CheckpointError(f"tensor(s) stored more than once (in several shards or under two names): {_some(twice)}")
    missing = [t for t in shapes if t not in covered]
    if missing:
        raise CheckpointError(f"checkpoint is missing tensor(s) the config needs: {_some(missing)} (lmgen names)")
    return plan


def stored_tensors(files: CheckpointFiles, cfg: ModelConfig) -> list[Stored]:
    """Every stored tensor, checked against the config as loading checks it, with where its bytes
    lie: for readers that take the bytes themselves, without torch (``lmgen quantize``)."""
    return _check_and_map(files, cfg)


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")




def read_state(files: CheckpointFiles, cfg: ModelConfig, dtype, vector_dtype=None, mapped: bool = True) -> dict:
    """The Decoder's state dict, mapped from the files wherever possible.

    Each file is memory-mapped copy-on-write. A tensor stored whole, untransposed and in
    the dtype it is wanted in (matrices ``dtype``, vectors ``vector_dtype``) is a view of the
    map: no copy, and no read before the first forward pass touches it. Tensors that must be
    converted, transposed or split, and all of them with ``mapped=False`` (for weights about
    to be replaced, such as by int8 copies), are copied out and the pages they came from
    released, so that loading needs no memory beyond the weights themselves.
    """
    plan = _check_and_map(files, cfg)
    require_memory(_copied_bytes(plan, dtype, vector_dtype or dtype, mapped), "loading the weights")
    shapes = layout.canonical_shapes(cfg)
    state: dict = {}
    for path in files.weights:
        data = _map_file(path)
        for stored in plan:
            if stored.path == path:
                _unpack(data, stored, state, shapes, dtype, vector_dtype or dtype, mapped)
    for alias, source in layout.tied_aliases(cfg).items():
        state[alias] = state[source]
    return state


def _copied_bytes(plan: list[Stored], dtype, vector_dtype, mapped: bool) -> int:
    """An upper bound on the memory _unpack allocates: every tensor it cannot map is copied."""
    total = 0
    for stored in plan:
        want = dtype if len(stored.shape) > 1 else vector_dtype
        as_stored = STORED_DTYPES[stored.dtype] == str(want).removeprefix("torch.")
        if not mapped or not as_stored or stored.mapped.transpose or len(stored.mapped.targets) > 1:
            total += math.prod(stored.shape) * want.itemsize
    return total


def _map_file(path: Path):
    """The file's bytes: a private (copy-on-write) map, or read into memory where mapping fails."""
    try:
        with open(path, "rb") as f:
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError):
                return bytearray(f.read())
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _unpack(data, stored: Stored, state: dict, shapes: dict, dtype, vector_dtype, mapped: bool) -> None:
    import torch

    source_dtype = getattr(torch, STORED_DTYPES[stored.dtype])
    count = math.prod(stored.shape)
    if count * source_dtype.itemsize != stored.nbytes:
        raise CheckpointError(f"tensor {stored.name} has {stored.nbytes} bytes of data, not the {count} values its shape needs")
    tensor = torch.frombuffer(data, dtype=source_dtype, count=count, offset=stored.offset).view(stored.shape)
    if stored.mapped.transpose:
        tensor = tensor.t()
    targets = stored.mapped.targets
    parts = tensor.split([shapes[t][0] for t in targets]) if len(targets) > 1 else (tensor,)
    copied = False
    for target, part in zip(targets, parts):
        want = dtype if part.dim() > 1 else vector_dtype
        if mapped and part.dtype == want and part.is_contiguous():
            state[target] = part  # a view of the mapped file
        else:
            state[target] = torch.empty(part.shape, dtype=want).copy_(part)
            copied = True
    if copied:
        _release(data, stored.offset, stored.nbytes)


def _release(data, offset: int, nbytes: int) -> None:
    """Drop the mapped pages wholly inside [offset, offset + nbytes): copied out, never read again."""
    if not isinstance(data, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        data.madvise(mmap.MADV_DONTNEED, start, end - start)
