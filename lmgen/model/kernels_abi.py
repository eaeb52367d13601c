"""What Python and the kernels' C share, and the check that a library agrees with it (its ABI).

The structs decode_layers reads (Shape, Weights, Layer: csrc/abi.h), mirrored with ctypes; the
numbers of the weight formats (csrc/common.h's one enum: ``FORMAT_CODES``, where
lmgen.model.quant's block formats and kernels.WEIGHT_CODES take theirs) and of the other codes
in Shape; and the version of it all. ``check`` compares them with what a library says it was
built with (its ``lmgen_abi``) and refuses one that differs, built from other sources than this
Python's: it would read the structs wrong and compute garbage, or crash.
"""

from __future__ import annotations

import ctypes

from lmgen.errors import EnvironmentFailure

ABI_VERSION = 1  # csrc/abi.h's LMGEN_ABI_VERSION: one more with any change to what this file mirrors

# The weight formats' numbers (csrc/common.h's W_F32...): the float rows by their torch dtype's
# short name, the blocks by lmgen.model.quant's format names. 2 is free (once fp16).
FORMAT_CODES = {"f32": 0, "bf16": 1, "q8_0": 3, "q4_0": 4, "q4_1": 5,
                "q5_0": 6, "q5_1": 7, "q4_k": 8, "q5_k": 9, "q6_k": 10}
FIRST_KQUANT = FORMAT_CODES["q5_0"]  # the C sends this code and those above it to kquant.h's tiles
KV_CODES = {"f32": 0, "bf16": 1, "q8": 2}  # Shape.kv_kind: what the KV cache holds (KV_F32, KV_BF16, KV_Q8)
NORM_CODES = {"rmsnorm": 0, "layernorm": 1}  # NORM_RMS, NORM_LAYER
ACTIVATION_CODES = {"silu": 0, "gelu_tanh": 1, "gelu": 2}  # ACT_SILU, ACT_GELU_TANH, ACT_GELU
QK_NORM_CODES = {None: 0, "head": 1, "projection": 2}  # QK_NONE, QK_HEAD, QK_PROJECTION


class Shape(ctypes.Structure):
    """csrc/abi.h's Shape: the model's sizes and its family's choices."""

    _fields_ = [(name, ctypes.c_int64) for name in ("d", "n_heads", "n_kv", "hd", "d_mlp", "rope_dim", "n_layers")] \
        + [(name, ctypes.c_int) for name in ("norm_kind", "qk_norm", "gated", "activation")] \
        + [(name, ctypes.c_float) for name in ("eps", "norm_offset", "attn_scale", "attn_softcap")] \
        + [("kv_kind", ctypes.c_int), ("kv_block", ctypes.c_int)]  # set per step from the cache (KV_CODES)

    @classmethod
    def of(cls, cfg) -> Shape:
        return cls(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_mlp, cfg.rotary_dim, cfg.n_layers,
                   NORM_CODES[cfg.norm], QK_NORM_CODES[cfg.qk_norm], cfg.mlp == "gated",
                   ACTIVATION_CODES[cfg.activation],
                   cfg.norm_eps, cfg.norm_offset, cfg.attn_scale or cfg.head_dim**-0.5, cfg.attn_softcap or 0.0)


NORMS = ("attn_norm_w", "attn_norm_b", "attn_post_w", "mlp_norm_w", "mlp_norm_b", "mlp_post_w", "q_norm_w", "k_norm_w")
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


class Weights(ctypes.Structure):
    """csrc/abi.h's Weights: a projection's weight and bias (NULL where none), and the weight's
    format (FORMAT_CODES)."""

    _fields_ = [("w", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("format", ctypes.c_int64)]


class Layer(ctypes.Structure):
    """csrc/abi.h's Layer: one block's norms and projections, its window and rotary table."""

    _fields_ = [(name, ctypes.c_void_p) for name in NORMS] + [(name, Weights) for name in PROJECTIONS] \
        + [("window", ctypes.c_int64), ("rope", ctypes.c_int64)]


def expected() -> list[tuple[str, int]]:
    """What a library matching this Python reports, in lmgen_abi's order (csrc/kernels.c), each
    value named as the C names it."""
    return [
        ("LMGEN_ABI_VERSION", ABI_VERSION),
        ("sizeof(Shape)", ctypes.sizeof(Shape)), ("sizeof(Weights)", ctypes.sizeof(Weights)),
        ("sizeof(Layer)", ctypes.sizeof(Layer)),
        *((f"W_{name.upper()}", code) for name, code in FORMAT_CODES.items()),
        *((f"KV_{name.upper()}", code) for name, code in KV_CODES.items()),
        ("NORM_RMS", NORM_CODES["rmsnorm"]), ("NORM_LAYER", NORM_CODES["layernorm"]),
        ("ACT_SILU", ACTIVATION_CODES["silu"]), ("ACT_GELU_TANH", ACTIVATION_CODES["gelu_tanh"]),
        ("ACT_GELU", ACTIVATION_CODES["gelu"]),
        ("QK_NONE", QK_NORM_CODES[None]), ("QK_HEAD", QK_NORM_CODES["head"]),
        ("QK_PROJECTION", QK_NORM_CODES["projection"]),
    ]


def reported(lib: ctypes.CDLL) -> list[int] | None:
    """What the library says it was built with (lmgen_abi), or None for one without it."""
    try:
        report = lib.lmgen_abi
    except AttributeError:
        return None
    report.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    report.restype = ctypes.c_int
    count = report(None, 0)
    values = (ctypes.c_int64 * count)()
    report(values, count)
    return list(values)


def mismatch(lib: ctypes.CDLL) -> str | None:
    """How the library differs from this Python, or None where it does not."""
    theirs, want = reported(lib), expected()
    if theirs is None:
        return "it has no lmgen_abi: it was built from older sources"
    for (name, mine), value in zip(want, theirs):
        if value != mine:
            return f"its {name} is {value}, this lmgen's {mine}"
    if len(theirs) != len(want):
        return f"it reports {len(theirs)} values, this lmgen expects {len(want)}"
    return None


def check(lib: ctypes.CDLL) -> None:
    """Refuse, with one line (EnvironmentFailure), a library that does not match this Python."""
    problem = mismatch(lib)
    if problem is not None:
        raise EnvironmentFailure(f"the native kernels {lib._name} do not match this lmgen ({problem}): reinstall "
                                 "lmgen (in a source tree: pip install -e .), or set LMGEN_KERNELS=native to compile "
                                 "them for this CPU")
