"""Block formats (lmgen.quant) and their native kernels: the gguf library's bytes, and products
equal to dequantize-then-matmul."""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants

from lmgen import kernels
from lmgen.quant import FORMATS, dequantize, dequantize_rows, quantize


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


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.randn(4, 40), FORMATS["q8_0"])


def reference(x: torch.Tensor, blocks: torch.Tensor, name: str) -> torch.Tensor:
    return F.linear(x.double(), dequantize(blocks, FORMATS[name]).double()).float()


def assert_within_rounding(y: torch.Tensor, x: torch.Tensor, blocks: torch.Tensor, name: str) -> None:
    """y equals x @ W.T up to the rounding of x to 16 bits per block of 32 (each value within
    half a step, max|x in block| / 32767, of itself) and fp32 summation."""
    w = dequantize(blocks, FORMATS[name])
    step = x.reshape(x.shape[0], -1, 32).abs().amax(-1) / 32767
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
    batched = kernels.block_linear(x, blocks, fmt, k, bias)
    assert_within_rounding(batched - bias, x, blocks, name)
    alone = torch.cat([kernels.block_linear(x[i : i + 1], blocks, fmt, k, bias) for i in range(9)])
    assert torch.equal(batched, alone)  # any batch gives each row bit for bit what it gets alone
    assert torch.equal(kernels.block_linear(x[:5], blocks, fmt, k, bias), alone[:5])


@pytest.mark.parametrize("build", ["serial", "no-avx512"])
def test_other_builds_compute_the_same(tmp_path, build):
    compiler = shutil.which("cc") or shutil.which("gcc")
    extra = {"serial": [], "no-avx512": ["-mno-avx512f"]}[build]
    flags = kernels.SERIAL_FLAGS if build == "serial" else [*kernels.FLAGS, *extra]
    library = tmp_path / f"{build}.so"
    subprocess.run([compiler, *flags, str(kernels.SOURCE), "-o", str(library)], check=True)
    lib = kernels.declare(ctypes.CDLL(str(library)))
    x = torch.randn(5, 160)
    for name, fmt in FORMATS.items():
        blocks = quantize(awkward_weights(70, 160), fmt)
        y = torch.empty(5, 70)
        lib.gemv(fmt.code, blocks.data_ptr(), x.data_ptr(), y.data_ptr(), 70, 160, 5)
        assert_within_rounding(y, x, blocks, name)
