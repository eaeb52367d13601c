"""Reading files from strangers, and writing directories so that a failure leaves nothing behind.

Every file lmgen reads from a checkpoint directory goes through ``regular_file`` first: a FIFO
or a device in its place would block ``open`` or never end. JSON is parsed with the errors a
hostile file can cause (bad UTF-8, deep nesting) turned into one ``CheckpointError`` naming the
file. ``staged_directory`` writes a whole directory beside its target and renames it into place.
"""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from lmgen.errors import CheckpointError, EnvironmentFailure, InputError

MAX_JSON_BYTES = 64 * 1024 * 1024  # config, index, tokenizer_config: far smaller in practice


def regular_file(path: Path, what: str = "file") -> Path:
    """path, if it is a regular file (following links); else a CheckpointError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError:  # a NUL in the name (only from the library: argv cannot hold one)
        raise CheckpointError(f"{what} {path!r} is not a valid path") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{what} {path} is not a regular file")
    return path


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes:
    regular_file(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise CheckpointError(f"{what} {path} is larger than {limit} bytes")
    return data


def read_text(path: Path, what: str = "file", limit: int = MAX_JSON_BYTES) -> str:
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} {path} is not valid UTF-8 (byte {exc.start})") from None


def parse_json(text: str, where: str):
    """json.loads, with every way a hostile text can fail as one CheckpointError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{where} is nested too deeply to be a sane JSON file") from None
    except ValueError as exc:
        raise CheckpointError(f"{where} is not valid JSON ({exc})") from None


def read_json(path: Path, what: str = "file", expect: type = dict):
    """A JSON file whose top level must be ``expect`` (an object, by default)."""
    data = parse_json(read_text(path, what), f"{what} {path}")
    if not isinstance(data, expect):
        kind = "an object" if expect is dict else expect.__name__
        raise CheckpointError(f"{what} {path} must hold {kind} at the top level, not {type(data).__name__}")
    return data


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextmanager
def staged_directory(target: Path, force: bool = False):
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    ``target`` must not exist, be an empty directory, or ``force`` must be given. On any
    failure the temporary directory is removed and ``target`` is left as it was, so no reader
    ever sees half a directory, and two concurrent writers each rename a complete one.
    """
    import shutil
    import tempfile

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a directory")
    if target.is_dir() and not is_empty_dir(target) and not force:
        raise InputError(f"{target} is not empty; pass --force to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write to {target.parent}: {exc.strerror}") from None
    try:
        yield stage
        _swap_in(stage, target)
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write {target}: {exc.strerror}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, target: Path) -> None:
    """Rename stage to target; an existing target is moved aside first, then removed."""
    import shutil
    import tempfile

    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "dir")
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
