"""The KV cache and what reads and writes it in PyTorch: ``KVCache`` (keys and values of every
layer and row), ``StepContext`` (a prompt's pass) and ``RaggedStep`` (one new token per row, each
at its own position)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmgen.config.model_config import ModelConfig
from lmgen.config.rope import rope_tables
from lmgen.model.attention import attention_mask
from lmgen.resources import require_memory


class KVCache:
    """Preallocated keys and values for every layer and row, sliced to the filled length: plain
    storage, which the PyTorch attention and the native decode step both write and read."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        if torch.device(device).type == "cpu":
            require_memory(2 * math.prod(shape) * dtype.itemsize, f"a KV cache for {batch} × {max_len} tokens")
        self.k = torch.empty(shape, dtype=dtype, device=device)  # only the filled part is ever read
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def row(self, i: int) -> "KVCache":
        """A batch-1 view of sample i's slots (writes go to this cache)."""
        view = object.__new__(KVCache)
        view.k, view.v, view.max_len = self.k[:, i : i + 1], self.v[:, i : i + 1], self.max_len
        return view

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k  # (rounded, where the cache is narrower)
        self.v[layer, :, :, start:end] = v
        # read back as the activations' dtype: attention always sees what the cache holds, so a
        # prompt prefilled in pieces attends to the same values as in one pass
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)


class StepContext:
    """What every layer needs to know about the current forward pass: its positions, their
    rotary tables ("global", and "local" for Gemma 3's sliding layers) and masks per window."""

    def __init__(self, cfg: ModelConfig, start_pos: int, seq: int, cache: KVCache | None, device, dtype,
                 rope_memo: dict | None = None):
        self.start_pos, self.seq, self.cache, self.device = start_pos, seq, cache, device
        self.positions = torch.arange(start_pos, start_pos + seq, device=device)
        self.rope = rope_tables(cfg, self.positions, dtype, rope_memo) if cfg.positions == "rope" else {}
        self.masks: dict = {}

    def mask(self, window: int | None) -> tuple[Tensor | None, bool]:
        if window not in self.masks:
            self.masks[window] = attention_mask(self.start_pos, self.seq, window, self.device)
        return self.masks[window]

    def store(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this pass's keys and values to the cache; all keys and values so far."""
        return self.cache.update(layer, self.start_pos, k, v)


class RaggedStep:
    """One new token per row, each row at its own position in its own row of the cache (prompts
    of different lengths decoding together): rotary tables per row, masks per row's length.
    The cache must hold finite values beyond each row's length (zeros): attention multiplies
    them by 0."""

    def __init__(self, positions: Tensor, rows: Tensor, cache: KVCache, rope: dict):
        self.positions, self.rows, self.cache = positions, rows, cache
        self.rope = {kind: (cos[:, None, None], sin[:, None, None]) for kind, (cos, sin) in rope.items()}
        self.keys = int(positions.max()) + 1
        self.masks: dict = {}

    def mask(self, window: int | None) -> tuple[Tensor, bool]:
        if window not in self.masks:
            keys, pos = torch.arange(self.keys, device=self.positions.device)[None, :], self.positions[:, None]
            allowed = keys <= pos
            if window is not None:
                allowed &= pos - keys < window
            self.masks[window] = (allowed[:, None, None, :], False)
        return self.masks[window]

    def store(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.cache.k[layer, self.rows, :, self.positions] = k[:, :, 0]
        self.cache.v[layer, self.rows, :, self.positions] = v[:, :, 0]
        return self.cache.k[layer, self.rows, :, : self.keys], self.cache.v[layer, self.rows, :, : self.keys]
