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
    return remembered(path, "digests", hash_bytes)


def sha256_digest(path: Path) -> str:
    """The hex sha256 of path's bytes (what the Hub lists for an LFS file), remembered alike."""
    return remembered(path, "sha256", _sha256_bytes)


def remembered(path: Path, kind: str, compute) -> str:
    """compute(path), kept in lmgen's home under ``kind`` beside path's stat stamp, and read back
    instead of computed while the stamp holds (a stamp younger than RACY_NS is not kept)."""
    from lmgen.formats.home import keep

    memo = _memo_path(path, kind)
    stamp = stamp_of(path)
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved["stamp"] == stamp and isinstance(saved["digest"], str):
            return saved["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = compute(path)
    if stamp_of(path) == stamp and time.time_ns() - stamp[4] > RACY_NS:  # settled, and unchanged while read
        keep(memo, json.dumps({"stamp": stamp, "digest": digest}))
    return digest


def hash_bytes(path: Path) -> str:
    import xxhash

    state, buffer = xxhash.xxh3_128(), bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            state.update(view[:n])
    return state.hexdigest()


def _sha256_bytes(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stamp_of(path: Path) -> list[int]:
    info = os.stat(path)
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _memo_path(path: Path, kind: str) -> Path:
    from lmgen.formats.home import cache_dir

    name = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_dir() / kind / f"{name}.json"
