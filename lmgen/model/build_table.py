"""The native kernels' builds, in one table: setup.py builds a library of the package per level
(``lmgen/model/_kernels_<level>*.so``) and kernels_loader.py loads the best one this CPU runs,
as llama.cpp's GGML_CPU_ALL_VARIANTS builds and scores its CPU variants.

A level is its compiler flags and every CPU feature those flags let the compiler use, named as
Linux's /proc/cpuinfo names them (a test compares them with the macros the compiler defines for
the flags): a CPU runs a level only if it has them all. AMX is not a level's: the avx512 build
asks for it at run time (csrc/x86/amx.h's amx_enable) and uses it where the CPU has it.

Imports nothing but the standard library: setup.py loads this file by its path, before lmgen
is installed (and lmgen inspect names the level without importing torch).
"""

from __future__ import annotations

import platform
from typing import NamedTuple


class Level(NamedTuple):
    name: str
    flags: tuple[str, ...]  # for the compiler, besides COMMON_FLAGS
    features: tuple[str, ...]  # what the flags enable, as /proc/cpuinfo's flags name them


_AVX2_FLAGS = ("-mavx2", "-mfma", "-mf16c")
# -mavx2 enables AVX and the SSE levels below it, POPCNT and XSAVE too (x86-64's baseline is SSE2);
# SSE3 is "pni" in /proc/cpuinfo.
_AVX2_FEATURES = ("pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "xsave", "avx", "avx2", "fma", "f16c")

X86_LEVELS = (  # worst first
    Level("portable", (), ()),  # the compiler's baseline for the target (SSE2 on x86-64)
    Level("avx2", _AVX2_FLAGS, _AVX2_FEATURES),
    Level("avx512", _AVX2_FLAGS + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"),
          _AVX2_FEATURES + ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")),
)
OTHER_LEVELS = (Level("portable", (), ()),)  # elsewhere (NEON on arm64: the baseline)


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def levels(machine: str | None = None) -> dict[str, Level]:
    """The levels built for a machine (default: this one), worst first."""
    return {level.name: level for level in (X86_LEVELS if is_x86(machine) else OTHER_LEVELS)}


LEVELS = levels()

# Every build: optimised, loops unrolled, OpenMP threads (setup.py retries a level without OpenMP
# for a compiler that has none, such as Apple's clang: one thread, still vectorised).
COMMON_FLAGS = ("-O3", "-funroll-loops", "-fopenmp")
# LMGEN_KERNELS=native: compiled for this very CPU, into lmgen's cache, on first use.
NATIVE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-funroll-loops", "-shared", "-fPIC")


def serial(flags) -> list[str]:
    """flags for a compiler without OpenMP: one thread, still vectorised (the loops' simd pragmas)."""
    return [f if f != "-fopenmp" else "-fopenmp-simd" for f in flags]


# The sources, relative to lmgen/model/: one translation unit and the headers it includes, each
# with the lowest level it is written for (the x86/ ones need that level's flags; the others
# compile at every level, taking the x86 paths the flags allow).
SOURCE = "csrc/kernels.c"
HEADERS = {
    "csrc/common.h": "portable",
    "csrc/abi.h": "portable",
    "csrc/dot.h": "portable",
    "csrc/quant.h": "portable",
    "csrc/kquant.h": "portable",
    "csrc/amx.h": "portable",
    "csrc/attention.h": "portable",
    "csrc/project.h": "portable",
    "csrc/x86/dot.h": "avx512",
    "csrc/x86/quant.h": "avx2",
    "csrc/x86/kquant.h": "avx2",
    "csrc/x86/amx.h": "avx512",
    "csrc/x86/attention.h": "avx512",
}


def extension_name(level: str) -> str:
    """The module name of a level's build (a file of the package: ``lmgen/model/_kernels_<level>*.so``)."""
    return f"lmgen.model._kernels_{level}"


def runnable(features: frozenset[str] | set[str], table: dict[str, Level] | None = None) -> list[str]:
    """The levels a CPU with these features runs, best first (as ggml_backend_cpu_x86_score: a
    level counts only if the CPU has every feature it lists; portable always)."""
    table = LEVELS if table is None else table
    return [level.name for level in reversed(table.values()) if set(level.features) <= set(features)]
