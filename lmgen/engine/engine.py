"""The engine: one request API over rows of one KV cache — ``add(job) -> id``, ``abort(id)``,
``step() -> events``.

A ``Job`` is a prompt's token ids with its settings and its number of samples. ``add`` puts it
in the waiting queue (one that could never fit in the rows is refused at once); each ``step``
admits waiting jobs in order while their samples fit in free rows, prefills at most
``prefill_budget`` work (``generation.piece_work``) in the prompt's own pieces
(``generation.prefill_chunks``, so that a prompt's bits never depend on its neighbours), and
decodes one token for every row whose prompt is prefilled, with one ``Decoder.decode_step``
that reads each weight once for all of them. A long prompt so delays the other rows by one
piece per step, not by its whole length.

The KV cache is paged (``KVCache``): a row takes pages as it grows, from a pool of
``kv_cache_mib``. A job is admitted when its prompt's pages fit; a row that cannot grow takes
the pages of the youngest job in flight, which is preempted: its rows wait, first in line, and
resume by prefilling their prompt again and replaying the tokens they had chosen through the
decode step, so their keys and values, and so their text, are bit for bit what they would have
been (``paging``). Each row
has its own position, sampler (seeded per sample), token history, detokenizer, stop strings and
constraint matcher, and decodes exactly as it would alone. ``generate_many`` drives an engine
from an iterable, the server's engine thread from its requests.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator

import torch

from lmgen.engine.constraint import ConstraintFailed
from lmgen.engine.events import Failed, Finished, Token
from lmgen.engine.generation import (
    LanguageModel,
    SampleText,
    piece_work,
    prefill_chunks,
    probabilities,
    require_sound,
)
from lmgen.engine.jobs import Job, Prefill, Row, prompt_seed  # noqa: F401 (Job, prompt_seed: also from here)
from lmgen.engine.lookup import PromptLookup
from lmgen.engine.paging import Paging, kv_pages
from lmgen.engine.prefix_cache import PrefixCache
from lmgen.engine.sampling import TokenHistory, sample_next_token
from lmgen.engine.settings import MAX_ROWS
from lmgen.errors import InputError
from lmgen.model.kv_cache import pages_for

class Engine(Paging):
    def __init__(self, lm: LanguageModel, max_rows: int, prefix_cache: PrefixCache | None = None,
                 prefill_budget: int | None = None, kv_cache_mib: float | None = None):
        if not 1 <= max_rows <= MAX_ROWS:
            raise InputError(f"batch-size must be from 1 to {MAX_ROWS}, got {max_rows}")
        self.lm, self.model = lm, lm.model
        self.prefix_cache = prefix_cache
        self.prefill_budget = prefill_budget  # prefill work per step (piece_work; None: every admitted prompt whole)
        self.rows: list[Row | None] = [None] * max_rows
        self.waiting: deque[tuple[int, Job]] = deque()
        self.prefilling: deque[Prefill] = deque()
        self.preempted: deque[Row] = deque()  # rows that gave their pages back, oldest job first
        self.preemptions = 0  # jobs preempted so far
        self.next_id = 0
        context = lm.config.max_context
        self.cache = self.model.new_cache(max_rows, context, limit=kv_pages(self.model, max_rows, kv_cache_mib))
        self.forward = torch.inference_mode()(self.model)
        self.decode = torch.inference_mode()(self.model.decode_step)

    # ------------------------------------------------------------------------------- the API

    def add(self, job: Job) -> int:
        """Queue a job; its id. A job that could never fit in the rows is refused (InputError)."""
        if not 1 <= job.rows <= len(self.rows):
            raise InputError(f"{job.rows} samples need as many rows, and this engine decodes at most "
                             f"{len(self.rows)} at once")
        budget = job.settings.max_new_tokens if job.max_new_tokens is None else job.max_new_tokens
        if budget < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {budget}")
        if job.rows * pages_for(len(job.ids) + 1) > self.cache.pages:
            raise InputError(f"a prompt of {len(job.ids)} tokens ({job.rows} samples) needs more KV cache than the "
                             f"{self.cache.pages * self.cache.page_bytes() / 2**20:.0f} MiB it has (--kv-cache-mib)")
        ident, self.next_id = self.next_id, self.next_id + 1
        self.waiting.append((ident, job))
        return ident

    def abort(self, ident: int) -> None:
        """Forget job ``ident``, waiting or in flight: its rows are free at once, with no events."""
        self.waiting = deque(item for item in self.waiting if item[0] != ident)
        self.prefilling = deque(p for p in self.prefilling if p.job != ident)
        self.preempted = deque(row for row in self.preempted if row.job != ident)
        for slot, row in enumerate(self.rows):
            if row is not None and row.job == ident:
                self._vacate(slot)

    def _vacate(self, slot: int) -> None:
        """Free row ``slot`` and its pages."""
        self.rows[slot] = None
        self.cache.release(slot)

    def step(self) -> list[Token | Finished | Failed]:
        """Admit what fits, prefill up to the budget, decode one token for every ready row."""
        self._admit()
        events = list(self._prefill())
        self._replay()
        ready = [slot for slot, row in enumerate(self.rows) if row is not None and row.ready]
        if ready:
            events += self._decode(ready)
        return events

    def busy(self) -> bool:
        return bool(self.waiting) or bool(self.preempted) or any(row is not None for row in self.rows)

    def free_rows(self) -> int:
        return sum(row is None for row in self.rows)

    def rows_in_flight(self) -> int:
        return len(self.rows) - self.free_rows()

    def kv_bytes_held(self) -> int:
        """Memory of the KV cache's pages that rows hold now."""
        return (self.cache.pages - self.cache.free_pages()) * self.cache.page_bytes()

    def ids_in_flight(self) -> set[int]:
        """The ids of the jobs that hold rows (or did, and wait to resume)."""
        return {row.job for row in self.rows if row is not None} | {row.job for row in self.preempted}

    # ----------------------------------------------------------------------------- admission

    def _admit(self) -> None:
        """Preempted rows, then waiting jobs, in order, while rows and their prompts' pages fit."""
        while self.preempted and self._resume(self.preempted[0]):
            self.preempted.popleft()
        while not self.preempted and self.waiting and self.free_rows() >= self.waiting[0][1].rows:
            ident, job = self.waiting[0]
            if job.rows * pages_for(len(job.ids) + 1) > self.cache.free_pages():
                return
            self.waiting.popleft()
            slots = [slot for slot, row in enumerate(self.rows) if row is None][: job.rows]
            ids = job.ids
            budget = job.settings.max_new_tokens if job.max_new_tokens is None else job.max_new_tokens
            budget = min(budget, self.lm.config.max_context - len(ids))
            index = ident if job.index is None else job.index
            for slot in slots:
                self.cache.reserve(slot, len(ids) + 1)
            start = time.perf_counter()  # admitted together: the same start
            for offset, slot in enumerate(slots):
                self.rows[slot] = self._row(ident, index, job, budget, job.first_sample + offset, start)
            cached = self._copy_prefix(slots[0], ids)
            for slot in slots:
                self.rows[slot].cached = cached
            self.prefilling.append(Prefill(ident, slots, deque(prefill_chunks(cached, len(ids))), job))

    def _row(self, ident: int, index: int, job: Job, budget: int, sample: int, start: float) -> Row:
        lm, settings, device = self.lm, job.settings, self.model.device
        seed = prompt_seed(job.seed, sample)
        row = Row(ident, index, job.ids, settings, budget, SampleText(lm, settings),
                  torch.Generator(device).manual_seed(seed) if seed is not None else None,
                  TokenHistory(job.ids, 1, lm.config.vocab_size, device) if settings.sampling.uses_history else None,
                  start, sample=sample)
        if settings.lookup and settings.sampling.greedy:
            row.lookup = PromptLookup(job.ids, settings.lookup)
        return row

    def _copy_prefix(self, slot: int, ids: list[int]) -> int:
        """Copy the keys and values of the longest cached prefix of ``ids`` into row ``slot`` (at
        least one token is left to prefill, for its logits); how many tokens that is."""
        if self.prefix_cache is None:
            return 0
        n, k, v = self.prefix_cache.longest(ids)
        n = min(n, len(ids) - 1)
        if n > 0:
            self.cache.write(slot, k[:, :, :n], v[:, :, :n])
        return n

    # ------------------------------------------------------------------------------- prefill

    def _prefill(self) -> Iterator:
        """Pieces of the admitted prompts, oldest first, up to the step's budget (at least one
        piece); a prompt prefilled whole starts its samples."""
        left = self.prefill_budget
        while self.prefilling:
            fill = self.prefilling[0]
            start, end = fill.pieces[0]
            work = piece_work(start, end)
            if left is not None and work > left and left < self.prefill_budget:
                return
            row = self.rows[fill.slots[0]]
            tokens = torch.tensor([row.prompt_ids[start:end]], device=self.model.device)
            logits = self.forward(tokens, start, self.cache.row(fill.slots[0]), last_only=True)[:, -1]
            fill.pieces.popleft()
            if left is not None:
                left -= work
            if not fill.pieces:
                self.prefilling.popleft()
                if fill.origin is not None:
                    yield from self._start(fill, logits)

    def _start(self, fill: Prefill, logits: torch.Tensor) -> Iterator:
        """A prefilled prompt's samples: its keys and values copied to every sample's row (a
        prompt is prefilled once for all its samples), then each one's first token."""
        require_sound(logits)
        first = fill.slots[0]
        n = len(self.rows[first].prompt_ids)
        for slot in fill.slots[1:]:
            self.cache.copy(first, slot, n)
        for slot in fill.slots:
            row = self.rows[slot]
            if row is None:  # its job failed with an earlier sample
                continue
            row.ready, row.first = True, time.perf_counter()
            yield from self._choose_or_fail(slot, logits)

    # -------------------------------------------------------------------------------- decode

    def _decode(self, slots: list[int]) -> list:
        """One token for every row in ``slots``; more for a row whose lookup draft the model
        agrees with. A row with a draft of k tokens takes k + 1 rows of the decode step, all on
        its own row of the cache at consecutive positions: each sees the keys and values the
        others write before attending, so each row's logits are the ones k + 1 plain steps would
        give, bit for bit (the kernels compute every row as they would alone). Its tokens are
        then chosen one by one from them, as long as each is the drafted one."""
        drafts = {slot: self._draft(self.rows[slot]) for slot in slots}
        events = self._make_room(slots, drafts)
        slots = [slot for slot in slots if self.rows[slot] is not None and self.rows[slot].ready]
        if not slots:
            return events
        tokens, positions, cache_rows = [], [], []
        for slot in slots:
            row, draft = self.rows[slot], drafts[slot]
            tokens += [row.token, *draft]
            positions += range(row.position, row.position + len(draft) + 1)
            cache_rows += [slot] * (len(draft) + 1)
        device = self.model.device
        logits = self.decode(torch.tensor(tokens, device=device), torch.tensor(positions, dtype=torch.int64, device=device),
                             self.cache, torch.tensor(cache_rows, dtype=torch.int64, device=device))
        require_sound(logits)
        at = 0
        for slot, row in [(slot, self.rows[slot]) for slot in slots]:
            draft, base = drafts[slot], at
            at += len(draft) + 1
            if self.rows[slot] is not row:  # its job failed with an earlier sample this step
                continue
            row.drafted += len(draft)
            taken = 0
            for j in range(len(draft) + 1):
                events += self._choose_or_fail(slot, logits[base + j : base + j + 1])
                if self.rows[slot] is None or j == len(draft) or row.token != draft[j]:
                    break
                taken += 1
            row.accepted += taken
            if row.lookup is not None:
                row.lookup.checked(len(draft), taken)
        return events

    def _draft(self, row: Row) -> list[int]:
        """The tokens prompt lookup guesses follow (none without --lookup), as many as the row's
        budget leaves after the one this step chooses anyway."""
        if row.lookup is None:
            return []
        return row.lookup.draft(row.budget - row.text.count - 1)

    def _choose_or_fail(self, slot: int, logits: torch.Tensor) -> list:
        """``_choose``'s events; a constraint that gives up ends its job alone, with ``Failed``."""
        try:
            return list(self._choose(slot, logits))
        except ConstraintFailed as exc:
            row = self.rows[slot]
            self.abort(row.job)
            return [Failed(message=str(exc), index=row.index, sample=row.sample)]

    def _choose(self, slot: int, logits: torch.Tensor) -> Iterator:
        """Sample row ``slot``'s next token from its logits (1, vocab); its events."""
        row = self.rows[slot]
        matcher = row.text.matcher
        scores = logits if matcher is None else matcher.restrict(logits)
        token = sample_next_token(scores, row.settings.sampling, row.generator, row.history)
        if row.history is not None:
            row.history.add(token)
        row.token = int(token)
        if row.lookup is not None:
            row.lookup.add(row.token)
        if row.token in self.lm.eos_ids:
            yield self._finish(slot, "stop", row.text.flush())
            return
        text, stopped = row.text.push(row.token)
        probs = probabilities(logits, token, row.settings.show_probs)
        prob, top = probs[0] if probs else (None, ())
        yield Token(id=row.token, text=text, sample=row.sample, prob=prob, top=top, index=row.index)
        if stopped:
            yield self._finish(slot, "stop", "")
        elif row.text.count >= row.budget:
            yield self._finish(slot, "length", row.text.flush())

    def _finish(self, slot: int, reason: str, tail: str) -> Finished:
        row = self.rows[slot]
        if self.prefix_cache is not None and row.ready:  # the tokens whose keys and values the row holds
            held = row.prompt_ids + row.text.ids if row.token in self.lm.eos_ids else row.held
            self.prefix_cache.put(held, *self.cache.read(slot, len(held)))
        self._vacate(slot)
        done = row.text.finished(reason, tail, len(row.prompt_ids), row.start, row.first, row.sample,
                                 row.index, row.cached)
        return dataclasses.replace(done, drafted=row.drafted, accepted=row.accepted) if row.lookup else done

    def end_all(self, reason: str) -> list[Finished]:
        """End every job in flight now (a server shutting down): each ready row's closing event
        with ``reason``; rows still prefilling end with no text. Waiting jobs stay queued."""
        events = []
        for slot, row in enumerate(self.rows):
            if row is None:
                continue
            if row.ready:
                events.append(self._finish(slot, reason, row.text.flush()))
                continue
            if not row.first:
                row.first = time.perf_counter()
            text = row.text.flush() if row.replay is not None else ""  # a resumed row has text
            events.append(row.text.finished(reason, text, len(row.prompt_ids), row.start, row.first, row.sample,
                                            row.index, row.cached))
            self._vacate(slot)
        for row in self.preempted:
            events.append(row.text.finished(reason, row.text.flush(), len(row.prompt_ids), row.start, row.first,
                                            row.sample, row.index, row.cached))
        self.prefilling.clear()
        self.preempted.clear()
        return events
