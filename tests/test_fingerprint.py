"""A model file's caches are keyed on its bytes (lmgen.formats.fingerprint): a file rewritten with
the same size and modification time is never served from the entry of what it held before."""

from __future__ import annotations

import os

import pytest
from conftest import assert_one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gguf_fuzz import tensor_table, tiny_gguf  # noqa: F401 (a fixture)
from test_gguf_validate import F16_NAN, tiny_q8_gguf  # noqa: F401 (a fixture)

from lmgen.formats import fingerprint
from lmgen.formats.gguf import index


def rewrite_keeping_times(path, data: bytes, before) -> None:
    """path's bytes replaced in place by data (same length), its times set back; returns when the
    kernel's change time has moved (it moves in clock ticks)."""
    assert len(data) == before.st_size
    while True:
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        if after.st_ctime_ns != before.st_ctime_ns:
            assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
            return


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), at=st.integers(min_value=0), byte=st.integers(1, 255))
def test_a_changed_byte_changes_the_digest_even_with_the_same_size_and_times(tmp_path_factory, data, at, byte):
    """Invariant: content_digest is the digest of what the file holds now, whatever its stat says
    (even where the digest of what it held is remembered)."""
    path = tmp_path_factory.mktemp("f") / "model.gguf"
    path.write_bytes(data)
    os.environ["LMGEN_HOME"] = str(path.parent / "home")
    try:
        first = fingerprint.content_digest(path)
        changed = bytearray(data)
        changed[at % len(data)] ^= byte
        rewrite_keeping_times(path, bytes(changed), os.stat(path))
        assert fingerprint.content_digest(path) == fingerprint.hash_bytes(path) != first
    finally:
        del os.environ["LMGEN_HOME"]


def test_a_settled_files_digest_is_remembered_and_a_rewrite_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fingerprint, "RACY_NS", -1)  # as if the file were older than two seconds
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    first = fingerprint.content_digest(path)
    with monkeypatch.context() as m:
        m.setattr(fingerprint, "hash_bytes", lambda p: pytest.fail("hashed again"))
        assert fingerprint.content_digest(path) == first  # the remembered digest
    rewrite_keeping_times(path, b"GGUF" + bytes(range(255, -1, -1)) * 100, os.stat(path))
    assert fingerprint.content_digest(path) != first


def test_a_just_written_file_is_not_remembered(tmp_path, monkeypatch):
    """A stamp younger than RACY_NS may not have moved for a write in the same clock tick."""
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF and more")
    fingerprint.content_digest(path)
    assert not (tmp_path / "home" / "digests").exists()


def test_a_nan_scale_written_in_with_the_same_size_and_times_is_refused(tiny_q8_gguf, cli, monkeypatch, tmp_path):
    """The issue's case: run a file (its index and packed blocks cached), write a NaN scale into it
    keeping size and times, run it again: the NaN is found (exit 3), not the old cache used."""
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fingerprint, "RACY_NS", -1)  # the digest is remembered, as for a settled file
    path = tmp_path / "model.gguf"
    path.write_bytes(tiny_q8_gguf.read_bytes())
    assert cli("generate", "-m", str(path), "-n", "2", "hello").returncode == 0
    first_entry = index.cache_path(path)
    data = bytearray(path.read_bytes())
    at = tensor_table(path)["blk.1.ffn_up.weight"]["start"]
    data[at: at + 2] = F16_NAN
    rewrite_keeping_times(path, bytes(data), os.stat(path))
    assert_one_line_error(cli("generate", "-m", str(path), "-n", "2", "hello"), 3,
                          r"blk\.1\.ffn_up\.weight \(Q8_0\) has a NaN as scale d of block 0")
    assert index.cache_path(path) != first_entry


def test_the_same_bytes_at_another_path_share_the_entry(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(tiny_gguf.read_bytes())
    assert index.cache_path(a) == index.cache_path(b)
