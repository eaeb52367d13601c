"""Native matrix-vector kernels for decoding (csrc/kernels.c): the products, and the threads
they run on.

PyTorch's CPU matmul reaches about 10 GB/s on a one-row product here, well short
of the ~25 GB/s the memory delivers; these kernels stream the weights at close to
that. ``library`` is the library in use, or None where lmgen computes with torch instead
(kernels_loader finds, builds and loads it, checked against kernels_abi's mirrors); the rest of
lmgen asks for it here, so that replacing ``kernels.library`` turns the kernels off everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmgen.model.kernels_abi import FORMAT_CODES
from lmgen.model.kernels_loader import library
from lmgen.model.threads import thread_count

# Above this many rows (a long prompt) torch's matmul is the better tool.
MAX_ROWS = {torch.float32: 16, torch.bfloat16: 16}
# The float weight dtypes kernels.c reads (blocks: lmgen.model.quant's BlockFormat.code).
WEIGHT_CODES = {torch.float32: FORMAT_CODES["f32"], torch.bfloat16: FORMAT_CODES["bf16"]}


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
