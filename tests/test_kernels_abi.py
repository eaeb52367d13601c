"""lmgen.model.kernels_abi: Python's mirrors of the kernels' structs and codes agree with the C,
and a library that does not is refused in one line."""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from lmgen.errors import EnvironmentFailure
from lmgen.model import build_table, kernels, kernels_abi, kernels_loader
from lmgen.model.quant import ALL_FORMATS, READ_ONLY

CSRC = Path(build_table.__file__).parent / "csrc"


def c_enum(header: str, prefix: str) -> dict[str, int]:
    """NAME -> value of the C enum constants starting with prefix in a csrc header."""
    return {name: int(value) for name, value in re.findall(rf"\b({prefix}\w+) = (\d+)", (CSRC / header).read_text())}


def test_the_python_format_table_is_the_c_enum():
    """One table of weight formats in Python (FORMAT_CODES), the same as csrc/common.h's one enum;
    lmgen.model.quant's block formats and the float dtypes' codes come from it."""
    assert c_enum("common.h", "W_") == {f"W_{name.upper()}": code for name, code in kernels_abi.FORMAT_CODES.items()}
    assert {name: fmt.code for name, fmt in ALL_FORMATS.items()} == \
        {name: code for name, code in kernels_abi.FORMAT_CODES.items() if name in ALL_FORMATS}
    assert {name for name, fmt in ALL_FORMATS.items() if fmt.k} == set(READ_ONLY)  # kquant.h's: W_Q5_0 on
    assert sorted(kernels.WEIGHT_CODES.values()) == [kernels_abi.FORMAT_CODES["f32"], kernels_abi.FORMAT_CODES["bf16"]]
    codes = c_enum("abi.h", "(?:KV|NORM|ACT|QK|LMGEN_ABI)_")
    assert codes == {name: value for name, value in kernels_abi.expected() if not name.startswith(("W_", "sizeof"))}


def test_the_library_reports_what_python_expects():
    lib = kernels.library()
    assert kernels_abi.reported(lib) == [value for _, value in kernels_abi.expected()]
    assert kernels_abi.mismatch(lib) is None


@pytest.mark.parametrize("build", ["serial", "avx2", "portable"])
def test_every_build_reports_the_same_abi(kernel_build, build):
    assert kernels_abi.mismatch(ctypes.CDLL(str(kernel_build(build)))) is None


class LongerLayer(ctypes.Structure):
    _fields_ = [*kernels_abi.Layer._fields_, ("extra", ctypes.c_int64)]


@pytest.mark.parametrize("change, says", [
    (("ABI_VERSION", 2), r"its LMGEN_ABI_VERSION is 1, this lmgen's 2"),
    (("Layer", LongerLayer),
     rf"its sizeof\(Layer\) is {ctypes.sizeof(kernels_abi.Layer)}, this lmgen's {ctypes.sizeof(LongerLayer)}"),
    (("FORMAT_CODES", {**kernels_abi.FORMAT_CODES, "q4_k": 11}), r"its W_Q4_K is 8, this lmgen's 11"),
])
def test_a_library_that_does_not_match_is_refused_in_one_line(monkeypatch, change, says):
    lib = ctypes.CDLL(str(kernels.library()._name))
    monkeypatch.setattr(kernels_abi, *change)
    with pytest.raises(EnvironmentFailure) as refused:
        kernels_loader.declare(lib)
    message = str(refused.value)
    assert "\n" not in message and re.search(says, message), message
    assert f"the native kernels {lib._name} do not match this lmgen" in message and "reinstall" in message


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_library_from_before_the_check_is_refused(tmp_path):
    (tmp_path / "old.c").write_text("void gemv(void) {}\n")
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "old.c"), "-o", str(tmp_path / "old.so")], check=True)
    with pytest.raises(EnvironmentFailure, match="has no lmgen_abi"):
        kernels_loader.declare(ctypes.CDLL(str(tmp_path / "old.so")))


def test_generate_with_mismatched_kernels_is_one_line_not_a_traceback(cli, tiny_dir, monkeypatch, reloaded_kernels):
    monkeypatch.setattr(kernels_abi, "ABI_VERSION", 99)
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "hello")
    assert_one_line_error(result, 4, r"native kernels .* do not match this lmgen \(its LMGEN_ABI_VERSION is 1")
