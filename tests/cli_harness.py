"""Run the CLI in this process with given stdin bytes, for property tests and fuzzers (hypothesis
runs many examples per test, so function-scoped fixtures such as capsys cannot be used)."""

from __future__ import annotations

import io
import sys
from contextlib import contextmanager

from hypothesis import settings

from conftest import Result


@contextmanager
def streams(stdin: bytes | None):
    """sys.stdin/stdout/stderr over bytes for the duration; yields (stdout, stderr) buffers."""
    saved = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.BytesIO()
    wrappers = [io.TextIOWrapper(out, encoding="utf-8", write_through=True),
                io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)]
    sys.stdin = None if stdin is None else io.TextIOWrapper(io.BytesIO(stdin))
    sys.stdout, sys.stderr = wrappers
    try:
        yield out, err
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for wrapper in wrappers:  # the buffers outlive their wrappers
            wrapper.flush()
            wrapper.detach()


def invoke(*args: str, stdin: bytes | None = b"") -> Result:
    """lmgen.cli.main.run(args) with stdin's bytes piped in; its exit code and both outputs."""
    from lmgen.cli.main import run

    with streams(stdin) as (out, err):
        code = run(list(args))
    return Result(code, out.getvalue(), err.getvalue())


def fraction(share: float) -> settings:
    """The current profile's example count scaled by ``share`` (at least 5): for properties whose
    examples each run the CLI several times."""
    return settings(max_examples=max(5, int(settings().max_examples * share)))


def assert_clean_outcome(result: Result, one_error: bool = True) -> None:
    """Success, or exit 2, 3 or 4 ending in an 'lmgen: error:' line (with ``one_error``, the only
    one): never exit 1, never a traceback, never a multi-line dump."""
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert result.returncode in (0, 2, 3, 4), err
    if result.returncode:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("lmgen: error: "), err
        if one_error:
            assert sum(line.startswith("lmgen: error: ") for line in lines) == 1, err
            assert all(line.startswith("lmgen: ") for line in lines), err
