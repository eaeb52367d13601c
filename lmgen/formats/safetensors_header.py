"""The safetensors header, validated exactly as the ``safetensors`` library validates it.

A safetensors file is 8 bytes of little-endian header length N, N bytes of JSON, then the
tensor data. The library (Rust) refuses a header that is too large, not UTF-8, not a JSON
object, or whose entries are not ``{dtype, shape, data_offsets}`` of the right types; then it
requires the tensors to tile the data exactly: sorted by offset, each starting where the last
ended, each ``shape × dtype size`` bytes long, the last ending at the end of the file. So no
two tensors alias, nothing points outside the file, and every byte is accounted for.

lmgen applies those same rules here rather than calling the library, whose ``safe_open``
imports numpy or torch (``inspect`` must start without either); the tests check that both
accept and refuse the same files.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from lmgen.errors import CheckpointError

MAX_HEADER = 100_000_000  # the library's limit
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
USIZE = 1 << 64


class Bad(Exception):
    """Why a header is refused (becomes the CheckpointError's message)."""


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """(tensor name → {dtype, shape, data_offsets}, byte offset where the data starts)."""
    from lmgen.formats.files import regular_file

    regular_file(path, "weights file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise Bad("the file is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise Bad("header length is implausible")
            if 8 + n > size:
                raise Bad(f"the header claims {n} bytes, the file has {size - 8}")
            text = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    except Bad as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        tensors = parse_header(text)
        end = check_layout(tensors)
    except Bad as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    data_len = size - 8 - n
    if end > data_len:
        raise CheckpointError(f"{path} is truncated: the header needs {end} bytes of data, the file has {data_len}")
    if end < data_len:
        raise CheckpointError(f"{path} is not a readable safetensors file ({data_len - end} bytes after the last tensor)")
    return tensors, 8 + n


def _refuse_constant(name: str):
    raise Bad(f"{name} is not JSON")


def parse_header(raw: bytes) -> dict[str, dict]:
    """The header's tensor entries, each checked for the fields and types the format requires."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Bad("the header is not UTF-8") from None
    if not text.startswith("{"):
        raise Bad("the header is not a JSON object")
    try:
        header = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise Bad("the header is nested too deeply") from None
    except ValueError as exc:
        raise Bad(f"the header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise Bad("the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise Bad("__metadata__ must map names to strings")
    for name, info in header.items():
        _check_entry(name, info)
    return header


def _usize(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < USIZE


def _check_entry(name: str, info) -> None:
    if not isinstance(info, dict):
        raise Bad(f"tensor {name!r} is not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise Bad(f"tensor {name!r} has no {key}")
    if not isinstance(info["dtype"], str) or info["dtype"] not in DTYPE_BITS:
        raise Bad(f"tensor {name!r} has an unknown dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_usize(n) for n in shape):
        raise Bad(f"tensor {name!r} has a shape that is not a list of sizes: {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_usize(n) for n in offsets):
        raise Bad(f"tensor {name!r} has data_offsets that are not two byte offsets: {offsets!r}")


def check_layout(tensors: dict[str, dict]) -> int:
    """The tensors tile the data from byte 0 with no gap or overlap; returns where they end."""
    end = 0
    for name, info in sorted(tensors.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        start, stop = info["data_offsets"]
        if start != end or stop < start:
            raise Bad(f"tensor {name!r} has invalid data_offsets {info['data_offsets']} (expected to start at {end})")
        count = math.prod(info["shape"])
        bits = count * DTYPE_BITS[info["dtype"]]
        if count >= USIZE or bits >= USIZE or bits % 8 or bits // 8 != stop - start:
            raise Bad(f"tensor {name!r} has {stop - start} bytes of data, not what its shape and dtype need")
        end = stop
    return end
