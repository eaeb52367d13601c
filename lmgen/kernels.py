"""Native matrix-vector kernels for decoding, built on first use (see kernels.c).

PyTorch's CPU matmul reaches about 10 GB/s on a one-row product here, well short
of the ~25 GB/s the memory delivers; these kernels stream the weights at close to
that. They are compiled with the machine's C compiler into lmgen's cache the
first time they are needed (about a quarter of a second) and loaded with ctypes.
Without a compiler, or with LMGEN_KERNELS=0, lmgen falls back to torch: slower,
same results up to float rounding.
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

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-funroll-loops", "-shared", "-fPIC"]
MAX_ROWS = 16  # above this many rows (a long prompt) torch's matmul is the better tool


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
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True)
        os.replace(built, target)  # atomic: concurrent builders never see half a file


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be had (torch is used instead)."""
    if os.environ.get("LMGEN_KERNELS", "1") == "0":
        return None
    from lmgen.paths import cache_dir

    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_fingerprint().encode())
    target = cache_dir() / "kernels" / f"lmgen-kernels-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError):
        return None
    pointers, sizes = [ctypes.c_void_p] * 3, [ctypes.c_int64] * 3
    lib.gemv_f32.argtypes = pointers + sizes
    lib.gemv_bf16.argtypes = pointers + sizes
    lib.gemv_i8.argtypes = [ctypes.c_void_p] + pointers + sizes
    for fn in (lib.gemv_f32, lib.gemv_bf16, lib.gemv_i8):
        fn.restype = None
    return lib


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernels can compute x @ weight.T: few rows, CPU, contiguous weight."""
    return (
        x.device.type == "cpu"
        and weight.is_contiguous()
        and x.numel() <= MAX_ROWS * weight.shape[1]
        and weight.dtype in (torch.float32, torch.bfloat16, torch.int8)
        and library() is not None
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x @ weight.T (* scale per output row) + bias, for x of shape (..., in_features)."""
    lib = library()
    n_out, n_in = weight.shape
    rows = x.reshape(-1, n_in).to(torch.float32).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    args = (rows.data_ptr(), out.data_ptr(), n_out, n_in, rows.shape[0])
    if weight.dtype == torch.int8:
        lib.gemv_i8(weight.data_ptr(), scale.data_ptr(), *args)
    elif weight.dtype == torch.bfloat16:
        lib.gemv_bf16(weight.data_ptr(), *args)
    else:
        lib.gemv_f32(weight.data_ptr(), *args)
    out = out.view(*x.shape[:-1], n_out).to(x.dtype)
    return out if bias is None else out + bias
