"""Native matrix-vector kernels for decoding (see kernels.c), loaded with ctypes.

PyTorch's CPU matmul reaches about 10 GB/s on a one-row product here, well short
of the ~25 GB/s the memory delivers; these kernels stream the weights at close to
that. They are built when the package is built (setup.py), once per instruction set
level — AVX-512 VNNI, AVX2, portable C — and the best level the CPU has is loaded
(runtime dispatch: a wheel runs anywhere, with no compiler). LMGEN_KERNELS=native
compiles them for this very CPU instead (-march=native, into lmgen's cache, on first
use); LMGEN_KERNELS=0 turns them off. Without them lmgen falls back to torch: the same
results up to float rounding, much slower (loading says so in a note).
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

import torch
from torch import Tensor

from lmgen.environment import choice
from lmgen.model.threads import thread_count

SOURCE = Path(__file__).with_name("kernels.c")
HEADERS = [Path(__file__).with_name(name)  # included by kernels.c
           for name in ("kernels_dot.h", "kernels_quant.h", "kernels_kquant.h", "kernels_amx.h", "kernels_attention.h",
                         "kernels_project.h")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-funroll-loops", "-shared", "-fPIC"]
# For a compiler without OpenMP (Apple's clang): one thread, still vectorised.
SERIAL_FLAGS = [f if f != "-fopenmp" else "-fopenmp-simd" for f in FLAGS]
# Above this many rows (a long prompt) torch's matmul is the better tool.
MAX_ROWS = {torch.float32: 16, torch.bfloat16: 16}
WEIGHT_CODES = {torch.float32: 0, torch.bfloat16: 1}  # the float weight dtypes kernels.c reads (blocks: lmgen.model.quant)


def _cpu_fingerprint() -> str:
    """-march=native code must not run on another CPU sharing the cache directory."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


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


LEVELS = ("avx512", "avx2", "portable")  # the builds setup.py makes, best first (cpu_level's 2, 1, 0)
SLOWER = "about 10x slower with float weights and 500x with block-quantized ones"
unavailable: str | None = None  # why library() is None, if it is (loading turns it into a note)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The kernels, or None when they cannot be had (torch is used instead, and ``unavailable``
    says why). The build made with the package for the best instruction set this CPU has; with
    LMGEN_KERNELS=native, or in a source tree nobody built, one compiled for this very CPU
    (-march=native) into lmgen's cache on first use; with LMGEN_KERNELS=0, none."""
    global unavailable
    mode = choice("LMGEN_KERNELS", ("1", "native", "0"), "1")
    amx = choice("LMGEN_AMX", ("1", "0"), "1")  # checked whether or not the kernels load
    if mode == "0":
        return None
    try:
        lib = _native() if mode == "native" else (_packaged() or _native())
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable = f"lmgen's native kernels are not available ({_reason(exc)}): decode is {SLOWER}"
        return None
    return declare(lib, amx == "1")


def packaged_builds() -> dict[str, Path]:
    """level -> the kernels built with the package at that level (setup.py), as installed."""
    here = Path(__file__).parent
    return {level: found[0] for level in LEVELS if (found := sorted(here.glob(f"_kernels_{level}.*so")))}


def best_level(builds: dict[str, Path]) -> str | None:
    """The best level among ``builds`` that this CPU runs (asked of the portable build, whose
    cpu_level uses the compiler's __builtin_cpu_supports)."""
    if "portable" not in builds:
        return None
    probe = ctypes.CDLL(str(builds["portable"]))
    probe.cpu_level.restype = ctypes.c_int
    runs = LEVELS[len(LEVELS) - 1 - probe.cpu_level():]
    return next((level for level in runs if level in builds), None)


def _packaged() -> ctypes.CDLL | None:
    builds = packaged_builds()
    level = best_level(builds)
    return None if level is None else ctypes.CDLL(str(builds[level]))


def _native() -> ctypes.CDLL:
    sources = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
    from lmgen.formats.home import cache_dir

    key = hashlib.sha256(sources + " ".join(FLAGS).encode() + _cpu_fingerprint().encode())
    target = cache_dir() / "kernels" / f"lmgen-kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(target)
    return ctypes.CDLL(str(target))


def _reason(exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return "the C compiler failed on kernels.c"
    if "no C compiler" in str(exc):
        return "this install has no built kernels and there is no C compiler to build them"
    return str(exc)


def declare(lib: ctypes.CDLL, amx: bool | None = None) -> ctypes.CDLL:
    """Give the library's functions their C signatures (decode_layers': ``decode_plan``, with its
    structs); ``amx``: use AMX tiles for batches (default: unless LMGEN_AMX=0)."""
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


def use_threads(count: int | None) -> int:
    """Use count threads (default: $LMGEN_THREADS, else the cores available to this process)
    for torch and the kernels; the count used."""
    count = thread_count(count)
    torch.set_num_threads(count)
    set_threads(count)
    return count


def set_threads(count: int) -> None:
    """Threads for the kernels' parallel regions (torch's own count is set apart): the most a
    decode step uses; its ThreadTuner may use fewer."""
    global max_threads
    max_threads = count
    lib = library()
    if lib is not None:
        lib.set_threads(count)


max_threads = torch.get_num_threads()


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernels can compute x @ weight.T: few rows, CPU, contiguous weight."""
    return (
        x.device.type == "cpu"
        and weight.is_contiguous()
        and weight.dtype in WEIGHT_CODES
        and x.numel() <= MAX_ROWS[weight.dtype] * weight.shape[1]
        and library() is not None
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, for x of shape (..., in_features)."""
    n_out, n_in = weight.shape
    rows = x.reshape(-1, n_in).to(torch.float32).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    library().gemv(WEIGHT_CODES[weight.dtype], weight.data_ptr(), rows.data_ptr(), out.data_ptr(),
                   n_out, n_in, rows.shape[0])
    out = out.view(*x.shape[:-1], n_out).to(x.dtype)
    return out if bias is None else out + bias


def block_usable(x: Tensor) -> bool:
    """Whether the kernels can multiply x by block-quantized weights (any number of rows: they
    are the only fast way to, and prefill then computes exactly what decode does)."""
    return x.device.type == "cpu" and library() is not None


def block_linear(x: Tensor, packed: Tensor, fmt, n_out: int, n_in: int, bias: Tensor | None = None) -> Tensor:
    """x @ W.T + bias for W (n_out, n_in) stored as blocks of ``fmt`` packed by lmgen.model.quant.pack."""
    rows = x.reshape(-1, n_in).to(torch.float32).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    library().gemv(fmt.code, packed.data_ptr(), rows.data_ptr(), out.data_ptr(), n_out, n_in, rows.shape[0])
    out = out.view(*x.shape[:-1], n_out).to(x.dtype)
    return out if bias is None else out + bias
