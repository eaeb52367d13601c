"""The native decode step (csrc/kernels.c's decode_layers): every block of a Decoder, one new
token per row, in one call — the structs it reads (kernels_abi's Shape, Layer, Weights) built
from the model, and the ThreadTuner that picks each step's threads."""

from __future__ import annotations

import ctypes
import time
from contextlib import contextmanager

import torch
from torch import Tensor

from lmgen.model import kernels
from lmgen.model.kernels_abi import KV_CODES, NORMS, PROJECTIONS, Layer, Shape, Weights
from lmgen.model.kv_cache import PAGE
from lmgen.model.threads import ThreadTuner, other_runnable


KV_KINDS = {torch.float32: KV_CODES["f32"], torch.bfloat16: KV_CODES["bf16"], torch.int8: KV_CODES["q8"]}
ROPE_TABLES = ("global", "local")  # a layer's rotary table, as an index into the cos and sin passed


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def weight_code(linear) -> int | None:
    """The number kernels.c gives a projection's weight format (kernels_abi.FORMAT_CODES; None:
    one it cannot read)."""
    fmt = getattr(linear, "format", None)
    return fmt.code if fmt is not None else kernels.WEIGHT_CODES.get(linear.weight.dtype)


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


def _declare(lib: ctypes.CDLL) -> None:
    """decode_layers' C signature, with kernels_abi's structs (kernels_loader.declare gives the others)."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.decode_layers.argtypes = [ctypes.POINTER(Shape), ptr, i64, ctypes.POINTER(Layer), ptr, ptr, ptr, ptr, ptr, ptr] \
        + [i64] * 4 + [ptr, i64, ptr, ptr]
    lib.decode_layers.restype = None


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
        _declare(kernels.library())
        self.layers = (Layer * cfg.n_layers)(*(_layer(cfg, i, tensors) for i, tensors in enumerate(layers)))
        self.tuner = ThreadTuner(kernels.max_threads, runnable=other_runnable)
        kernels.library().set_threads(kernels.max_threads)  # the kernels outside decode steps (prefill, the LM head) start from here
        torch.set_num_threads(kernels.max_threads)  # as torch's ops do (the last tuner may have left fewer)

    def run(self, x: Tensor, cache, positions: Tensor, rows: Tensor, rope: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Run every block on x (M, 1, d_model), contiguous fp32, in place: row m is the token at
        positions[m] of the sequence in cache row rows[m] (int64 tensors), whose keys and values
        it appends (in pages the cache has reserved for it); rope holds one (M, rotary_dim) cos and
        sin table per kind."""
        if cache.k.dtype not in KV_KINDS:
            raise ValueError(f"the native decode step reads an fp32, bf16 or q8_0 KV cache, not {cache.k.dtype}")
        self.shape.kv_kind, self.shape.kv_block = KV_KINDS[cache.k.dtype], cache.q8_block
        tables = [rope.get(kind, (None, None)) for kind in ROPE_TABLES]
        cos = (ctypes.c_void_p * len(tables))(*(_ptr(c) for c, _ in tables))
        sin = (ctypes.c_void_p * len(tables))(*(_ptr(s) for _, s in tables))
        cache.pages_at(rows, positions)  # ValueError where a row writes a position it has no page for
        table = cache.table
        kernels.library().decode_layers(
            ctypes.byref(self.shape), x.data_ptr(), x.shape[0], self.layers, cos, sin,
            cache.k.data_ptr(), cache.v.data_ptr(), _ptr(cache.k_scale), _ptr(cache.v_scale), cache.k.stride(0), cache.k.stride(1), cache.k.stride(2), PAGE,
            table.data_ptr(), table.stride(0), rows.data_ptr(), positions.data_ptr(),
        )

    @contextmanager
    def timed_step(self):
        """One decode step (blocks and LM head) with the thread count the tuner picks, timed for it."""
        threads = self.tuner.pick()
        kernels.library().set_threads(threads)
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
        and kernels.library() is not None
    )
    return DecodePlan(model.cfg, layers) if usable else None
