"""What a user installs: the kernels built with the package, chosen for the CPU, used with no
C compiler anywhere; in CI (LMGEN_TEST_INSTALLED=1) the package under test is the installed
wheel, not the source tree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmgen

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("LMGEN_TEST_INSTALLED") != "1", reason="CI's run against the installed wheel")
def test_the_package_under_test_is_the_installed_one():
    assert REPO / "lmgen" not in Path(lmgen.__file__).resolve().parents, lmgen.__file__  # not the source tree
    assert "site-packages" in lmgen.__file__


def test_generate_without_a_compiler_decodes_through_the_native_step(tmp_path):
    """PATH holds no compiler and lmgen's cache is empty, so no kernel can be compiled now: only
    the builds made with the package can serve, and they must (no note, the native decode plan)."""
    from lmgen.formats.paths import bundled_gguf

    env = {**os.environ, "PATH": str(tmp_path), "LMGEN_HOME": str(tmp_path / "home"), "LMGEN_KERNELS": "1"}
    env.pop("CC", None)
    exe = str(Path(sys.executable).parent / "lmgen")
    result = subprocess.run([exe, "generate", "-m", str(bundled_gguf()), "-n", "8", "--json", "The cat sat"],
                            capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert b"note" not in result.stderr, result.stderr  # no "native kernels are not available"
    assert json.loads(result.stdout)["new_tokens"] > 0
    probe = ("import lmgen; from lmgen.model import kernels_loader; lm = lmgen.load(sys.argv[1]); "
             "lm.model.new_cache(1, 4); print(kernels_loader.kernel_level(), lm.model.plan is not None)")
    out = subprocess.run([sys.executable, "-c", "import sys; " + probe, str(bundled_gguf())], capture_output=True,
                         env=env, timeout=300, text=True)
    level, native = out.stdout.split()
    assert native == "True", out.stderr
    assert level in ("avx512", "avx2", "portable")
    assert not list((tmp_path / "home").glob("kernels/*"))  # nothing was compiled into the cache
