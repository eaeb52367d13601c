"""Every file lmgen writes for a user refuses a target that exists and is not a regular file (a
directory's target: not a directory), --force or not: a FIFO stays a FIFO, /dev/null a device.

(As root, `quantize SRC /dev/null --force` replaced /dev/null with a GGUF file.) The rule lives in
``lmgen.formats.files`` (``staged_file``, ``staged_directory``); the commands check it again
before reading a model, so that they fail fast.
"""

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from lmgen.errors import InputError
from lmgen.formats.files import staged_directory, staged_file


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    os.mkfifo(path)
    return path


def dev_null_link(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.symlink_to("/dev/null")
    return path


TARGETS = {"fifo": fifo, "link to /dev/null": dev_null_link}


def unchanged(path: Path, kind: str) -> None:
    """The target is what it was: a FIFO, or a link to /dev/null, which is still a device."""
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
    else:
        assert os.readlink(path) == "/dev/null"
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_quantize_refuses_a_target_that_is_not_a_regular_file(cli, tiny_dir, tmp_path, kind, force):
    target = TARGETS[kind](tmp_path)
    result = cli("quantize", str(tiny_dir), str(target), "--type", "q8_0", *force)
    assert_one_line_error(result, 2, rf"{target} exists and is a (link to a character device|FIFO), not a regular file")
    unchanged(target, kind)


def test_quantize_checks_its_target_before_reading_the_source(cli, tmp_path):
    target = fifo(tmp_path)
    result = cli("quantize", str(tmp_path / "no-such-model"), str(target), "--type", "q8_0", "--force")
    assert_one_line_error(result, 2, "not a regular file")  # not exit 3 for the missing source: OUT first


@pytest.mark.parametrize("kind", TARGETS)
def test_convert_refuses_a_target_that_is_not_a_directory(cli, tmp_path, kind):
    target = TARGETS[kind](tmp_path)
    result = cli("convert", str(tmp_path / "no-such.gguf"), str(target), "--force")
    assert_one_line_error(result, 2, f"{target} exists and is a (link to a character device|FIFO), not a directory")
    unchanged(target, kind)


@pytest.mark.parametrize("kind", TARGETS)
def test_batch_refuses_an_out_that_is_not_a_directory(cli, tiny_dir, tmp_path, kind):
    target = TARGETS[kind](tmp_path)
    src = tmp_path / "prompts.txt"
    src.write_text("one\n")
    result = cli("batch", str(src), "--out", str(target), "-m", str(tiny_dir), "-n", "2")
    assert_one_line_error(result, 2, "is not a directory")
    unchanged(target, kind)


@pytest.mark.parametrize("kind", TARGETS)
def test_chat_save_refuses_a_target_that_is_not_a_regular_file(cli, tiny_chat_dir, tmp_path, kind):
    """/save is one error line naming the file (the session goes on, as with any bad /save)."""
    target = TARGETS[kind](tmp_path)
    reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK) if kind == "fifo" else None  # a write would not block
    try:
        result = cli("chat", "-m", str(tiny_chat_dir), "-n", "2", input=f"hi\n/save {target}\n".encode())
        written = os.read(reader, 1 << 16) if reader is not None else b""
    finally:
        if reader is not None:
            os.close(reader)
    assert written == b""  # nothing went into the FIFO
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lmgen: error: {target} exists and is a"), err
    assert "not a regular file" in err[0]
    assert len(result.stdout.splitlines()) == 1  # the reply to "hi"
    unchanged(target, kind)


def test_chat_save_writes_a_whole_file_over_an_old_one(cli, tiny_chat_dir, tmp_path):
    target = tmp_path / "saved.json"
    target.write_text("old")
    result = cli("chat", "-m", str(tiny_chat_dir), "-n", "2", input=f"hi\n/save {target}\n".encode())
    assert result.returncode == 0 and b"saved 2 messages" in result.stderr, result.stderr
    assert [m["role"] for m in json.loads(target.read_text())] == ["user", "assistant"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved.json"]


def test_setup_refuses_a_fifo_where_the_default_model_goes(cli, tmp_path, monkeypatch):
    from lmgen.formats.paths import DEFAULT_GGUF_FILE, DEFAULT_MODEL_NAME

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    (tmp_path / DEFAULT_MODEL_NAME).mkdir()
    target = tmp_path / DEFAULT_MODEL_NAME / DEFAULT_GGUF_FILE
    os.mkfifo(target)
    assert_one_line_error(cli("setup", "--force"), 2, "FIFO, not a regular file")
    assert stat.S_ISFIFO(os.lstat(target).st_mode)


# ------------------------------------------------------------ the one place: lmgen.formats.files


@pytest.mark.parametrize("force", [False, True])
def test_staged_file_refuses_before_anything_is_written(tmp_path, force):
    target = fifo(tmp_path)
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):
        with staged_file(target, force=force):
            pytest.fail("nothing may be staged")
    unchanged(target, "fifo")


def test_staged_file_refuses_a_target_that_became_a_fifo_while_it_was_written(tmp_path):
    target = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):
        with staged_file(target, force=True) as stage:
            stage.write_bytes(b"data")
            os.mkfifo(target)
    unchanged(target, "fifo")


@pytest.mark.parametrize("kind", TARGETS)
def test_staged_directory_refuses_a_target_that_is_not_a_directory(tmp_path, kind):
    target = TARGETS[kind](tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        with staged_directory(target, force=True):
            pytest.fail("nothing may be staged")
    unchanged(target, kind)


@pytest.mark.parametrize("name", ["part-00000.jsonl", "_SUCCESS", "_inputs.json", ".lock"])
def test_a_special_file_inside_a_batch_dir_is_refused_not_followed(cli, tiny_dir, tmp_path, name):
    """A FIFO among DIR's files: a rerun is refused (exit 2) instead of hanging on it or
    replacing it with a regular file."""
    source, out = tmp_path / "in.txt", tmp_path / "out"
    source.write_text("one\n")
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0
    (out / name).unlink(missing_ok=True)
    os.mkfifo(out / name)
    result = cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2")
    assert_one_line_error(result, 2, f"{name} (exists and is a FIFO|is not a regular file)")
    assert stat.S_ISFIFO(os.stat(out / name).st_mode)


def test_a_killed_writers_stages_are_removed_by_the_next_a_live_ones_kept(tmp_path):
    """A killed quantize/convert leaves .NAME.PID-RANDOM.partial (files or directories): the next
    write of the same target removes those whose PID is dead, never a live writer's."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now (and not reused this quickly on a machine with 2**22 pids)
    target = tmp_path / "x.gguf"
    stale_file = tmp_path / f".x.gguf.{dead.pid}-abcd1234.partial"
    stale_file.write_bytes(b"\0" * 1000)
    stale_dir = tmp_path / f".x.gguf.{dead.pid}-dir.partial"
    stale_dir.mkdir()
    (stale_dir / "part").write_bytes(b"x")
    live = tmp_path / f".x.gguf.{os.getpid()}-beef0000.partial"
    live.write_bytes(b"mine")
    other = tmp_path / f".y.gguf.{dead.pid}-abcd1234.partial"  # another target's: not this write's to judge
    other.write_bytes(b"y")
    with staged_file(target) as stage:
        stage.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()
