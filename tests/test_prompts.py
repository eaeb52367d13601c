"""prompts.count_lines: the progress bar's total, read without consuming stdin."""

import os
import subprocess
import sys

import pytest

from lmgen.cli import prompts

COUNT = "import os; from lmgen.cli import prompts; n = prompts.count_lines(); print(n, os.read(0, 100))"


def run_count(stdin) -> str:
    return subprocess.run([sys.executable, "-c", COUNT], stdin=stdin, capture_output=True, check=True).stdout.decode()


@pytest.mark.parametrize("data, count", [
    (b"", 0), (b"one", 1), (b"one\n", 1), (b"one\n\n  \t\ntwo\r\nthree", 3), (b"\n\n", 0), (b" \n x\n", 1),
])
def test_counts_the_lines_each_line_reads(tmp_path, data, count):
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    with open(path, "rb") as stdin:
        assert run_count(stdin) == f"{count} {data[:100]!r}\n"  # and stdin is still at its start


def test_counts_across_chunks_from_stdins_offset(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"skipped\n" + b"x" * (3 * prompts.CHUNK) + b"\n\n" + b" " * prompts.CHUNK + b"\nlast")
    with open(path, "rb") as stdin:
        stdin.seek(len(b"skipped\n"))
        assert run_count(stdin).startswith("2 b'xxx")


def test_no_count_for_a_pipe_or_a_huge_file(tmp_path):
    assert run_count(subprocess.DEVNULL).startswith("None")  # a character device
    read, write = os.pipe()
    os.write(write, b"a\nb\n")
    os.close(write)
    assert run_count(read).startswith("None")
    os.close(read)
    path = tmp_path / "big.txt"
    with open(path, "wb") as f:
        f.truncate(prompts.COUNTED_BYTES + 1)
    with open(path, "rb") as stdin:
        assert run_count(stdin).startswith("None")
