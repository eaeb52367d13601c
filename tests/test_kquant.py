"""lmgen.model.kquant and the kernels of csrc/kquant.h: Q5_0, Q5_1, Q4_K, Q5_K and Q6_K blocks
decoded as the gguf library dequantizes them, packed and unpacked without loss, and products
equal to dequantize-then-matmul within the activations' rounding, batched equal to alone, and
every packaged build equal to the bit.

The gguf library dequantizes these formats but cannot quantize them: test tensors are random
block bytes with small finite fp16 fields (random fp16 bytes can be NaN or infinite)."""

import ctypes

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from hypothesis import given
from hypothesis import strategies as st

from lmgen.model import kernels, kernels_loader, kquant
from lmgen.model.quant import READ_ONLY, dequantize, dequantize_packed, pack, packed_rows, unpack

GGML = {"q5_0": GGMLQuantizationType.Q5_0, "q5_1": GGMLQuantizationType.Q5_1, "q4_k": GGMLQuantizationType.Q4_K,
        "q5_k": GGMLQuantizationType.Q5_K, "q6_k": GGMLQuantizationType.Q6_K}
HALF_FIELDS = {"q5_0": (0,), "q5_1": (0, 2), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}  # fp16 offsets


def random_blocks(name: str, rows: int, k: int, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    """(rows, k / block values · block bytes) random blocks whose fp16 fields are finite."""
    fmt = READ_ONLY[name]
    rng = np.random.default_rng(seed)
    n = k // fmt.block_values
    b = rng.integers(0, 256, size=(rows, n, fmt.block_bytes), dtype=np.uint8)
    for at in HALF_FIELDS[name]:
        b[..., at : at + 2] = rng.uniform(-scale, scale, size=(rows, n)).astype(np.float16).view(np.uint8).reshape(rows, n, 2)
    return torch.from_numpy(b.reshape(rows, -1))


@pytest.mark.parametrize("name", READ_ONLY)
def test_blocks_decode_as_the_gguf_library_dequantizes_them_and_pack_without_loss(name):
    fmt = READ_ONLY[name]
    blocks = random_blocks(name, 37, 2 * fmt.block_values, seed=1)
    expected = gguf_dequantize(blocks.numpy(), GGML[name]).reshape(37, -1)
    assert np.array_equal(dequantize(blocks, fmt).numpy(), expected)
    packed = pack(blocks, fmt)
    assert packed.shape[0] == 3
    assert torch.equal(unpack(packed, fmt, 37), blocks)  # the file's bytes, every bit
    assert np.array_equal(dequantize_packed(packed, fmt, 37).numpy(), expected)
    ids = torch.tensor([[0, 36], [17, 5]])
    assert np.array_equal(packed_rows(packed, fmt, ids).numpy(), expected[ids.numpy()])
    per_row = packed.numel() / 48 / (2 * fmt.block_values // 32)
    extra = {"q4_k": 0.5, "q5_k": 0.5}.get(name, 0)  # per 32 values: the K-quants' scales unpacked to bytes
    assert per_row == fmt.block_bytes * 32 / fmt.block_values + extra


def reference(x: torch.Tensor, blocks: torch.Tensor, fmt) -> torch.Tensor:
    return (x.double() @ dequantize(blocks, fmt).double().T).float()


def tolerance(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound on the activations' 16-bit rounding: per block of 32, max|x| / 32639 / 2 per value."""
    blocks = x.reshape(x.shape[0], -1, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 32639
    return (step.expand_as(blocks).reshape(x.shape).double() @ w.abs().double().T).float() + 1e-5


@given(st.sampled_from(sorted(READ_ONLY)), st.integers(1, 40), st.integers(1, 3), st.integers(1, 20),
       st.integers(0, 2**32 - 1))
def test_products_equal_dequantize_then_matmul_and_batched_equals_alone(name, rows, supers, batch, seed):
    """Batches of 8 rows or more go through AMX tiles where the CPU has them, a row alone
    through VNNI: the same bits either way."""
    fmt = READ_ONLY[name]
    k = supers * fmt.block_values * (2 if fmt.block_values == 32 else 1)
    blocks = random_blocks(name, rows, k, seed)
    packed = pack(blocks, fmt)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(seed)) * 3
    y = kernels.block_linear(x, packed, fmt, rows, k)
    w = dequantize(blocks, fmt)
    assert ((y - reference(x, blocks, fmt)).abs() <= tolerance(x, w)).all()
    alone = torch.cat([kernels.block_linear(x[i : i + 1], packed, fmt, rows, k) for i in range(batch)])
    assert torch.equal(y, alone)


def test_each_packaged_level_this_cpu_runs_gives_the_same_products_to_the_bit():
    builds = kernels_loader.packaged_builds()
    runnable = [level for level in kernels_loader.cpu_levels() if level in builds]  # best first
    best = runnable[0]
    if len(runnable) < 2:
        pytest.skip(f"this CPU runs only the {best} build: nothing to compare it with")
    x = torch.randn(20, 512) * 2  # 16 rows through AMX tiles where the CPU has them, 4 through VNNI
    results = {}
    for level in runnable:
        lib = kernels_loader.declare(ctypes.CDLL(str(builds[level])))
        outputs = []
        for name, fmt in READ_ONLY.items():
            packed, y = pack(random_blocks(name, 35, 512, seed=7), fmt), torch.empty(20, 35)
            lib.gemv(fmt.code, packed.data_ptr(), x.data_ptr(), y.data_ptr(), 35, 512, 20)
            outputs.append(y)
        results[level] = outputs
    for level in runnable[1:]:
        for name, a, b in zip(READ_ONLY, results[level], results[best]):
            assert torch.equal(a, b), (level, name)


def test_extreme_activations_stay_exact_in_integers():
    """The largest integer sums: every q at its maximum, x at ±its block maximum."""
    for name, fmt in READ_ONLY.items():
        blocks = random_blocks(name, 16, 256, seed=3)
        f = kquant.fields(blocks, name, fmt.block_bytes)
        f.q[:] = 63 if name == "q6_k" else 31 if "5" in name else 15
        for key in ("sc", "mn"):
            if key in f.scales:
                f.scales[key][:] = 0x80 if name == "q6_k" else 63  # int8 -128 for Q6_K
        packed = kquant.pack(f, name)
        x = torch.full((16, 256), -7.0)  # one row alone (VNNI) and a tile's 16 (AMX)
        y = torch.cat([kernels.block_linear(x[:1], packed, fmt, 16, 256), kernels.block_linear(x, packed, fmt, 16, 256)])
        w = kquant.values(f, name)
        expected = (x[0].double() @ w.double().T).float().expand_as(y)
        assert torch.allclose(y, expected, rtol=1e-5, atol=1e-3), name
