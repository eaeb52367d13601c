"""A GGUF file's header read within bounds, and its metadata values read by key and checked.

GGUF files come from strangers: the reader stops at the end of the file and at absurd arrays,
and every value is checked for the kind its key must have (one ``CheckpointError`` naming the
key otherwise). Used by the reader, the architectures and the tokenizer rebuild alike.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType

from lmgen.config.model_config import is_int
from lmgen.errors import CheckpointError, printable
from lmgen.formats.files import regular_file
from lmgen.formats.gguf.validate import TableEntry, check_layout

# The reader makes ~1 KB of Python objects per metadata array item: this caps what a hostile
# header can cost (~2 GB), above twice o200k's tokens + merges + token types (0.85 M items).
MAX_METADATA_ITEMS = 1 << 21

_KINDS = {
    "an integer": is_int,
    "a number": lambda v: (is_int(v) or isinstance(v, float)) and math.isfinite(v),
    "true or false": lambda v: isinstance(v, bool),
    "a string": lambda v: isinstance(v, str),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a non-empty list of strings": lambda v: v != [] and _KINDS["a list of strings"](v),
    "a list of integers": lambda v: isinstance(v, list) and all(is_int(x) for x in v),
    "a list of numbers": lambda v: isinstance(v, list) and all(_KINDS["a number"](x) for x in v),
}
_REQUIRED = object()


class BoundedReader(GGUFReader):
    """GGUFReader that refuses an array longer than the rest of the file, or too many items in all.

    The stock reader slices its memmap, so reads past the end give empty arrays, not errors: an
    array that claims 2**60 one-byte items is walked item by item, a hang that also eats memory.
    (Other fields read past the end fail on their own, as an IndexError or a bad reshape.)
    """

    items_seen = 0  # metadata array items so far, nested ones included

    def _get_field_parts(self, orig_offs, raw_type):
        if int(raw_type) == GGUFValueType.ARRAY:  # int(): numpy's == with an IntEnum is slow, per item
            item_type, length = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4, np.uint64)[0])
            scalar = self.gguf_scalar_to_np.get(item_type, np.uint8)
            item_bytes = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}.get(item_type, np.dtype(scalar).itemsize)
            if orig_offs + 12 + length * item_bytes > len(self.data):
                raise ValueError(f"an array at byte {orig_offs} runs past the end of the file")
            self.items_seen += length
            if self.items_seen > MAX_METADATA_ITEMS:
                raise ValueError(f"its metadata arrays hold more than {MAX_METADATA_ITEMS} items")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_tensors(self, start_offs, fields):
        """The stock reader adds each offset to ``start_offs`` as a uint64 (2**64 - 32 wraps round
        into the header) and slices whatever lies there: the table is checked first."""
        entries = [TableEntry(bytes(f.parts[1]).decode("utf-8", "replace"), int(f.parts[4][0]),
                              tuple(int(n) for n in f.parts[3]), int(f.parts[5][0])) for f in fields]
        check_layout(entries, int(self.alignment), len(self.data) - int(start_offs))
        super()._build_tensors(start_offs, fields)


def open_gguf(src: Path) -> GGUFReader:
    """A reader for src, or a CheckpointError saying why not (a FIFO or device is refused unopened;
    a tensor table that points outside the data section, off its alignment or at another
    tensor's bytes is refused, naming the tensor, before any tensor is read)."""
    regular_file(Path(src), "GGUF file")
    try:
        return BoundedReader(src)
    except CheckpointError as exc:  # the tensor table, checked by BoundedReader
        raise CheckpointError(f"{src} is not a readable GGUF file ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read GGUF file {src}: {exc.strerror or exc}") from None
    except IndexError:  # a field read past the end: the file is cut short, or a length in it is wrong
        raise CheckpointError(f"{src} is not a readable GGUF file (a field runs past its end)") from None
    except Exception as exc:  # gguf raises ValueError, KeyError, RecursionError, ... on bad files
        raise CheckpointError(f"{src} is not a readable GGUF file ({printable(exc)})") from None


def read_metadata(reader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception as exc:  # bad UTF-8, an array of arrays, ...
            raise CheckpointError(f"GGUF metadata {printable(key)} is unreadable ({printable(exc)})") from None
    return meta


def typed(meta: dict, key: str, kind: str, default=_REQUIRED):
    """meta[key], or a CheckpointError naming the key if it is missing (and required) or not ``kind``."""
    if key not in meta:
        if default is _REQUIRED:
            raise CheckpointError(f"GGUF metadata lacks {key}")
        return default
    value = meta[key]
    if not _KINDS[kind](value):
        shown = f"a list of {len(value)}" if isinstance(value, list) else printable(repr(value), 40)
        raise CheckpointError(f"GGUF metadata {key} must be {kind}, not {shown}")
    return value


def integer(meta: dict, key: str, low: int, high: int, default=_REQUIRED) -> int | None:
    """typed(..., "an integer"), also refused (naming the key) outside [low, high]."""
    value = typed(meta, key, "an integer", default)
    if value is not None and not low <= value <= high:
        raise CheckpointError(f"GGUF metadata {key} must be from {low} to {high}, got {value}")
    return value


def _token_id(meta: dict, name: str, n_tokens: int) -> int | None:
    return integer(meta, f"tokenizer.ggml.{name}_token_id", 0, n_tokens - 1, None)


def token_list(meta: dict) -> list[str]:
    return typed(meta, "tokenizer.ggml.tokens", "a non-empty list of strings")


def positive(meta: dict, key: str, default=_REQUIRED) -> float:
    value = float(typed(meta, key, "a number", default))
    if value <= 0:
        raise CheckpointError(f"GGUF metadata {key} must be positive, got {value}")
    return value
