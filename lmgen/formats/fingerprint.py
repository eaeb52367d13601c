"""A file's content digest: what lmgen's caches of a model file are keyed on.

The digest is XXH3-128 over every byte of the file (memory-bound: about a tenth of a second per
GB from the page cache), so two files share a cache entry only if their bytes are the same, and
a file rewritten with the same size and modification time is read again. It is remembered in
lmgen's cache beside a stamp of the file's stat — device, inode, size, modification and change
times. The change time (ctime) is set by the kernel on every write and cannot be set back by
``touch`` or ``os.utime``, so a file whose stamp is unchanged holds the bytes that were hashed,
and later runs read the remembered digest instead of the whole file. A file changed in the last
two seconds is not remembered: file times move in clock ticks, so a write just after the hashing
could leave the stamp as it was (git's "racily clean" files).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

CHUNK = 16 << 20
RACY_NS = 2_000_000_000  # a stamp this young is not trusted


def content_digest(path: Path) -> str:
    """The hex XXH3-128 digest of path's bytes (remembered while its stat stamp holds)."""
    memo = _memo_path(path)
    stamp = stamp_of(path)
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved["stamp"] == stamp and isinstance(saved["digest"], str):
            return saved["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hash_bytes(path)
    if stamp_of(path) == stamp and time.time_ns() - stamp[4] > RACY_NS:  # settled, and unchanged while read
        _remember(memo, {"stamp": stamp, "digest": digest})
    return digest


def hash_bytes(path: Path) -> str:
    import xxhash

    state, buffer = xxhash.xxh3_128(), bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            state.update(view[:n])
    return state.hexdigest()


def stamp_of(path: Path) -> list[int]:
    info = os.stat(path)
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _memo_path(path: Path) -> Path:
    from lmgen.formats.home import cache_dir

    name = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_dir() / "digests" / f"{name}.json"


def _remember(memo: Path, entry: dict) -> None:
    """Best effort: a cache that cannot be written only costs the hashing next time."""
    partial = memo.with_name(f".{memo.name}.{os.getpid()}.partial")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(entry), encoding="utf-8")
        os.replace(partial, memo)
    except OSError:
        partial.unlink(missing_ok=True)
