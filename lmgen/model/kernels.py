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
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from lmgen.environment import choice
from lmgen.model.threads import ThreadTuner, other_runnable, thread_count

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
    """Give the library's functions their C signatures; ``amx``: use AMX tiles for batches
    (default: unless LMGEN_AMX=0)."""
    i64, ptr, int_ = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.gemv.argtypes = [int_] + [ptr] * 3 + [i64] * 3
    lib.gemv.restype = None
    lib.decode_layers.argtypes = [ctypes.POINTER(Shape), ptr, i64, ctypes.POINTER(Layer), ptr, ptr, ptr, ptr] \
        + [i64] * 3 + [ptr, ptr]
    lib.decode_layers.restype = None
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


NORM_CODES = {"rmsnorm": 0, "layernorm": 1}
ACTIVATION_CODES = {"silu": 0, "gelu_tanh": 1, "gelu": 2}
QK_NORM_CODES = {None: 0, "head": 1, "projection": 2}
ROPE_TABLES = ("global", "local")  # a layer's rotary table, as an index into the cos and sin passed


class Shape(ctypes.Structure):
    """kernels.c's Shape: the model's sizes and its family's choices."""

    _fields_ = [(name, ctypes.c_int64) for name in ("d", "n_heads", "n_kv", "hd", "d_mlp", "rope_dim", "n_layers")] \
        + [(name, ctypes.c_int) for name in ("norm_kind", "qk_norm", "gated", "activation")] \
        + [(name, ctypes.c_float) for name in ("eps", "norm_offset", "attn_scale", "attn_softcap")] \
        + [("kv_bf16", ctypes.c_int)]  # set per step from the cache's dtype

    @classmethod
    def of(cls, cfg) -> "Shape":
        return cls(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_mlp, cfg.rotary_dim, cfg.n_layers,
                   NORM_CODES[cfg.norm], QK_NORM_CODES[cfg.qk_norm], cfg.mlp == "gated",
                   ACTIVATION_CODES[cfg.activation],
                   cfg.norm_eps, cfg.norm_offset, cfg.attn_scale or cfg.head_dim**-0.5, cfg.attn_softcap or 0.0)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


NORMS = ("attn_norm_w", "attn_norm_b", "attn_post_w", "mlp_norm_w", "mlp_norm_b", "mlp_post_w", "q_norm_w", "k_norm_w")
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


class Weights(ctypes.Structure):
    """kernels.c's Weights: a projection's weight and bias (NULL where none), and the weight's
    format (``weight_code``)."""

    _fields_ = [("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("format", ctypes.c_int64)]


class Layer(ctypes.Structure):
    """kernels.c's Layer: one block's norms and projections, its window and rotary table."""

    _fields_ = [(name, ctypes.c_void_p) for name in NORMS] + [(name, Weights) for name in PROJECTIONS] \
        + [("window", ctypes.c_int64), ("rope", ctypes.c_int64)]


def weight_code(linear) -> int | None:
    """The number kernels.c gives a projection's weight format (None: one it cannot read)."""
    fmt = getattr(linear, "format", None)
    return fmt.code if fmt is not None else WEIGHT_CODES.get(linear.weight.dtype)


def _layer_tensors(block) -> dict[str, Tensor | tuple | None]:
    """A block's tensors by Layer field: the norms (None where the family has none), then
    (weight, bias, weight code) for each projection (gate is None for a plain MLP)."""
    attn, mlp = block.attn, block.mlp
    norms = (block.attn_norm, "weight"), (block.attn_norm, "bias"), (block.attn_post_norm, "weight"), \
        (block.mlp_norm, "weight"), (block.mlp_norm, "bias"), (block.mlp_post_norm, "weight"), \
        (attn.q_norm, "weight"), (attn.k_norm, "weight")
    tensors = {name: getattr(module, attr, None) for name, (module, attr) in zip(NORMS, norms)}
    for name, layer in zip(PROJECTIONS, (attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up, mlp.down)):
        tensors[name] = None if layer is None else \
            (layer.weight, layer.bias, weight_code(layer))
    return tensors


def _layer(cfg, index: int, tensors: dict) -> Layer:
    layer = Layer(window=cfg.layer_window(index) or 0,
                  rope=-1 if cfg.layer_rope(index) is None else ROPE_TABLES.index(cfg.layer_rope(index)))
    for name in NORMS:
        setattr(layer, name, _ptr(tensors[name]))
    for name in PROJECTIONS:
        if tensors[name] is not None:
            *parts, code = tensors[name]
            setattr(layer, name, Weights(*(_ptr(t) for t in parts), code))
    return layer


class DecodePlan:
    """A Decoder's decode step — every block, one new token per sample — as one native call.

    Holds the Layer structs kernels.c reads and the tensors they point into, so the pointers
    stay valid. A plan is made with each KV cache, that is once per generation: weights
    swapped in the middle of one are seen from the next.
    """

    def __init__(self, cfg, layers: list[dict]):
        self.cfg = cfg
        self.shape = Shape.of(cfg)
        self.tensors = layers  # keeps what the structs point into alive
        self.layers = (Layer * cfg.n_layers)(*(_layer(cfg, i, tensors) for i, tensors in enumerate(layers)))
        self.tuner = ThreadTuner(max_threads, runnable=other_runnable)
        library().set_threads(max_threads)  # the kernels outside decode steps (prefill, the LM head) start from here
        torch.set_num_threads(max_threads)  # as torch's ops do (the last tuner may have left fewer)

    def run(self, x: Tensor, cache, positions: Tensor, rows: Tensor, rope: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Run every block on x (M, 1, d_model), contiguous fp32, in place: row m is the token at
        positions[m] of the sequence in cache row rows[m] (int64 tensors), whose keys and values
        it appends; rope holds one (M, rotary_dim) cos and sin table per kind."""
        if cache.k.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the native decode step reads an fp32 or bf16 KV cache, not {cache.k.dtype}")
        self.shape.kv_bf16 = cache.k.dtype == torch.bfloat16
        tables = [rope.get(kind, (None, None)) for kind in ROPE_TABLES]
        cos = (ctypes.c_void_p * len(tables))(*(_ptr(c) for c, _ in tables))
        sin = (ctypes.c_void_p * len(tables))(*(_ptr(s) for _, s in tables))
        library().decode_layers(
            ctypes.byref(self.shape), x.data_ptr(), x.shape[0], self.layers, cos, sin,
            cache.k.data_ptr(), cache.v.data_ptr(), cache.k.stride(0), cache.k.stride(1), cache.k.stride(2),
            rows.data_ptr(), positions.data_ptr(),
        )

    @contextmanager
    def timed_step(self):
        """One decode step (blocks and LM head) with the thread count the tuner picks, timed for it."""
        threads = self.tuner.pick()
        library().set_threads(threads)
        if torch.get_num_threads() != threads:  # torch's ops between steps too (the argmax over the
            torch.set_num_threads(threads)  # vocabulary, the NaN check): two threads beside a busy
        start = time.perf_counter()  # process cost 2 ms a token there
        yield
        self.tuner.record(threads, time.perf_counter() - start)


def decode_plan(model) -> DecodePlan | None:
    """The model's native decode step, or None where the kernels cannot run it: not on the
    CPU, activations not fp32, a weight format it cannot read, or no compiled library. The
    projections may differ in format (a GGUF file mixes them), each read as it is stored."""
    layers = [_layer_tensors(block) for block in model.blocks]
    projections = [layer[name] for layer in layers for name in PROJECTIONS if layer[name] is not None]
    weights = [weight for weight, _, _ in projections]
    codes = {code for _, _, code in projections}
    vectors = [layer[name] for layer in layers for name in NORMS if layer[name] is not None] + \
        [bias for _, bias, _ in projections if bias is not None]
    usable = (
        model.device.type == "cpu"
        and model.dtype == torch.float32
        and None not in codes
        and all(w.is_contiguous() for w in weights)
        and all(v.dtype == torch.float32 and v.is_contiguous() for v in vectors)
        and library() is not None
    )
    return DecodePlan(model.cfg, layers) if usable else None
