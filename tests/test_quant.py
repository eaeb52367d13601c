"""Block formats (lmgen.model.quant) and their native kernels: the gguf library's bytes, and products
equal to dequantize-then-matmul."""

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgen.model import kernels, kernels_loader
from lmgen.model.quant import FORMATS, dequantize, dequantize_rows, pack, packed_rows, quantize, unpack

GGML = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0, "q4_1": GGMLQuantizationType.Q4_1}


def awkward_weights(rows: int, k: int) -> torch.Tensor:
    """Random rows of varied scale, with the corner cases: a block of zeros, an outlier, a
    constant block, ties at the largest magnitude, values landing on rounding halves."""
    gen = torch.Generator().manual_seed(rows * 1000 + k)
    w = torch.randn(rows, k, generator=gen) * torch.rand(rows, 1, generator=gen) * 3
    w[0, :32] = 0
    w[1, 5] = 100.0
    w[2, :32] = 1.5
    w[3, :32] = torch.tensor([-2.0, 2.0] * 16)
    w[4, :32] = torch.arange(32) / 2 - 8
    return w


@pytest.mark.parametrize("name", FORMATS)
def test_blocks_are_the_gguf_librarys_bytes(name):
    w = awkward_weights(37, 96)
    ours = quantize(w, FORMATS[name])
    assert ours.dtype == torch.uint8 and ours.shape == (37, 96 // 32 * FORMATS[name].block_bytes)
    assert np.array_equal(ours.numpy(), quants.quantize(w.numpy(), GGML[name]))
    expected = quants.dequantize(ours.numpy(), GGML[name])
    assert np.array_equal(dequantize(ours, FORMATS[name]).numpy(), expected)
    ids = torch.tensor([[3, 0], [36, 3]])
    assert torch.equal(dequantize_rows(ours, FORMATS[name], ids), torch.from_numpy(expected)[ids])


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("rows", [1, 16, 37])
def test_packing_keeps_every_byte(name, rows):
    """The kernels' layout is the same blocks rearranged: unpack gives them back byte for byte,
    and embedding rows read from it are the blocks' own."""
    fmt = FORMATS[name]
    blocks = quantize(awkward_weights(max(rows, 5), 96)[:rows], fmt)
    packed = pack(blocks, fmt)
    assert packed.shape == (-(-rows // 16), 3 * 16 * fmt.block_bytes)
    assert torch.equal(unpack(packed, fmt, rows), blocks)
    head = 4 if name == "q4_1" else 2
    flip = 0x80 if name == "q8_0" else 0  # Q8 bytes are stored plus 128
    for row in range(min(rows, 2)):  # four bytes of row 0's first block, then of row 1's
        assert torch.equal(packed[0, 4 * row : 4 * row + 4], blocks[row, head : head + 4] ^ flip)
    ids = torch.tensor([[rows - 1, 0], [rows // 2, rows - 1]])
    assert torch.equal(packed_rows(packed, fmt, ids), dequantize_rows(blocks, fmt, ids))


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.randn(4, 40), FORMATS["q8_0"])


def reference(x: torch.Tensor, blocks: torch.Tensor, name: str) -> torch.Tensor:
    return F.linear(x.double(), dequantize(blocks, FORMATS[name]).double()).float()


def assert_within_rounding(y: torch.Tensor, x: torch.Tensor, blocks: torch.Tensor, name: str) -> None:
    """y equals x @ W.T up to the rounding of x to 16 bits per block of 32 (each value within
    half a step, max|x in block| / 32639, of itself) and fp32 summation."""
    w = dequantize(blocks, FORMATS[name])
    step = x.reshape(x.shape[0], -1, 32).abs().amax(-1) / 32639
    bound = 0.5 * step @ w.abs().reshape(w.shape[0], -1, 32).sum(-1).T + 1e-5 * (x.abs() @ w.abs().T) + 1e-6
    assert ((y - reference(x, blocks, name)).abs() <= bound).all(), ((y - reference(x, blocks, name)).abs() / bound).max()


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("n_out, k", [(7, 32), (70, 160), (130, 576)])
def test_kernels_equal_dequantize_then_matmul(name, n_out, k):
    fmt = FORMATS[name]
    blocks = quantize(awkward_weights(n_out, k), fmt)
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(5))
    x[2, :32] = 0  # a block of zero activations
    x[3, 7] = 50.0  # an outlier
    bias = torch.randn(n_out)
    packed = pack(blocks, fmt)
    batched = kernels.block_linear(x, packed, fmt, n_out, k, bias)
    assert_within_rounding(batched - bias, x, blocks, name)
    alone = torch.cat([kernels.block_linear(x[i : i + 1], packed, fmt, n_out, k, bias) for i in range(9)])
    assert torch.equal(batched, alone)  # any batch gives each row bit for bit what it gets alone
    assert torch.equal(kernels.block_linear(x[:5], packed, fmt, n_out, k, bias), alone[:5])


def cpu_has_amx() -> bool:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    return "amx_int8" in flags and "amx_tile" in flags


def test_amx_tiles_are_used_where_the_cpu_has_them():
    """Where the CPU has AMX int8 (and Linux grants the tile state), batches of 8 rows or more
    go through the tiles; LMGEN_AMX=0 turns them off. Elsewhere nothing asks for them."""
    lib = kernels.library()
    fmt = FORMATS["q8_0"]
    packed = pack(quantize(torch.randn(64, 128), fmt), fmt)

    def tiles_for(rows: int) -> int:
        before = lib.amx_tile_count()
        kernels.block_linear(torch.randn(rows, 128), packed, fmt, 64, 128, None)
        return lib.amx_tile_count() - before

    try:
        assert lib.amx_enable(1) == int(cpu_has_amx())
        assert tiles_for(1) == 0 and tiles_for(7) == 0  # fewer than 8 rows: VNNI
        assert (tiles_for(16) > 0) == cpu_has_amx()  # 64 weight rows × 16 rows of x: tile products
        assert lib.amx_enable(0) == 0
        assert tiles_for(16) == 0
    finally:
        lib.amx_enable(1)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(FORMATS)), rows=st.integers(1, 40), n_out=st.integers(1, 80),
       blocks=st.integers(1, 6), seed=st.integers(0, 2**31), scale=st.sampled_from([1e-30, 1.0, 1e30]))
def test_any_batch_gives_each_row_the_bits_it_gets_alone(name, rows, n_out, blocks, seed, scale):
    """Batches of 8 or more rows go through AMX tiles in chunks of 16 (the rest through VNNI),
    one row alone through VNNI: the integer block sums are exact either way and are scaled in one
    order, so every row's products are the same to the bit, whatever the batch, tiles on or off."""
    fmt, k = FORMATS[name], 32 * blocks
    gen = torch.Generator().manual_seed(seed)
    packed = pack(quantize(torch.randn(n_out, k, generator=gen), fmt), fmt)
    x, bias = torch.randn(rows, k, generator=gen) * scale, torch.randn(n_out, generator=gen)
    batched = kernels.block_linear(x, packed, fmt, n_out, k, bias)
    alone = torch.cat([kernels.block_linear(x[i : i + 1], packed, fmt, n_out, k, bias) for i in range(rows)])
    assert torch.equal(batched, alone)
    lib = kernels.library()
    try:
        lib.amx_enable(0)
        assert torch.equal(kernels.block_linear(x, packed, fmt, n_out, k, bias), batched)
    finally:
        lib.amx_enable(1)


@pytest.mark.parametrize("name", FORMATS)
def test_every_thread_count_writes_every_output_with_the_same_bits(name):
    """Jobs are dealt to threads in equal shares of the bytes they read: whatever the count of
    threads (more than the cores, too), each output is written, the same."""
    fmt, lib = FORMATS[name], kernels.library()
    for n_out, rows in ((70, 1), (333, 9), (1000, 20)):
        packed, x = pack(quantize(awkward_weights(n_out, 128), fmt), fmt), torch.randn(rows, 128)
        outputs = []
        try:
            for threads in (1, 2, 3, 5, 7):
                lib.set_threads(threads)
                y = torch.full((rows, n_out), float("nan"))
                lib.gemv(fmt.code, packed.data_ptr(), x.data_ptr(), y.data_ptr(), n_out, 128, rows)
                outputs.append(y)
        finally:
            lib.set_threads(kernels.max_threads)
        assert not outputs[0].isnan().any()
        assert all(torch.equal(y, outputs[0]) for y in outputs)


@pytest.mark.parametrize("build", ["serial", "avx2", "portable"])
def test_other_builds_compute_the_same(kernel_build, build):
    """Each of csrc/quant.h's paths (VNNI, AVX2, portable C) gives this build's results to the bit."""
    lib = kernels_loader.declare(ctypes.CDLL(str(kernel_build(build))))
    x = torch.randn(20, 160)  # 16 rows through this build's AMX tiles where the CPU has them
    for name, fmt in FORMATS.items():
        blocks = quantize(awkward_weights(70, 160), fmt)
        packed, y = pack(blocks, fmt), torch.empty(20, 70)
        lib.gemv(fmt.code, packed.data_ptr(), x.data_ptr(), y.data_ptr(), 70, 160, 20)
        assert_within_rounding(y, x, blocks, name)
        assert torch.equal(y, kernels.block_linear(x, packed, fmt, 70, 160))  # bit for bit


@pytest.mark.parametrize("name", FORMATS)
def test_a_nan_or_infinite_activation_gives_nan_not_text(name):
    """Rounding x to integers must not turn a broken activation into a finite product: the
    generator's check for broken models looks for NaN logits."""
    fmt = FORMATS[name]
    packed = pack(quantize(awkward_weights(20, 64), fmt), fmt)
    x = torch.randn(3, 64)
    x[0, 3], x[1, 40] = float("nan"), float("inf")
    y = kernels.block_linear(x, packed, fmt, 20, 64)
    assert y[:2].isnan().all() and y[2].isfinite().all()
