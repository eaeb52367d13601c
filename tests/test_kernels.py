"""The native decode kernels agree with torch's arithmetic."""

import pytest
import torch
import torch.nn.functional as F
from conftest import save_tiny

import lmgen
from lmgen.model import kernels, kernels_loader


def test_the_kernels_build_on_this_machine():
    assert kernels.library() is not None, "lmgen's C kernels did not build: is a C compiler installed?"


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("n_out, n_in", [(7, 5), (130, 64), (96, 200)])
def test_linear_matches_torch(rows, n_out, n_in):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 1, n_in, generator=gen)
    w = torch.randn(n_out, n_in, generator=gen)
    bias = torch.randn(n_out, generator=gen)
    assert torch.allclose(kernels.linear(x, w, bias), F.linear(x, w, bias), atol=1e-5)
    wb = w.bfloat16()
    assert torch.allclose(kernels.linear(x, wb), F.linear(x, wb.float()), atol=1e-4)


@pytest.mark.parametrize("kv_dtype", ["float32", "bfloat16", "q8_0"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "q8", "q4"])
def test_native_decode_step_matches_torch_path(tmp_path, monkeypatch, family, dtype, kv_dtype):
    """The native step and PyTorch's agree, with an fp32, bf16 or q8_0 KV cache (the native step
    rounds or quantizes keys and values as kv_cache.py does when it stores them, and widens them
    as it does to read)."""
    save_tiny(family, tmp_path)
    lm = lmgen.load(tmp_path, dtype=dtype, kv_dtype=kv_dtype)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))

    def stepwise():
        cache = lm.model.new_cache(batch=2, max_len=40)
        with torch.inference_mode():
            out = [lm.model(ids[:, :5], 0, cache)]
            out += [lm.model(ids[:, i : i + 1], i, cache) for i in range(5, 40)]
        return torch.cat(out, dim=1)

    native = stepwise()
    assert lm.model.plan is not None  # the native step ran
    monkeypatch.setattr(kernels, "library", lambda: None)
    reference = stepwise()
    assert lm.model.plan is None  # and here PyTorch did (block weights dequantized)
    # block formats round activations to 16 bits per block of 32 (csrc/quant.h): ~1e-5 relative;
    # a bf16 cache then rounds a key or value near a rounding boundary one way on one path and the
    # other way on the other: one bf16 step (2^-8 of it) apart, a few 1e-3 at the logits; a q8_0
    # cache's step is 1/127 of the head's largest value, so even exact weights can flip one
    exact = dtype in ("float32", "bfloat16") and kv_dtype != "q8_0"
    bound = 1e-4 if exact else 1e-3 if kv_dtype == "float32" else 1e-2
    assert (native - reference).abs().max().item() < bound


@pytest.mark.parametrize("build", ["serial", "avx2"])
def test_other_builds_compute_the_same(kernel_build, build):
    """The single-threaded build (a compiler without OpenMP) and the compiler-vectorised loops
    used on CPUs without AVX-512 give the same products, for every weight dtype."""
    import ctypes

    lib = kernels_loader.declare(ctypes.CDLL(str(kernel_build(build))))
    w, x = torch.randn(70, 130), torch.randn(2, 130)
    for weight, expected in [(w, x @ w.T), (w.bfloat16(), x @ w.bfloat16().float().T)]:
        y = torch.empty(2, 70)
        lib.gemv(kernels.WEIGHT_CODES[weight.dtype], weight.data_ptr(), x.data_ptr(), y.data_ptr(), 70, 130, 2)
        assert torch.allclose(y, expected, atol=1e-4)


def test_without_any_kernels_loading_says_how_much_slower(monkeypatch, tmp_path, tiny_dir):
    """No build with the package (a source tree nobody built) and no compiler: a note, never silence."""
    from lmgen.engine.load import load

    monkeypatch.setattr(kernels_loader, "packaged_builds", lambda: {})
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    kernels.library.cache_clear()
    try:
        lm = load(tiny_dir)
        assert kernels.library() is None
        assert any("native kernels are not available" in n and "500x" in n for n in lm.notes), lm.notes
    finally:
        kernels.library.cache_clear()
        monkeypatch.undo()
        assert kernels.library() is not None


def test_each_packaged_level_this_cpu_runs_gives_the_same_products_to_the_bit():
    """The builds made with the package (setup.py), as dispatch would pick them on other CPUs."""
    import ctypes

    from lmgen.model.quant import FORMATS, pack, quantize

    builds = kernels_loader.packaged_builds()
    assert "portable" in builds, "the package was built without its kernels"
    runnable = [level for level in kernels_loader.cpu_levels() if level in builds]  # best first
    best = runnable[0]
    if len(runnable) < 2:
        pytest.skip(f"this CPU runs only the {best} build: nothing to compare it with")
    x, w = torch.randn(20, 160), torch.randn(70, 160)  # 16 rows through AMX tiles where the CPU has them
    results = {}
    for level in runnable:
        lib = kernels_loader.declare(ctypes.CDLL(str(builds[level])))
        outputs = []
        for fmt in FORMATS.values():
            packed, y = pack(quantize(w, fmt), fmt), torch.empty(20, 70)
            lib.gemv(fmt.code, packed.data_ptr(), x.data_ptr(), y.data_ptr(), 70, 160, 20)
            outputs.append(y)
        results[level] = outputs
    for level in runnable[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[level], results[best])), level
