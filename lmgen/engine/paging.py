"""The engine's paged KV cache: how much its rows share (``kv_pages``: ``--kv-cache-mib``, or
what memory allows), and what it does when they outgrow it (``Paging``, a part of ``Engine``):
the youngest job in flight gives its pages back and waits, first in line, then resumes by
prefilling its prompt again (in the pieces it was) and replaying the tokens it had chosen
through the decode step, which computes each row as it would alone: its keys and values, and so
its text, are bit for bit what they would have been."""

from __future__ import annotations

from collections import deque

import torch

from lmgen.engine.jobs import Prefill, Row
from lmgen.engine.generation import prefill_chunks
from lmgen.model.kv_cache import KVCache, pages_for

REPLAY_CHUNK = 64  # tokens of a resumed row recomputed per step (rows of one decode step)


def kv_pages(model, rows: int, mib: float | None) -> int:
    """Pages of the pool shared by ``rows`` rows: ``mib`` MiB of them, or by default every row's
    whole context where half the memory free now holds that, else that half."""
    dtype = model.kv_dtype or model.dtype
    if mib is not None:
        return max(1, int(mib * 2**20) // KVCache.page_size(model.cfg, dtype))
    whole = rows * pages_for(model.cfg.max_context)
    fitting = KVCache.pages_fitting(model.cfg, dtype)
    return whole if fitting is None else min(whole, fitting)


class Paging:
    """Preemption and resumption, on the Engine's rows, queues and cache."""

    def _resume(self, row: Row) -> bool:
        """Row ``row``, preempted, back in a free row with pages for what it held, if they fit:
        its prompt is prefilled again (in the pieces it was), then its tokens replayed."""
        slot = next((slot for slot, held in enumerate(self.rows) if held is None), None)
        if slot is None or not self.cache.reserve(slot, row.position + 1):
            return False
        self.rows[slot], row.replay = row, row.text.ids[:-1]
        cached = min(self._copy_prefix(slot, row.prompt_ids), row.cached)
        self.prefilling.append(Prefill(row.job, [slot], deque(prefill_chunks(cached, len(row.prompt_ids)))))
        return True

    def _make_room(self, slots: list[int], drafts: dict[int, list[int]]) -> list:
        """Pages for the positions each row in ``slots`` writes this step, oldest job first. Where
        the pool has none free, the youngest job in flight is preempted (``_preempt``) until they
        fit; a row that cannot grow even alone drops its draft, then ends ("length")."""
        events = []
        for slot in sorted(slots, key=lambda slot: self.rows[slot].job):
            row = self.rows[slot]
            while row is not None and row is self.rows[slot] and not self.cache.reserve(slot, row.position + len(drafts[slot]) + 1):
                youngest = max(held.job for held in self.rows if held is not None)
                if youngest != row.job:
                    self._preempt(youngest)
                elif drafts[slot]:
                    drafts[slot] = []
                elif sum(held is not None for held in self.rows) > 1:
                    self._preempt(youngest)  # its other samples, and so this row too: they resume together
                else:
                    events.append(self._finish(slot, "length", row.text.flush()))
        return events

    def _preempt(self, ident: int) -> None:
        """Take job ``ident``'s pages back: its rows with tokens chosen wait to resume (first in
        line); a prompt not yet prefilled goes back to the front of the queue."""
        self.preemptions += 1
        for fill in [fill for fill in self.prefilling if fill.job == ident]:
            self.prefilling.remove(fill)
            if fill.origin is not None:
                self.waiting.appendleft((ident, fill.origin))
                for slot in fill.slots:
                    self._vacate(slot)
        for slot, row in enumerate(self.rows):
            if row is not None and row.job == ident:
                row.replay = None
                self.preempted.append(row)
                self._vacate(slot)
        self.preempted = deque(sorted(self.preempted, key=lambda row: (row.job, row.sample)))

    def _replay(self) -> None:
        """Up to REPLAY_CHUNK tokens of each resumed row whose prompt is prefilled again, through
        the decode step (their logits unused): their keys and values as first computed. A row
        whose tokens are all replayed decodes again."""
        slots = [slot for slot, row in enumerate(self.rows) if row is not None and row.replay is not None
                 and not any(slot in fill.slots for fill in self.prefilling)]
        tokens, positions, cache_rows = [], [], []
        for slot in slots:
            row = self.rows[slot]
            start = len(row.prompt_ids) + len(row.text.ids) - 1 - len(row.replay)
            chunk, row.replay = row.replay[:REPLAY_CHUNK], row.replay[REPLAY_CHUNK:]
            tokens += chunk
            positions += range(start, start + len(chunk))
            cache_rows += [slot] * len(chunk)
            if not row.replay:
                row.replay, row.ready = None, True
        if tokens:
            device = self.model.device
            self.decode(torch.tensor(tokens, device=device), torch.tensor(positions, dtype=torch.int64, device=device),
                        self.cache, torch.tensor(cache_rows, dtype=torch.int64, device=device))

