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
from lmgen.text.utf8 import BOM, utf8_text

MAX_TOKEN_BYTES = 256  # no token of a byte-level vocabulary is near this long
MAX_STREAM_BYTES = 1 << 30  # what --truncate reads of an endless stream before giving up
CHUNK = 1 << 16


def max_bytes(context: int) -> int:
    """The most bytes of text that could still fit in a context of this many tokens."""
    return context * MAX_TOKEN_BYTES


def max_line_bytes(context: int, jsonl: bool) -> int:
    """The most bytes a ``batch`` input line could use: a prompt of max_bytes, or as a JSONL
    record, that prompt escaped (at most 6 bytes a byte, as \\u00XX) and 64 KiB of other fields."""
    return 6 * max_bytes(context) + (1 << 16) if jsonl else max_bytes(context)


def read_prompt(prompt: str | None, file: Path | None, limit: int, truncate: bool = False) -> str:
    """The prompt from the argument, --file, or stdin (no argument, or '-')."""
    if file is not None:
        if prompt not in (None, "-"):
            raise InputError("give the prompt either as an argument or with --file, not both")
        text = decode_utf8(*read_file(file, limit, truncate), f"--file {file}")
    elif prompt is None or prompt == "-":
        text = decode_utf8(*read_bounded(stdin(), limit, truncate, "stdin"), "stdin")
    else:
        text = utf8_text(prompt, "the prompt argument")
    text = text.removeprefix(BOM).removesuffix("\n")
    if not text.strip():
        raise InputError("the prompt is empty")
    return text


def stdin():
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("no prompt: pass it as an argument, with --file, or on stdin")
    return sys.stdin.buffer


def read_file(path: Path, limit: int, truncate: bool) -> tuple[bytes, bool]:
    """(at most limit bytes of the file, whether its start was cut off: see read_bounded)."""
    try:
        with open(path, "rb") as f:
            skipped = 0
            if truncate and stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                skipped = max(0, os.fstat(f.fileno()).st_size - limit)
                f.seek(skipped)
            data, cut = read_bounded(f, limit, truncate, f"--file {path}")
            return data, cut or skipped > 0
    except IsADirectoryError:
        raise InputError(f"cannot read --file {path}: it is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read --file {path}: {exc.strerror}") from None


def read_bounded(stream, limit: int, truncate: bool, where: str) -> tuple[bytes, bool]:
    """(at most limit bytes of stream, whether its start was cut off): refused beyond limit, or
    (truncate) its last limit bytes."""
    data = stream.read(limit + 1)
    if len(data) <= limit:
        return data, False
    if not truncate:
        raise _too_long(where, limit)
    return _tail(data, lambda: stream.read(CHUNK), limit, where), True


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


def decode_utf8(data: bytes, cut: bool, where: str) -> str:
    """Text of UTF-8 bytes; ``cut``: their start was cut off (--truncate), which may have split a
    character, so its continuation bytes are dropped (at most 3: a character's, never more)."""
    if cut:
        start = len(data) - len(data.lstrip(bytes(range(0x80, 0xC0))))
        data = data[min(start, 3):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not valid UTF-8 (byte {exc.start}: {data[exc.start]:#04x})") from None


def each_line(limit: int, truncate: bool = False) -> Iterator[str]:
    """Non-empty lines of stdin, one prompt each (read and decoded lazily, each within limit)."""
    return (line for _, line in numbered_lines(limit, truncate))


def numbered_lines(limit: int, truncate: bool = False) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for each non-empty line of stdin; a line that is not UTF-8,
    or too long without ``truncate``, is an InputError naming it when its turn comes."""
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
        cut = len(raw) > limit and not raw.endswith(b"\n")
        if cut:
            raw = _rest_of_line(stream, raw, limit, truncate, where)
        line = decode_utf8(raw, cut, where).rstrip("\r\n")
        if number == 1:
            line = line.removeprefix(BOM)
        if line.strip():
            yield number, line


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
