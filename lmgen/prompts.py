"""Where prompts come from: an argument, --file, stdin, or stdin line by line, read within bounds.

A prompt can never use more than the context window, so lmgen never reads more bytes than
``limit`` (``max_bytes``: the context × MAX_TOKEN_BYTES) before refusing: a 200 MB paste or
``--file /dev/zero`` is refused after ``limit`` bytes instead of growing until the kernel kills
the process. With ``truncate`` the prompt keeps its end: a regular file is read from
``limit`` bytes before its end; a stream is read through, keeping only the last ``limit``
bytes, up to MAX_STREAM_BYTES in all.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from lmgen.errors import InputError

MAX_TOKEN_BYTES = 256  # no token of a byte-level vocabulary is near this long
MAX_STREAM_BYTES = 1 << 30  # what --truncate reads of an endless stream before giving up
CHUNK = 1 << 16


def max_bytes(context: int) -> int:
    """The most bytes of text that could still fit in a context of this many tokens."""
    return context * MAX_TOKEN_BYTES


def read_prompt(prompt: str | None, file: Path | None, limit: int, truncate: bool = False) -> str:
    """The prompt from the argument, --file, or stdin (no argument, or '-')."""
    if file is not None:
        if prompt not in (None, "-"):
            raise InputError("give the prompt either as an argument or with --file, not both")
        text = decode_utf8(read_file(file, limit, truncate), f"--file {file}", truncate)
    elif prompt is None or prompt == "-":
        text = decode_utf8(read_bounded(stdin(), limit, truncate, "stdin"), "stdin", truncate)
    else:
        text = prompt
    text = text.removesuffix("\n")
    if not text.strip():
        raise InputError("the prompt is empty")
    return text


def stdin():
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("no prompt: pass it as an argument, with --file, or on stdin")
    return sys.stdin.buffer


def read_file(path: Path, limit: int, truncate: bool) -> bytes:
    try:
        with open(path, "rb") as f:
            if truncate and stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            return read_bounded(f, limit, truncate, f"--file {path}")
    except IsADirectoryError:
        raise InputError(f"cannot read --file {path}: it is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read --file {path}: {exc.strerror}") from None


def read_bounded(stream, limit: int, truncate: bool, where: str) -> bytes:
    """At most limit bytes of stream: refused beyond that, or (truncate) its last limit bytes."""
    data = stream.read(limit + 1)
    if len(data) <= limit:
        return data
    if not truncate:
        raise _too_long(where, limit)
    return _tail(data, lambda: stream.read(CHUNK), limit, where)


def _too_long(where: str, limit: int) -> InputError:
    return InputError(f"{where} is longer than the context could use ({limit:,} bytes); "
                      "shorten it or pass --truncate to keep its end")


def _tail(head: bytes, next_chunk, keep: int, where: str, last=lambda chunk: False) -> bytes:
    """The last ``keep`` bytes of head and the chunks after it, read until next_chunk() gives
    nothing or ``last(chunk)`` holds, and refused past MAX_STREAM_BYTES."""
    data, total = head, len(head)
    while chunk := next_chunk():
        total += len(chunk)
        if total > MAX_STREAM_BYTES:
            raise InputError(f"{where} is longer than {MAX_STREAM_BYTES:,} bytes, even for --truncate")
        data = (data + chunk)[-keep:]
        if last(chunk):
            break
    return data[-keep:]


def decode_utf8(data: bytes, where: str, truncated: bool = False) -> str:
    if truncated:  # a cut may have split a character: drop its continuation bytes
        data = data.lstrip(bytes(range(0x80, 0xC0)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not valid UTF-8 (byte {exc.start}: {data[exc.start]:#04x})") from None


def each_line(limit: int, truncate: bool = False) -> Iterator[str]:
    """Non-empty lines of stdin, one prompt each (read and decoded lazily, each within limit)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("--each-line reads prompts from stdin; pipe them in")
    stream = sys.stdin.buffer
    number = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        number += 1
        where = f"stdin line {number}"
        if len(raw) > limit and not raw.endswith(b"\n"):
            raw = _rest_of_line(stream, raw, limit, truncate, where)
        line = decode_utf8(raw, where, truncate).rstrip("\r\n")
        if line.strip():
            yield line


COUNTED_BYTES = 1 << 28  # a larger file of prompts gets a running count, not a bar


def count_lines() -> int | None:
    """How many prompts --each-line will read, when stdin is a regular file no larger than
    COUNTED_BYTES (for the progress bar's total); None for a pipe or terminal. The file is read
    from stdin's offset in chunks with pread, which leaves that offset alone: nothing is consumed
    and memory stays bounded. A line counts if it has a non-blank byte, as each_line's rule."""
    try:
        info = os.fstat(0)
        offset = os.lseek(0, 0, os.SEEK_CUR)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size - offset > COUNTED_BYTES:
        return None
    count, filled = 0, False
    while chunk := os.pread(0, CHUNK, offset):
        offset += len(chunk)
        *ended, rest = chunk.split(b"\n")
        for line in ended:
            count += filled or bool(line.strip())
            filled = False
        filled = filled or bool(rest.strip())
    return count + filled


def _rest_of_line(stream, head: bytes, limit: int, truncate: bool, where: str) -> bytes:
    """An overlong line: refused, or (truncate) its last limit bytes and its newline."""
    if not truncate:
        raise _too_long(where, limit)
    data = _tail(head, lambda: stream.readline(CHUNK), limit + 1, where, last=lambda c: c.endswith(b"\n"))
    return data if data.endswith(b"\n") else data[-limit:]
