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
# For a compiler without OpenMP (Apple's clang): one thread, still vectorised.
SERIAL_FLAGS = [f if f != "-fopenmp" else "-fopenmp-simd" for f in FLAGS]
MAX_ROWS = 16  # above this many rows (a long prompt) torch's matmul is the better tool
WEIGHT_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # the weight dtypes kernels.c reads


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
    return declare(lib)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the library's functions their C signatures."""
    i64, ptr, flt, int_ = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    lib.gemv.argtypes = [int_] + [ptr] * 4 + [i64] * 3
    lib.gemv.restype = None
    lib.decode_block.argtypes = (
        [ptr, i64, i64, int_, flt] + [ptr] * 4 + [int_, ptr]
        + [i64, i64, i64, i64, int_] + [ptr, ptr, i64, i64, i64] + [ptr, ptr, i64]
    )
    lib.decode_block.restype = None
    return lib


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernels can compute x @ weight.T: few rows, CPU, contiguous weight."""
    return (
        x.device.type == "cpu"
        and weight.is_contiguous()
        and x.numel() <= MAX_ROWS * weight.shape[1]
        and weight.dtype in WEIGHT_CODES
        and library() is not None
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x @ weight.T (* scale per output row) + bias, for x of shape (..., in_features)."""
    n_out, n_in = weight.shape
    rows = x.reshape(-1, n_in).to(torch.float32).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    library().gemv(WEIGHT_CODES[weight.dtype], weight.data_ptr(), _ptr(scale), rows.data_ptr(), out.data_ptr(),
                   n_out, n_in, rows.shape[0])
    out = out.view(*x.shape[:-1], n_out).to(x.dtype)
    return out if bias is None else out + bias


NORM_CODES = {"rmsnorm": 0, "layernorm": 1}
MLP_CODES = {("swiglu", "silu"): 0, ("gelu", "gelu_tanh"): 1, ("gelu", "gelu"): 2}


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _projections(block) -> list:
    """The block's projections in the order decode_block takes them (gate is None for GELU)."""
    attn, mlp = block.attn, block.mlp
    return [attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up, mlp.down]


def block_supported(block, x: Tensor, cache) -> bool:
    """Whether decode_block can run this block: one new fp32 token per sample on the CPU."""
    layers = [layer for layer in _projections(block) if layer is not None]
    dtypes = {layer.weight.dtype for layer in layers}
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[1] == 1
        and cache is not None
        and cache.k.dtype == torch.float32
        and len(dtypes) == 1
        and dtypes.pop() in WEIGHT_CODES
        and all(layer.weight.is_contiguous() for layer in layers)
        and block.attn_norm.weight.dtype == torch.float32
        and library() is not None
    )


def _block_pointers(block):
    """A C array of (weight, scale, bias) pointers per projection, NULL where there is none.

    Built once per block and reused while the tensors stay where they are: building it
    costs more than the arithmetic of a small layer.
    """
    tensors = []
    for layer in _projections(block):
        tensors += (None, None, None) if layer is None else (layer.weight, getattr(layer, "scale", None), layer.bias)
    key = tuple(t.data_ptr() if t is not None else None for t in tensors)
    cached = block.__dict__.get("_native_pointers")
    if cached is None or cached[0] != key:
        cached = key, (ctypes.c_void_p * len(key))(*key)
        block.__dict__["_native_pointers"] = cached
    return cached[1]


def decode_block(block, x: Tensor, ctx, layer: int) -> None:
    """Run one Block on x (batch, 1, d_model) in place, appending to the KV cache."""
    cfg = block.attn.cfg
    k_cache, v_cache = ctx.cache.k[layer], ctx.cache.v[layer]
    cos, sin = ctx.rope if ctx.rope is not None else (None, None)
    library().decode_block(
        x.data_ptr(), x.shape[0], cfg.d_model, NORM_CODES[cfg.norm], cfg.norm_eps,
        block.attn_norm.weight.data_ptr(), _ptr(getattr(block.attn_norm, "bias", None)),
        block.mlp_norm.weight.data_ptr(), _ptr(getattr(block.mlp_norm, "bias", None)),
        WEIGHT_CODES[block.attn.q.weight.dtype],
        _block_pointers(block),
        cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_mlp, MLP_CODES[(cfg.mlp, cfg.activation)],
        k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1), ctx.start_pos,
        _ptr(cos), _ptr(sin), cfg.sliding_window or 0,
    )
