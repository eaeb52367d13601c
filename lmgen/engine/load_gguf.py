"""Run a GGUF file as it is: ``--model FILE.gguf`` (or a directory holding one).

Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K tensors are used as stored: their blocks, the
same bits, are read from the mapped file and packed for the native kernels (``quant.pack``: 16
rows interleaved, as llama.cpp repacks for its CPU kernels), one tensor at a time, and the
file's pages handed back once packed — no float copy is ever made. (llama's q/k rows, which
llama.cpp's converter interleaved, are put back in order first: also a copy of the blocks.)
F32, F16 and BF16 tensors are read as fp32. Other formats (Q2_K, Q3_K, the IQ and ternary
ones) are dequantized with the ``gguf`` library one tensor at a time and re-quantized to Q8_0,
and the error this adds is reported. The config, tokenizer, chat template and tensor table come from the file's
metadata, read once into lmgen's cache (``gguf_index``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmgen.config import layout
from lmgen.engine import gguf_packed
from lmgen.errors import CheckpointError
from lmgen.formats.config_file import load_config_file
from lmgen.formats.gguf.arch import ARCHS, hf_tensor_name, restore
from lmgen.formats.gguf.index import gguf_index, read_table
from lmgen.model import quant
from lmgen.model.linear import drop_pages, set_block_weight

# ggml's type numbers (GGMLQuantizationType), so that a file of these formats loads without
# importing the gguf library (~0.1 s): it is needed only to dequantize other formats.
AS_STORED = {8: "q8_0", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 12: "q4_k", 13: "q5_k", 14: "q6_k"}
FLOATS = (0, 1, 30)  # F32, F16, BF16
REQUANTIZED = quant.FORMATS["q8_0"]  # what other quantized formats become


@dataclass
class Requantized:
    """Tensors re-quantized to Q8_0, and the error that added (|Δw| against their dequantization)."""

    tensors: dict[str, str] = field(default_factory=dict)  # GGUF name → its stored format
    abs_error: float = 0.0
    abs_weight: float = 0.0
    values: int = 0

    def add(self, name: str, kind: str, before: torch.Tensor, after: torch.Tensor) -> None:
        self.tensors[name] = kind
        self.abs_error += float((after - before).abs().sum(dtype=torch.float64))
        self.abs_weight += float(before.abs().sum(dtype=torch.float64))
        self.values += before.numel()

    def summary(self) -> str:
        kinds = ", ".join(sorted(set(self.tensors.values())))
        return (f"{len(self.tensors)} tensor(s) in {kinds} re-quantized to q8_0: mean |Δw| "
                f"{self.abs_error / self.values:.3g} ({100 * self.abs_error / max(self.abs_weight, 1e-30):.2f}% of mean |w|)")


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over the read-only map, without torch's warning that it is not writable (nothing
    ever writes weights, and lmgen's stderr carries only its own lines); other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return torch.from_numpy(array)


def _stored(data: np.ndarray, t: dict) -> np.ndarray:
    """A tensor's bytes as (rows, bytes per row): what the block formats and gguf's dequantize take."""
    shape = t["shape"]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return data[t["offset"] : t["offset"] + t["nbytes"]].reshape(rows, -1)


def read_tensors(src: Path, tensors: list[dict], cfg, arch, packed: dict | None = None
                 ) -> tuple[dict, dict, Requantized]:
    """(canonical name → fp32 tensor, canonical name → (blocks, BlockFormat), what was
    re-quantized); tensors already in ``packed`` (the cache's) are left out."""
    data = np.memmap(src, dtype=np.uint8, mode="r")
    shapes = layout.canonical_shapes(cfg)
    floats, blocks, requantized = {}, {}, Requantized()
    for t in tensors:
        hf = hf_tensor_name(arch, t["name"])
        mapped = None if hf is None else layout.map_name(cfg.family, hf)
        if mapped is None or mapped is layout.IGNORED:
            continue
        if packed is not None and all(target in packed for target in mapped.targets):
            continue
        kind, shape = AS_STORED.get(t["type"]), tuple(t["shape"])
        if kind and len(shape) == 2 and not mapped.transpose:
            fmt, stored = quant.ALL_FORMATS[kind], _stored(data, t)
            raw = restore(arch, t["name"], stored, cfg.n_heads, cfg.n_kv_heads)
            blocks.update((target, (quant.pack(part, fmt), fmt)) for target, part in
                          _split(_read_only_tensor(raw), mapped, shapes))
            drop_pages(_read_only_tensor(stored))
            continue
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        try:
            qtype = GGMLQuantizationType(t["type"])
            array = dequantize(_stored(data, t), qtype).astype(np.float32, copy=False).reshape(shape)
        except (NotImplementedError, ValueError):
            name = GGMLQuantizationType(t["type"]).name if t["type"] in GGMLQuantizationType._value2member_map_ \
                else t["type"]
            raise CheckpointError(f"GGUF tensor {t['name']} has type {name}, which lmgen cannot read") from None
        tensor = _read_only_tensor(np.ascontiguousarray(restore(arch, t["name"], array, cfg.n_heads, cfg.n_kv_heads)))
        if mapped.transpose:
            tensor = tensor.t().contiguous()
        for target, part in _split(tensor, mapped, shapes):
            if qtype in FLOATS or part.dim() < 2 or part.shape[1] % quant.BLOCK:
                floats[target] = part
            else:
                stored = quant.quantize(part, REQUANTIZED)
                requantized.add(t["name"], qtype.name, part, quant.dequantize(stored, REQUANTIZED))
                blocks[target] = (quant.pack(stored, REQUANTIZED), REQUANTIZED)
    return floats, blocks, requantized


def _split(tensor: torch.Tensor, mapped, shapes: dict) -> list[tuple[str, torch.Tensor]]:
    """The canonical tensors a stored one holds (Phi-3's fused q/k/v and gate/up: row ranges)."""
    if len(mapped.targets) == 1:
        return [(mapped.targets[0], tensor)]
    return list(zip(mapped.targets, tensor.split([shapes[t][0] for t in mapped.targets])))


def load_gguf(src: Path):
    """(Decoder, config, directory of its small files, re-quantization report or None) for a GGUF
    file, its quantized tensors as stored."""
    from lmgen.model.decoder import Decoder

    root = gguf_index(src)
    cfg = load_config_file(root / "config.json")
    architecture, tensors = read_table(root, src)
    cached = gguf_packed.read(root)  # the blocks packed by an earlier load, mapped
    floats, blocks, requantized = read_tensors(src, tensors, cfg, ARCHS[architecture], cached and cached[0])
    if cached:
        blocks, requantized = cached[0], Requantized(**cached[1])
    else:
        gguf_packed.write(root, blocks, dataclasses.asdict(requantized))
    with torch.device("meta"):
        model = Decoder(cfg)
    for name, (packed, fmt) in blocks.items():
        set_block_weight(model, name, packed, fmt, floats.pop(name.removesuffix("weight") + "bias", None))
    model.load_state_dict(floats, strict=False, assign=True)
    tied = layout.tied_aliases(cfg)
    if "embed.weight" in blocks and "head.linear.weight" in tied:
        set_block_weight(model, "head.linear.weight", *blocks["embed.weight"], None)
    elif tied:
        model.tie_weights()
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # check_tensors saw every tensor the config implies: this would be lmgen's bug
        raise RuntimeError(f"GGUF tensors not placed: {left[:3]}")
    return model.eval(), cfg, root, requantized if requantized.tensors else None
