"""``lmgen quantize``: a checkpoint directory or a GGUF file written as a block-quantized GGUF
file that llama.cpp and ollama run, each block's bytes those of the ``gguf`` library's quantizers.

Which tensor takes which type follows llama.cpp's ``llama-quantize`` (``src/llama-quant.cpp``,
``tensor_allows_quantization``, ``llama_tensor_get_type_impl``, ``tensor_type_fallback``):

- 1-D tensors (norms, biases, rotary factors) and ``*_norm.weight`` stay F32, as the converter
  writes them: they are tiny, and llama.cpp's kernels take them as F32.
- The LM head (``output.weight``, or the token embedding when the head is tied to it) is Q8_0.
  llama.cpp gives it Q6_K when its rows are a multiple of 256, else Q8_0 (SmolLM2's 576: Q8_0);
  the ``gguf`` library cannot write Q6_K, so lmgen keeps Q8_0's extra bits there.
- Every other matrix takes the type asked for. A row that is not a whole number of blocks of 32
  cannot be quantized: llama.cpp stops there ("no tensor type fallback is defined"); lmgen writes
  that tensor as F16, llama.cpp's own last resort for such rows.

Nothing is left half-written: the header (metadata and tensor table, from headers alone) goes to a
file staged beside OUT, then each tensor is read, checked finite, quantized and appended one at a
time (memory: one tensor), and the file is renamed into place only when complete.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFValueType, LlamaFileType
from gguf.quants import dequantize
from gguf.quants import quantize as gguf_quantize

from lmgen.errors import CheckpointError, InputError
from lmgen.formats.files import check_file_target, staged_file
from lmgen.formats.gguf.writer import Planned

TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # --type: the block formats the gguf library writes
BLOCK = 32  # their block size
F16_MAX = 65504.0
SKIPPED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


@dataclass(frozen=True)
class Summary:
    """What was written, for the one line the command prints."""

    path: Path
    qtype: str
    types: Counter  # tensors by GGML type name
    weights: int
    tensor_bytes: int
    file_bytes: int

    def line(self) -> str:
        types = ", ".join(f"{n} {t.lower()}" for t, n in self.types.most_common())
        bits = 8 * self.tensor_bytes / max(self.weights, 1)
        return (f"wrote {self.path} ({self.qtype}): {sum(self.types.values())} tensors ({types}), "
                f"{bits:.2f} bits per weight, {self.file_bytes / 1e6:.1f} MB")


def parse_type(name: str):
    """--type's GGML type, or an InputError (exit 2) listing the choices."""
    if name.lower() not in TYPES:
        raise InputError(f"unknown --type {name!r} (choose from {', '.join(TYPES)})")
    return GGMLQuantizationType[name.upper()]


def file_type(qtype) -> int:
    """general.file_type: llama.cpp's LLAMA_FTYPE_MOSTLY_* for the type asked for."""
    return LlamaFileType[f"MOSTLY_{qtype.name}"]


def tensor_type(name: str, shape: tuple[int, ...], base, tied: bool):
    """llama-quantize's type for one tensor of a file quantized to ``base`` (module docstring)."""
    T = GGMLQuantizationType
    if len(shape) < 2 or not name.endswith("weight") or name.endswith("_norm.weight"):
        return T.F32
    if shape[-1] % BLOCK:
        return T.F16
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return T.Q8_0
    return base


def quantize(src: str | Path, out: str | Path, type_name: str, force: bool = False) -> Summary:
    """Write ``src`` (a checkpoint directory or a GGUF file) to ``out`` as a GGUF file of ``type_name``."""
    from lmgen.formats.gguf.vocab import quiet_gguf

    base = parse_type(type_name)
    check_file_target(Path(out), force)  # before SRC is read: a bad OUT fails fast
    with quiet_gguf():
        writer, plan = source_plan(Path(src), file_type(base))
        tied = all(p.name != "output.weight" for p in plan)
        typed = [(p, tensor_type(p.name, p.shape, base, tied)) for p in plan]
        with staged_file(Path(out), force) as stage:
            write(writer, typed, stage)
            size = stage.stat().st_size
    return Summary(Path(out), base.name.lower(), Counter(t.name for _, t in typed),
                   sum(math.prod(p.shape) for p in plan), sum(tensor_nbytes(p.shape, t) for p, t in typed), size)


def source_plan(src: Path, ftype: int) -> tuple[object, list[Planned]]:
    """The metadata (in a ``GGUFWriter``) and tensors of a GGUF file or a checkpoint directory."""
    from lmgen.formats.checkpoint import gguf_file, locate
    from lmgen.formats.gguf.writer import checkpoint_plan

    source = gguf_file(src) if src.exists() else None
    writer, plan = gguf_plan(source, ftype) if source else checkpoint_plan(locate(src), ftype)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    return writer, plan


def gguf_plan(src: Path, ftype: int) -> tuple[object, list[Planned]]:
    """A GGUF file re-quantized: checked as ``convert`` checks it (architecture, metadata, names,
    shapes, finite values), its metadata copied as it is (tokenizer, chat template and all) but
    for the file type, its tensors kept in llama.cpp's layout and read back to fp32 one at a time."""
    from lmgen.formats.gguf.metadata import open_gguf, read_metadata
    from lmgen.formats.gguf.reader import check_tensors, gguf_arch, gguf_hf_config
    from lmgen.formats.gguf.writer import new_writer
    from lmgen.formats.hf_config import from_hf

    reader = open_gguf(src)
    meta = read_metadata(reader)
    cfg = from_hf(gguf_hf_config(reader, meta))
    check_tensors(reader, cfg, gguf_arch(meta))
    writer = new_writer(meta["general.architecture"])
    for key, field in reader.fields.items():
        if not key.startswith(("GGUF.", "split.")) and key not in SKIPPED_KEYS:
            vtype = field.types[0]
            writer.add_key_value(key, meta[key], vtype, field.types[-1] if vtype == GGUFValueType.ARRAY else None)
    writer.add_file_type(ftype)
    return writer, [Planned(t.name, tuple(int(n) for n in reversed(t.shape.tolist())), _dequantizer(t))
                    for t in reader.tensors]


def _dequantizer(tensor):
    def load() -> np.ndarray:
        try:
            array = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"GGUF tensor {tensor.name} has type {tensor.tensor_type.name}, "
                                  "which gguf cannot read") from None
        return array.astype(np.float32, copy=False).reshape(tuple(int(n) for n in reversed(tensor.shape.tolist())))

    return load


def tensor_nbytes(shape: tuple[int, ...], qtype) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def write(writer, typed: list, stage: Path) -> None:
    """The header, then each tensor quantized and appended in turn; flushed to disk before the
    caller renames the file into place."""
    for planned, qtype in typed:
        writer.add_tensor_info(planned.name, planned.shape, np.float32, tensor_nbytes(planned.shape, qtype), qtype)
    try:
        writer.write_header_to_file(path=stage)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for planned, qtype in typed:
            writer.write_tensor_data(encode(planned, qtype))
        writer.flush()
        os.fsync(writer.fout[0].fileno())
    finally:
        writer.close()


def encode(planned: Planned, qtype) -> np.ndarray:
    """One tensor's bytes in the file: its fp32 values checked finite, then ``gguf.quants.quantize``."""
    array = np.ascontiguousarray(planned.load(), dtype=np.float32)
    if array.shape != planned.shape:
        raise CheckpointError(f"tensor {planned.name} has shape {array.shape}, not {planned.shape}")
    if not np.isfinite(array).all():
        raise CheckpointError(f"tensor {planned.name} holds NaN or infinite values; lmgen never writes them")
    if qtype.name == "F16" and array.size and np.abs(array).max() > F16_MAX:
        raise CheckpointError(f"tensor {planned.name} has weights beyond float16's range, which its rows of "
                              f"{planned.shape[-1]} (not a multiple of {BLOCK}) need")
    return gguf_quantize(array, qtype)
