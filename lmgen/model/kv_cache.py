"""The KV cache and what reads and writes it in PyTorch: ``KVCache`` (keys and values of every
layer and row), ``StepContext`` (a prompt's pass) and ``RaggedStep`` (one new token per row, each
at its own position)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from lmgen.config.model_config import ModelConfig
from lmgen.config.rope import rope_tables
from lmgen.model.attention import attention_mask
from lmgen import resources
from lmgen.resources import require_memory


PAGE = 16  # positions a page of the cache holds


def pages_for(positions: int) -> int:
    """Pages that hold ``positions`` positions."""
    return -(-positions // PAGE)


@dataclasses.dataclass
class Pool:
    """A KV cache's pages not in use: those given back, and from ``fresh`` on, those never used."""

    free: list[int] = dataclasses.field(default_factory=list)
    fresh: int = 1


class KVCache:
    """Keys and values of every layer for ``rows`` rows, in pages of PAGE positions drawn from
    one pool as rows grow (vLLM's PagedAttention): a row holds pages for the positions it has
    reserved, listed in its row of ``table``, so rows of a batch take memory for what they hold,
    not for the whole context each. The pool, ``k`` and ``v`` (n_layers, pages, n_kv, PAGE,
    head_dim), is reserved up front as address space only; a page takes memory when first
    handed out (zeroed: PyTorch's batched attention multiplies masked keys by 0). Page 0 is
    never handed out: it stays zero, and every table entry not reserved points to it.

    ``limit`` is the pool's size in pages (None: every row's whole ``max_len``). Both PyTorch's
    attention (``update``, ``RaggedStep``) and the native decode step read and write it."""

    def __init__(self, cfg: ModelConfig, rows: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 limit: int | None = None):
        per_row = pages_for(max_len)
        limit = rows * per_row if limit is None else min(limit, rows * per_row)
        shape = (cfg.n_layers, limit + 1, cfg.n_kv_heads, PAGE, cfg.head_dim)
        if torch.device(device).type == "cpu":
            require_memory((limit + 1) * self.page_size(cfg, dtype), f"a KV cache of {limit * PAGE} positions")
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        q8 = dtype == torch.int8  # q8_0: int8 values and an fp32 scale per block of them (quantize_q8)
        self.q8_block = q8_block(cfg.head_dim)
        scales = (*shape[:-1], cfg.head_dim // self.q8_block)
        self.k_scale = torch.empty(scales, dtype=torch.float32, device=device) if q8 else None
        self.v_scale = torch.empty(scales, dtype=torch.float32, device=device) if q8 else None
        self._zero(0)
        self.table = torch.zeros((rows, per_row), dtype=torch.int64)
        self.max_len, self.pool = max_len, Pool()  # shared with the views of rows (``row``)

    # ----------------------------------------------------------------------------- pages

    @staticmethod
    def page_size(cfg: ModelConfig, dtype: torch.dtype) -> int:
        """Bytes a page takes: PAGE positions' keys and values in every layer (q8_0: and scales)."""
        per_head = cfg.head_dim * dtype.itemsize + (4 * cfg.head_dim // q8_block(cfg.head_dim) if dtype == torch.int8 else 0)
        return 2 * cfg.n_layers * cfg.n_kv_heads * PAGE * per_head

    @staticmethod
    def pages_fitting(cfg: ModelConfig, dtype: torch.dtype, share: float = 0.5) -> int | None:
        """Pages that ``share`` of the memory free now holds (None where it cannot be read)."""
        free = resources.available_memory()
        return None if free is None else max(1, int(free * share) // KVCache.page_size(cfg, dtype))

    @property
    def pages(self) -> int:
        """Pages the pool holds (page 0 not counted)."""
        return self.k.shape[1] - 1

    def free_pages(self) -> int:
        return len(self.pool.free) + self.k.shape[1] - self.pool.fresh

    def page_bytes(self) -> int:
        scales = 2 * self.k_scale[:, :1].numel() * 4 if self.k_scale is not None else 0
        return 2 * self.k[:, :1].numel() * self.k.element_size() + scales

    def held(self, row: int) -> int:
        """Positions row ``row`` has pages for."""
        return int((self.table[row] > 0).sum()) * PAGE

    def reserve(self, row: int, length: int) -> bool:
        """Pages for positions < ``length`` of row ``row``; False (and none taken) if the pool
        has too few free."""
        have, need = self.held(row) // PAGE, pages_for(min(length, self.max_len))
        if need - have > self.free_pages():
            return False
        for i in range(have, need):
            self.table[row, i] = self._take()
        return True

    def release(self, row: int) -> None:
        """Give row ``row``'s pages back to the pool."""
        taken = self.table[row][self.table[row] > 0]
        self.pool.free.extend(int(p) for p in taken.flip(0))  # reused last freed first
        self.table[row] = 0

    def _take(self) -> int:
        if self.pool.free:
            return self.pool.free.pop()
        page, self.pool.fresh = self.pool.fresh, self.pool.fresh + 1
        self._zero(page)
        return page

    def _zero(self, page: int) -> None:
        for t in (self.k, self.v, self.k_scale, self.v_scale):
            if t is not None:
                t[:, page] = 0

    # ----------------------------------------------------- stored as the cache's dtype holds

    def _put(self, index: tuple, k: Tensor, v: Tensor) -> None:
        """k and v (..., head_dim) into the pool at ``index`` (which leaves head_dim whole),
        rounded to the cache's dtype, or quantized (q8_0: ``quantize_q8``)."""
        for t, scale, values in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            if scale is None:
                t[index] = values.to(t.dtype)
            else:
                t[index], scale[index] = quantize_q8(values, self.q8_block)

    def _get(self, index: tuple, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The pool's keys and values at ``index``, as ``dtype`` (q8_0: q · scale in fp32 first)."""
        return tuple((t[index] if scale is None else dequantize_q8(t[index], scale[index])).to(dtype)
                     for t, scale in ((self.k, self.k_scale), (self.v, self.v_scale)))

    # ------------------------------------------------------------------- rows as tensors

    def read(self, row: int, n: int) -> tuple[Tensor, Tensor]:
        """Row ``row``'s keys and values at positions < n: (n_layers, n_kv, n, head_dim) each."""
        pages = self.table[row, : pages_for(n)]
        dtype = torch.float32 if self.k.dtype == torch.int8 else self.k.dtype
        return tuple(t.transpose(1, 2).flatten(2, 3)[:, :, :n] for t in self._get((slice(None), pages), dtype))

    def write(self, row: int, k: Tensor, v: Tensor) -> None:
        """Put keys and values (n_layers, n_kv, n, head_dim) at positions < n of row ``row``
        (reserved: ``reserve``)."""
        n = k.shape[2]
        pos = torch.arange(n)
        pages = self.pages_at(row, pos)
        # (n, n_layers, n_kv, head_dim): the indexed dims come first
        self._put((slice(None), pages, slice(None), pos % PAGE), k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3))

    def copy(self, src: int, dst: int, n: int) -> None:
        """Row ``src``'s keys and values at positions < n copied to row ``dst`` (reserved), as
        stored: whole pages, the bits unchanged whatever the dtype."""
        dst_pages = self.pages_at(dst, torch.arange(0, n, PAGE))
        src_pages = self.table[src, : len(dst_pages)]
        for t in (self.k, self.v, self.k_scale, self.v_scale):
            if t is not None:
                t[:, dst_pages] = t[:, src_pages]

    def row(self, i: int) -> "KVCache":
        """Row i alone, as a cache of one row (writes go to this cache)."""
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        view.table = self.table[i : i + 1]
        return view

    # ----------------------------------------------------------------------- attention

    def pages_at(self, rows: Tensor | int, positions: Tensor) -> Tensor:
        """The pages holding ``positions`` of ``rows`` (broadcast together); ValueError where one
        has none reserved (page 0, which must stay zero)."""
        pages = self.table[rows, positions // PAGE]
        if bool((pages == 0).any()):
            raise ValueError(f"the KV cache has no page reserved for position {int(positions.max())}")
        return pages

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k and v (rows, n_kv, seq, head_dim) at positions start.. of every row of this
        cache; all of each row's keys and values so far, as the activations' dtype."""
        end = start + k.shape[2]
        pos = torch.arange(start, end)
        pages = self.pages_at(torch.arange(len(self.table))[:, None], pos)
        self._put((layer, pages, slice(None), pos % PAGE), k.transpose(1, 2), v.transpose(1, 2))
        # read back as the activations' dtype: attention always sees what the cache holds, so a
        # prompt prefilled in pieces attends to the same values as in one pass
        return self.keys(layer, self.table, end, k.dtype)

    def keys(self, layer: int, table: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Keys and values at positions < n of the rows whose pages ``table`` lists, (rows, n_kv,
        n, head_dim) each: zeros past a row's reserved pages."""
        pages = table[:, : pages_for(n)]
        return tuple(t.transpose(1, 2).flatten(2, 3)[:, :, :n] for t in self._get((layer, pages), dtype))


def q8_block(head_dim: int) -> int:
    """Values per scale of a q8_0 cache: 32, as llama.cpp's q8_0 (or the head where it is not
    a multiple of 32)."""
    return 32 if head_dim % 32 == 0 else head_dim


def quantize_q8(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """x (..., head_dim) as int8 q and an fp32 scale per block of ``block`` values (..., head_dim
    / block): scale = max|x| / 127, q = x / scale rounded to nearest even (0 in a block of
    zeros), x ≈ q · scale. The native decode step stores the same bits (kernels.c's kv_store)."""
    x = x.float().unflatten(-1, (-1, block))
    scale = x.abs().amax(-1) / 127
    q = torch.where(scale[..., None] > 0, torch.round(x / scale[..., None]), 0)
    return q.flatten(-2).to(torch.int8), scale


def dequantize_q8(q: Tensor, scale: Tensor) -> Tensor:
    """q · scale in fp32, each value by its block's scale (as kernels.c's kv_floats)."""
    return (q.float().unflatten(-1, (scale.shape[-1], -1)) * scale[..., None]).flatten(-2)


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
    Past each row's length the cache holds finite values (a page's stale keys, or page 0's
    zeros): attention multiplies them by 0."""

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
        cache, positions = self.cache, self.positions
        pages = cache.pages_at(self.rows, positions)
        cache._put((layer, pages, slice(None), positions % PAGE), k[:, :, 0], v[:, :, 0])
        return cache.keys(layer, cache.table[self.rows], self.keys, k.dtype)
