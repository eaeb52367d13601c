"""Reading files from strangers, and writing directories and files so that a failure leaves
nothing behind.

Every file lmgen reads from a checkpoint directory goes through ``regular_file`` first: a FIFO
or a device in its place would block ``open`` or never end. JSON is parsed with the errors a
hostile file can cause (bad UTF-8, deep nesting) turned into one ``CheckpointError`` naming the
file. ``staged_directory`` writes a whole directory beside its target and renames it into place;
``staged_file`` does the same for one file. What lmgen writes for a user goes through them (quantize,
convert, setup, chat's /save and history), and both refuse a target that exists and is not what they
would put there (``check_file_target``, ``check_directory_target``), ``--force`` or not: renaming over
a FIFO or a device replaces it (as root, /dev/null itself).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
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


def remove_dead_stages(target: Path) -> None:
    """Remove the stages of ``target`` whose writer is dead (a killed ``quantize`` or ``convert``
    left them: ``.NAME.PID-RANDOM.partial``). A live writer's, another process's at work now,
    is left alone."""
    import shutil

    for stage in target.parent.glob(f".{glob.escape(target.name)}.*-*.partial"):
        pid = stage.name[len(target.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if stage.is_dir() and not stage.is_symlink():
                shutil.rmtree(stage, ignore_errors=True)
            else:
                stage.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


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
    check_directory_target(target, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_stages(target)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".partial", dir=target.parent))
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write to {target.parent}: {exc.strerror}") from None
    try:
        yield stage
        check_directory_target(target, force=True)  # again: it may have changed while stage was written
        _swap_in(stage, target, force)
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write {target}: {exc.strerror}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_file(target: Path, force: bool = False, parents: bool = True):
    """Yield a fresh path beside ``target`` to write; on success it is renamed to ``target``.

    ``target`` must not exist unless ``force``, and is never anything but a regular file
    (``check_file_target``). On any failure (or Ctrl-C) the staged file is removed and ``target``
    is left as it was, so no reader ever sees half a file; of two writers at once without
    ``force``, exactly one wins (``renameat2`` with ``RENAME_NOREPLACE``). ``parents``: make
    missing directories above ``target`` (else their absence is the machine's refusal).
    """
    import secrets

    target = Path(target)
    check_file_target(target, force)
    stage = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    try:
        if parents:
            target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_stages(target)
        os.close(os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode as umask allows
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write to {target.parent}: {exc.strerror}") from None
    try:
        yield stage
        if force:
            not_special(target)  # again: it may have changed while stage was written
            os.replace(stage, target)
        elif not _rename(stage, target, RENAME_NOREPLACE):
            raise InputError(f"{target} exists; pass --force to replace it (another writer finished first)")
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        stage.unlink(missing_ok=True)


def check_file_target(target: Path, force: bool = False) -> None:
    """What ``staged_file`` refuses, checked before any work (a command calls it before it reads
    a model, to fail fast): a directory, anything else that is not a regular file, and an
    existing file without ``force`` (InputError: exit 2)."""
    target = Path(target)
    if target.is_dir():
        raise InputError(f"{target} is a directory; name the file to write")
    not_special(target)
    if os.path.lexists(target) and not force:
        raise InputError(f"{target} exists; pass --force to replace it")


def check_directory_target(target: Path, force: bool = False) -> None:
    """What ``staged_directory`` refuses, checked before any work: anything but a directory
    (following links), and a non-empty one without ``force`` (InputError: exit 2)."""
    target = Path(target)
    kind = _kind(target)
    if kind is not None and kind != "a directory":
        raise InputError(f"{target} exists and is {kind}, not a directory; lmgen writes only directories there")
    if kind is not None and not force and not is_empty_dir(target):
        raise InputError(f"{target} is not empty; pass --force to replace it")


def not_special(target: Path) -> None:
    """Refuse a write target that exists (following links) and is not a regular file: a FIFO
    would block, and renaming over a device replaces it (``--force`` or not: InputError)."""
    kind = _kind(Path(target))
    if kind is not None and kind != "a regular file":
        raise InputError(f"{target} exists and is {kind}, not a regular file; lmgen writes only regular files")


KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(path: Path) -> str | None:
    """What ``path`` is, following links ("a link to …" for one), or None if nothing is there
    (a dangling link included: renaming over it replaces only the link)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        raise EnvironmentFailure(f"cannot check {path}: {exc.strerror}") from None
    except ValueError:  # a NUL in the name (only from the library: argv cannot hold one)
        raise InputError(f"{path!r} is not a valid path") from None
    kind = next((name for test, name in KINDS if test(mode)), "not a regular file")
    return f"a link to {kind}" if kind != "a regular file" and kind != "a directory" and path.is_symlink() else kind


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2's flags (Linux 3.15+)


def _swap_in(stage: Path, target: Path, force: bool) -> None:
    """Rename stage to target in one system call, so that two writers at once can never both
    win: without ``force`` only if target does not exist (an empty directory is removed first);
    with ``force``, an existing target is exchanged with stage and then removed."""
    if not force:
        if target.is_dir():
            try:
                target.rmdir()  # empty (as checked before writing): fails if filled since
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise InputError(f"{target} is not empty; pass --force to replace it") from None
                raise
        if not _rename(stage, target, RENAME_NOREPLACE):
            raise InputError(f"{target} is not empty; pass --force to replace it (another writer finished first)")
        return
    while not _rename(stage, target, RENAME_NOREPLACE):  # it exists: exchange, then remove the old one
        if _rename(stage, target, RENAME_EXCHANGE):
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
            return


def _rename(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags): False if dst exists (NOREPLACE) or not (EXCHANGE). Where the
    call does not exist (not Linux, an old libc), the same under a lock file beside dst."""
    call = _renameat2()
    if call is None:
        return _rename_locked(src, dst, flags)
    if call(-100, os.fsencode(src), -100, os.fsencode(dst), flags) == 0:  # -100: AT_FDCWD
        return True
    code = ctypes.get_errno()
    if code in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOENT):
        return False
    if code in (errno.ENOSYS, errno.EINVAL):  # a kernel or file system without it
        return _rename_locked(src, dst, flags)
    raise OSError(code, os.strerror(code), str(dst))


@functools.cache
def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return call


def _rename_locked(src: Path, dst: Path, flags: int) -> bool:
    import fcntl

    with open(dst.parent / f".{dst.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if flags == RENAME_NOREPLACE:
            if os.path.lexists(dst):
                return False
            os.rename(src, dst)
            return True
        if not os.path.lexists(dst):
            return False
        aside = src.with_name(src.name + ".old")
        os.rename(dst, aside)
        os.rename(src, dst)
        os.rename(aside, src)
        return True
