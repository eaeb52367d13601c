"""lmgen.model.build_table: the kernels' levels, flags and sources, the one table setup.py builds
from and kernels_loader loads from; each header compiles alone at each level it is written for."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmgen.model import build_table, kernels_loader

MODEL = Path(build_table.__file__).parent
REPO = Path(__file__).resolve().parent.parent
COMPILER = shutil.which("cc") or shutil.which("gcc")
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler")
X86 = build_table.levels("x86_64")

# The macros a compiler defines for an instruction set its flags enable, and the feature each is
# in /proc/cpuinfo's words (CRC32 is SSE4.2's instruction).
FEATURE_MACROS = {
    "__SSE3__": "pni", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2", "__CRC32__": "sse4_2",
    "__POPCNT__": "popcnt", "__XSAVE__": "xsave", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma",
    "__F16C__": "f16c", "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512VL__": "avx512vl",
    "__AVX512DQ__": "avx512dq", "__AVX512VNNI__": "avx512_vnni",
}
NOT_FEATURES = re.compile(r"__BIGGEST_ALIGNMENT__|__FP_FAST_\w+|__EVEX(256|512)__")  # flags' side effects


def macros(flags) -> set[str]:
    out = subprocess.run([COMPILER, *flags, "-dM", "-E", "-x", "c", "-"], input="", capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}


@needs_compiler
@pytest.mark.skipif(not build_table.is_x86(), reason="the x86 levels' flags need an x86 compiler")
@pytest.mark.parametrize("level", list(X86.values()), ids=list(X86))
def test_each_level_lists_every_feature_its_flags_enable(level):
    """A CPU runs a level only if it has every feature the level lists: one its flags enable but
    the table left out (F16C, AVX512DQ once) would let a CPU without it load code that uses it."""
    enabled = macros(level.flags) - macros(())
    unknown = {m for m in enabled - FEATURE_MACROS.keys() if not NOT_FEATURES.fullmatch(m)}
    assert not unknown, f"{level.name}'s flags define {unknown}: add their features to FEATURE_MACROS and the table"
    assert {FEATURE_MACROS[m] for m in enabled if m in FEATURE_MACROS} == set(level.features)


def test_the_best_level_the_cpu_has_every_feature_of_is_picked():
    """As ggml_backend_cpu_x86_score: a level counts only if the CPU has all its features."""
    avx512 = frozenset(X86["avx512"].features) | {"fpu", "sse", "sse2", "amx_tile"}
    assert build_table.runnable(avx512, X86) == ["avx512", "avx2", "portable"]
    assert build_table.runnable(avx512 - {"avx512dq"}, X86) == ["avx2", "portable"]
    assert build_table.runnable(avx512 - {"f16c"}, X86) == ["portable"]  # AVX2 and FMA without F16C
    assert build_table.runnable(frozenset(), X86) == ["portable"]
    assert kernels_loader.cpu_level(avx512 - {"avx512_vnni"}) == ("avx2" if build_table.is_x86() else "portable")
    assert kernels_loader.cpu_level() == kernels_loader.cpu_levels()[0]


def test_the_table_lists_every_source_and_they_are_installed():
    """The headers the table lists are the ones there are, and the package holds them
    (LMGEN_KERNELS=native compiles them; setup.py's depends rebuilds a level when one changes)."""
    on_disk = {str(p.relative_to(MODEL)) for p in (MODEL / "csrc").rglob("*.h")}
    assert on_disk == set(build_table.HEADERS)
    assert (MODEL / build_table.SOURCE).is_file()
    assert set(build_table.HEADERS.values()) <= set(X86)


def includes(header: Path) -> list[Path]:
    return [(header.parent / name).resolve() for name in re.findall(r'^#include "([^"]+)"', header.read_text(), re.MULTILINE)]


def test_the_headers_include_each_other_without_a_circle():
    seen: dict[Path, str] = {}

    def visit(path: Path, trail: tuple[Path, ...]) -> None:
        assert path not in trail, " -> ".join(p.name for p in (*trail, path))
        if seen.get(path) != "done":
            for child in includes(path):
                visit(child, (*trail, path))
            seen[path] = "done"

    for name in (build_table.SOURCE, *build_table.HEADERS):
        visit((MODEL / name).resolve(), ())


@needs_compiler
@pytest.mark.skipif(not build_table.is_x86(), reason="the x86/ headers need an x86 compiler")
@pytest.mark.parametrize("level", list(X86))
@pytest.mark.parametrize("header", list(build_table.HEADERS))
def test_each_header_compiles_alone(header, level):
    """Each header is self-contained: included alone, with the flags of a level it is written for,
    it compiles (its own includes, no function it calls undeclared); an x86/ header refuses a level
    below its own with its #error."""
    flags = [*build_table.COMMON_FLAGS, *X86[level].flags, "-fsyntax-only", "-Werror=implicit-function-declaration",
             "-I", str(MODEL)]
    result = subprocess.run([COMPILER, *flags, "-x", "c", "-"], input=f'#include "{header}"\n', capture_output=True,
                            text=True, check=False)
    order = list(X86)
    if order.index(level) >= order.index(build_table.HEADERS[header]):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and "#error" in result.stderr, result.stderr


SETUP_PROBE = """
import json, runpy, sys, setuptools
seen = {}
setuptools.setup = lambda **kw: seen.update(kw)
runpy.run_path(sys.argv[1], run_name="__main__")
print(json.dumps([[e.name, e.sources, e.depends, e.extra_compile_args] for e in seen["ext_modules"]]))
"""


@pytest.mark.skipif(not (REPO / "setup.py").is_file(), reason="needs the source tree's setup.py")
def test_setup_builds_the_levels_of_the_table():
    """setup.py reads build_table.py (by its path) for what it builds: the same levels, flags and
    sources as kernels_loader loads and compiles."""
    out = subprocess.run([sys.executable, "-c", SETUP_PROBE, str(REPO / "setup.py")], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    built = {name: (sources, depends, flags) for name, sources, depends, flags in json.loads(out)}
    assert list(built) == [build_table.extension_name(level) for level in build_table.LEVELS]
    for level in build_table.LEVELS.values():
        sources, depends, flags = built[build_table.extension_name(level.name)]
        assert sources == [f"lmgen/model/{build_table.SOURCE}"]
        assert depends == [f"lmgen/model/{header}" for header in build_table.HEADERS]
        assert flags == [*build_table.COMMON_FLAGS, *level.flags]
    assert kernels_loader.LEVELS == tuple(reversed(build_table.LEVELS))
    assert kernels_loader.SOURCE == MODEL / build_table.SOURCE


def test_the_package_holds_a_build_of_each_level_of_the_table():
    """The installed package (a wheel in CI) carries one build per level of the table: the levels
    setup.py built are the levels the loader looks for."""
    assert set(kernels_loader.packaged_builds()) == set(build_table.LEVELS)
