"""Finding, building and loading the native kernels (csrc/kernels.c), checked before use.

They are built when the package is built (setup.py), once per instruction set level of
build_table.py — AVX-512 VNNI, AVX2, portable C — and the best level whose features this CPU all
has is loaded (runtime dispatch: a wheel runs anywhere, with no compiler). LMGEN_KERNELS=native
compiles them for this very CPU instead (-march=native, into lmgen's cache, on first use);
LMGEN_KERNELS=0 turns them off. Without them lmgen falls back to torch: the same results up to
float rounding, much slower (loading says so in a note). A library whose structs or codes differ
from Python's mirrors (kernels_abi) is refused with one line, never used.

Imports no torch (lmgen inspect names the level the kernels run at): declare does, when a
library is loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from lmgen.environment import choice
from lmgen.model import build_table, kernels_abi

HERE = Path(__file__).parent
SOURCE = HERE / build_table.SOURCE
HEADERS = [HERE / header for header in build_table.HEADERS]  # included by kernels.c
FLAGS = list(build_table.NATIVE_FLAGS)
SERIAL_FLAGS = build_table.serial(FLAGS)  # for a compiler without OpenMP (Apple's clang)
LEVELS = tuple(reversed(build_table.LEVELS))  # the builds setup.py makes, best first
SLOWER = "about 10x slower with float weights and 500x with block-quantized ones"
unavailable: str | None = None  # why library() is None, if it is (loading turns it into a note)
loaded_level: str | None = None  # the level of what library() loaded ("native": compiled for this CPU)


@lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """This CPU's instruction set features, as Linux's /proc/cpuinfo names them (the ones the
    kernel lets a process use); on macOS from sysctl, renamed alike; elsewhere none known (the
    portable build then, or LMGEN_KERNELS=native)."""
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        return frozenset(line.partition(":")[2].split())
    except (OSError, StopIteration):
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                                 capture_output=True, text=True, timeout=5, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        renamed = {"sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx1.0": "avx", "avx512vnni": "avx512_vnni"}
        return frozenset(renamed.get(name, name) for name in out.lower().split())
    return frozenset()


def cpu_levels(features: frozenset[str] | None = None) -> list[str]:
    """The levels this CPU runs (or one with ``features``), best first."""
    return build_table.runnable(cpu_features() if features is None else features)


def cpu_level(features: frozenset[str] | None = None) -> str:
    """The best level this CPU runs: the highest whose features it all has."""
    return cpu_levels(features)[0]


def packaged_builds() -> dict[str, Path]:
    """level -> the kernels built with the package at that level (setup.py), as installed."""
    return {level: found[0] for level in LEVELS if (found := sorted(HERE.glob(f"_kernels_{level}.*so")))}


def best_level(builds: dict[str, Path], features: frozenset[str] | None = None) -> str | None:
    """The best level among ``builds`` that this CPU (or one with ``features``) runs."""
    return next((level for level in cpu_levels(features) if level in builds), None)


def kernel_level() -> str:
    """The level of the kernels in use: a packaged build's (avx512, avx2, portable), "native"
    (compiled for this CPU) or "none" (off, or not to be had: torch's own products). Before they
    are loaded, the level they would load at, without loading them."""
    if library.cache_info().currsize:
        return loaded_level or "none"
    mode = choice("LMGEN_KERNELS", ("1", "native", "0"), "1")
    if mode == "0":
        return "none"
    return (best_level(packaged_builds()) if mode == "1" else None) or "native"


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The kernels, or None when they cannot be had (torch is used instead, and ``unavailable``
    says why). The build made with the package for the best instruction set this CPU has; with
    LMGEN_KERNELS=native, or in a source tree nobody built, one compiled for this very CPU
    (-march=native) into lmgen's cache on first use; with LMGEN_KERNELS=0, none. An
    EnvironmentFailure for one that does not match this Python (kernels_abi.check)."""
    global unavailable, loaded_level
    mode = choice("LMGEN_KERNELS", ("1", "native", "0"), "1")
    amx = choice("LMGEN_AMX", ("1", "0"), "1")  # checked whether or not the kernels load
    loaded_level = None
    if mode == "0":
        return None
    try:
        level, lib = (None, None) if mode == "native" else _packaged()
        if lib is None:
            level, lib = "native", _native()
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable = f"lmgen's native kernels are not available ({_reason(exc)}): decode is {SLOWER}"
        return None
    lib = declare(lib, amx == "1")
    loaded_level = level
    return lib


def _packaged() -> tuple[str | None, ctypes.CDLL | None]:
    builds = packaged_builds()
    level = best_level(builds)
    return (None, None) if level is None else (level, ctypes.CDLL(str(builds[level])))


def _cpu_fingerprint() -> str:
    """-march=native code must not run on another CPU sharing the cache directory."""
    return platform.machine() + " ".join(sorted(cpu_features()))


def _native() -> ctypes.CDLL:
    sources = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
    from lmgen.formats.home import cache_dir

    key = hashlib.sha256(sources + " ".join(FLAGS).encode() + _cpu_fingerprint().encode())
    target = cache_dir() / "kernels" / f"lmgen-kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(target)
    return ctypes.CDLL(str(target))


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        try:
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            subprocess.run([compiler, *SERIAL_FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True)
        os.replace(built, target)  # atomic: concurrent builders never see half a file


def _reason(exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return "the C compiler failed on kernels.c"
    if "no C compiler" in str(exc):
        return "this install has no built kernels and there is no C compiler to build them"
    return str(exc)


def declare(lib: ctypes.CDLL, amx: bool | None = None) -> ctypes.CDLL:
    """Check that the library matches this Python (kernels_abi.check: an EnvironmentFailure if not),
    then give its functions their C signatures (decode_layers': ``decode_plan``, with its structs);
    ``amx``: use AMX tiles for batches (default: unless LMGEN_AMX=0)."""
    import torch

    kernels_abi.check(lib)
    i64, ptr, int_ = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.gemv.argtypes = [int_] + [ptr] * 3 + [i64] * 3
    lib.gemv.restype = None
    lib.pack_blocks.argtypes = [ptr, ptr, i64, i64, int_, int_, int_]
    lib.pack_blocks.restype = None
    lib.set_threads.argtypes = [int_]
    lib.set_threads.restype = None
    lib.set_threads(torch.get_num_threads())
    lib.amx_enable.argtypes = [int_]
    lib.amx_enable.restype = int_
    lib.amx_tile_count.argtypes = []
    lib.amx_tile_count.restype = i64  # tile products computed so far (tests)
    if amx is None:
        amx = choice("LMGEN_AMX", ("1", "0"), "1") == "1"
    lib.amx_enable(amx)  # AMX tiles for batches, where the CPU has them (LMGEN_AMX=0: never)
    return lib
