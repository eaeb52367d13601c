"""Which model runs: the default model is its GGUF file unless a dtype is asked for."""

import pytest

from lmgen.errors import CheckpointError
from lmgen.formats.checkpoint import gguf_file
from lmgen.formats.paths import DEFAULT_GGUF_FILE, default_model_dir, resolve_model


def test_the_default_model_is_one_file_whatever_the_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    monkeypatch.delenv("LMGEN_MODEL", raising=False)
    root = default_model_dir()
    root.mkdir()
    with pytest.raises(CheckpointError, match="run `lmgen setup`"):
        resolve_model(None)
    (root / DEFAULT_GGUF_FILE).write_bytes(b"GGUF")
    assert resolve_model(None) == root / DEFAULT_GGUF_FILE
    assert gguf_file(root) == root / DEFAULT_GGUF_FILE  # the directory setup reports: the same file
    (root / "config.json").write_text("{}")  # the layout before: an fp32 checkpoint beside it
    with pytest.raises(CheckpointError, match="run `lmgen setup`"):
        resolve_model(None)
    assert resolve_model(str(tmp_path / "x.gguf")) == tmp_path / "x.gguf"  # --model is taken as given


def test_a_checkpoint_directory_is_a_checkpoint_whatever_gguf_files_lie_beside_it(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert gguf_file(tmp_path) == tmp_path / "a.gguf"  # a directory holding one GGUF file
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    (tmp_path / "config.json").write_text("{}")
    assert gguf_file(tmp_path) is None
    assert gguf_file(tmp_path / "b.gguf") == tmp_path / "b.gguf"
