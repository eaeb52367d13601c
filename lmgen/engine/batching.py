"""Continuous batching: many prompts decoding together, each exactly as it would alone.

``generate_many`` keeps up to ``batch_size`` prompts in flight, one per row of a KV cache. Each
row has its own position, sampler (seeded from the settings' seed and the prompt's index, so a
prompt's text does not depend on its neighbours or the batch size), token history, incremental
detokenizer and stop strings. A prompt joins when a row is free — prefilled alone, straight into
that row — and leaves when it finishes (end of sequence, a stop string, its token budget or the
context window), freeing the row for the next prompt at the next step. Every step decodes one
token for every row in flight with one ``Decoder.decode_step``, which reads each weight once for
all of them: that is where the speed comes from. Prompts are read from the iterable as rows free
up, so any number of them takes bounded memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from lmgen.engine.generation import (
    Finished,
    GenerationSettings,
    LanguageModel,
    Token,
    _events,
    _probabilities,
    _Sample,
    prompt_ids_for,
    require_finite,
)
from lmgen.engine.lookup import PromptLookup
from lmgen.engine.prefix_cache import PrefixCache
from lmgen.engine.sampling import TokenHistory, sample_next_token
from lmgen.errors import InputError
from lmgen.model.decoder import KVCache

GOLDEN = 0x9E3779B97F4A7C15  # spreads the seeds of neighbouring prompts


def prompt_seed(seed: int | None, index: int) -> int | None:
    """The sampling seed of prompt ``index``: the settings' seed itself for the first prompt."""
    return None if seed is None else (seed + index * GOLDEN) % 2**64


@dataclass(frozen=True)
class Request:
    """A prompt with settings of its own (``lmgen batch``'s per-record fields; a server's request)."""

    prompt: str | list[dict] | list[int]
    max_new_tokens: int | None = None  # None: the settings'
    seed: int | None = None  # its own sampling seed; None: the settings' seed spread by its index
    settings: GenerationSettings | None = None  # all of its own (sampling, stops, samples...); None: the run's


@dataclass
class Row:
    """One prompt in flight."""

    index: int
    prompt_ids: list[int]
    settings: GenerationSettings  # its request's: how its tokens are chosen, when it stops
    budget: int  # new tokens it may generate (max_new_tokens, or less near the context's end)
    sample_text: _Sample
    generator: torch.Generator | None
    history: TokenHistory | None
    start: float
    first: float = 0.0  # when its first token was chosen
    token: int = 0  # the last token chosen, fed back at the next step
    sample: int = 0  # which of the prompt's samples (--num-samples)
    prompt_logits: torch.Tensor | None = None  # the prefill's, for the prompt's later samples
    cached: int = 0  # leading prompt tokens whose keys and values came from the prefix cache
    lookup: PromptLookup | None = None  # greedy with --lookup: drafts of its next tokens
    drafted: int = 0
    accepted: int = 0

    @property
    def position(self) -> int:
        """Where the last chosen token goes in the cache."""
        return len(self.prompt_ids) + self.sample_text.count - 1


class PromptError(InputError):
    """A prompt that cannot be used; ``index`` is its 0-based position among the prompts. Raised
    once every prompt before it has finished and its events have been yielded."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def generate_many(lm: LanguageModel, prompts: Iterable[str | list[dict] | list[int] | Request],
                  settings: GenerationSettings = GenerationSettings(), batch_size: int = 8,
                  prefix_cache: PrefixCache | None = None) -> Iterator[Token | Finished]:
    """``Token`` and ``Finished`` events for every prompt (``settings.num_samples`` samples of
    each), tagged with the prompt's 0-based ``index`` and the ``sample``; a sample's events are in
    order, but the samples' are interleaved. A prompt is text, messages (rendered with the chat
    template) or token ids, or a ``Request`` holding one with its own token budget and seed, or
    settings of its own (then its events come from them, as if it ran alone with them). One
    that cannot be used (or an iterable that raises InputError) ends the run with a
    ``PromptError`` naming its index, once every prompt before it has finished and its events
    have been yielded: no work done is lost. With a ``prefix_cache``, each prompt prefills only
    what follows the longest prefix of it found there (kept from earlier prompts' rows)."""
    if batch_size < 1:
        raise InputError(f"batch-size must be >= 1, got {batch_size}")
    engine = Engine(lm, batch_size, prefix_cache)

    def pending():  # (index, sample, token ids, settings, budget, seed), each prompt tokenized once
        for index, prompt in enumerate(prompts):
            request = prompt if isinstance(prompt, Request) else Request(prompt)
            own = request.settings or settings
            ids = prompt_ids_for(lm, request.prompt, own)
            budget = own.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
            if budget < 1:
                raise InputError(f"max_new_tokens must be >= 1, got {budget}")
            seed = prompt_seed(own.seed, index) if request.seed is None else request.seed
            engine.read = index + 1
            for sample in range(own.num_samples):
                yield index, sample, ids, own, budget, seed

    queue, exhausted, refused = pending(), False, None
    while True:
        for slot in engine.free_slots():
            if exhausted:
                break
            try:
                item = next(queue)
            except StopIteration:
                exhausted = True
                break
            except InputError as exc:  # finish what is in flight, then say which prompt it was
                exhausted, refused = True, PromptError(str(exc), engine.read)
                break
            yield from engine.join(slot, *item)
        if engine.in_flight():
            yield from engine.step()
        elif exhausted:  # the loop ends only when the input is used up AND no row is in flight
            if refused is not None:
                raise refused
            return


def generate(lm: LanguageModel, prompt: str | list[dict], settings: GenerationSettings = GenerationSettings()) -> Iterator:
    """Stream ``Token`` events for the continuation of ``prompt``; each sample ends with a ``Finished``.

    The prompt is text, or messages (``[{"role": "user", "content": ...}]``) that the model's
    chat template renders. One that cannot be used raises here, before any event is produced.
    """
    ids = prompt_ids_for(lm, prompt, settings)
    if settings.num_samples > 1 or settings.lookup:  # one row per sample; lookup drafts are checked there
        return generate_many(lm, [ids], settings, batch_size=settings.num_samples)
    return _events(lm, ids, settings)


def in_input_order(events: Iterable, samples: int = 1, keep=lambda event: True) -> Iterator[tuple[int, list]]:
    """(index, its kept events) for each prompt of ``generate_many``'s events, in input order, as
    soon as it and every earlier prompt have finished all ``samples`` of their samples."""
    held: dict[int, list] = {}
    finished: dict[int, int] = {}
    next_index = 0
    for event in events:
        if keep(event):
            held.setdefault(event.index, []).append(event)
        if isinstance(event, Finished):
            finished[event.index] = finished.get(event.index, 0) + 1
        while finished.get(next_index) == samples:
            del finished[next_index]
            yield next_index, held.pop(next_index, [])
            next_index += 1


class Engine:
    """Rows of one KV cache, each a sample of a prompt in flight: prompts join rows as they free
    up (``join``), one ``step`` decodes a token for every row, and ``drop`` frees a prompt's rows
    at once (a request cancelled). ``generate_many`` drives it from an iterable; a server drives
    it from a queue of requests, step by step. With a ``PrefixCache``, a finished row's keys and
    values are kept, and a joining prompt prefills only what follows the longest prefix found."""

    def __init__(self, lm: LanguageModel, batch_size: int, prefix_cache: PrefixCache | None = None):
        self.lm, self.model = lm, lm.model
        self.prefix_cache = prefix_cache
        self.rows: list[Row | None] = [None] * batch_size
        self.read = 0  # prompts read and found usable: the index of the next
        self.cache: KVCache | None = None
        self.forward = torch.inference_mode()(self.model)
        self.decode = torch.inference_mode()(self.model.decode_step)

    def free_slots(self) -> list[int]:
        return [slot for slot, row in enumerate(self.rows) if row is None]

    def in_flight(self) -> list[int]:
        return [slot for slot, row in enumerate(self.rows) if row is not None]

    def drop(self, index: int) -> None:
        """Free every row of prompt ``index``, without events (its request was cancelled)."""
        self.rows = [None if row is not None and row.index == index else row for row in self.rows]

    def join(self, slot: int, index: int, sample: int, ids: list[int], settings: GenerationSettings,
             max_new_tokens: int, seed: int | None) -> Iterator:
        """Put sample ``sample`` of prompt ``index`` (token ids) in row ``slot`` and choose its first
        token. The prompt is prefilled there, or, when another sample of it is in flight, its keys
        and values are copied from that row (a prompt is prefilled once for all its samples)."""
        lm = self.lm
        budget = min(max_new_tokens, lm.config.max_context - len(ids))
        self._reserve(len(ids) + budget)
        seed = prompt_seed(seed, sample)
        device = self.model.device
        row = Row(index, ids, settings, budget, _Sample(lm, settings),
                  torch.Generator(device).manual_seed(seed) if seed is not None else None,
                  TokenHistory(ids, 1, lm.config.vocab_size, device) if settings.sampling.uses_history else None,
                  time.perf_counter(), sample=sample)
        if settings.lookup and settings.sampling.greedy:
            row.lookup = PromptLookup(ids, settings.lookup)
        sibling = next((s for s, r in enumerate(self.rows) if r is not None and r.index == index), None)
        if sibling is not None:  # its first len(ids) positions are the prompt's, whatever it has generated since
            self.cache.k[:, slot, :, : len(ids)] = self.cache.k[:, sibling, :, : len(ids)]
            self.cache.v[:, slot, :, : len(ids)] = self.cache.v[:, sibling, :, : len(ids)]
            logits = self.rows[sibling].prompt_logits
            row.start = self.rows[sibling].start  # its time to first token includes the shared prefill
            row.cached = self.rows[sibling].cached
        else:
            row.cached = self._copy_prefix(slot, ids)
            logits = self.forward(torch.tensor([ids[row.cached :]], device=device), row.cached, self.cache.row(slot),
                                  last_only=True)[:, -1]
            require_finite(logits)
        row.prompt_logits = logits
        row.first = time.perf_counter()
        self.rows[slot] = row
        yield from self._choose(slot, logits)

    def step(self) -> Iterator:
        """One token for every row in flight; more for a row whose lookup draft the model agrees
        with. A row with a draft of k tokens takes k + 1 rows of the decode step, all on its own
        row of the cache at consecutive positions: each sees the keys and values the others
        write before attending, so each row's logits are the ones k + 1 plain steps would give,
        bit for bit (the kernels compute every row as they would alone). Its tokens are then
        chosen one by one from them, as long as each is the drafted one."""
        slots = self.in_flight()
        drafts = {slot: self._draft(self.rows[slot]) for slot in slots}
        tokens, positions, cache_rows = [], [], []
        for slot in slots:
            row, draft = self.rows[slot], drafts[slot]
            tokens += [row.token, *draft]
            positions += range(row.position, row.position + len(draft) + 1)
            cache_rows += [slot] * (len(draft) + 1)
        device = self.model.device
        logits = self.decode(torch.tensor(tokens, device=device), torch.tensor(positions, dtype=torch.int64, device=device),
                             self.cache, torch.tensor(cache_rows, dtype=torch.int64, device=device))
        require_finite(logits)
        at = 0
        for slot in slots:
            draft, row = drafts[slot], self.rows[slot]
            row.drafted += len(draft)
            taken = 0
            for j in range(len(draft) + 1):
                yield from self._choose(slot, logits[at + j : at + j + 1])
                if self.rows[slot] is None or j == len(draft) or row.token != draft[j]:
                    break
                taken += 1
            row.accepted += taken
            if row.lookup is not None:
                row.lookup.checked(len(draft), taken)
            at += len(draft) + 1

    def _draft(self, row: Row) -> list[int]:
        """The tokens prompt lookup guesses follow (none without --lookup), as many as the row's
        budget leaves after the one this step chooses anyway."""
        if row.lookup is None:
            return []
        return row.lookup.draft(row.budget - row.sample_text.count - 1)

    def _choose(self, slot: int, logits: torch.Tensor) -> Iterator:
        """Sample row ``slot``'s next token from its logits (1, vocab); its events."""
        row = self.rows[slot]
        matcher = row.sample_text.matcher
        scores = logits if matcher is None else matcher.restrict(logits)
        token = sample_next_token(scores, row.settings.sampling, row.generator, row.history)
        if row.history is not None:
            row.history.add(token)
        row.token = int(token)
        if row.lookup is not None:
            row.lookup.add(row.token)
        if row.token in self.lm.eos_ids:
            yield self._finish(slot, "stop", row.sample_text.flush())
            return
        text, stopped = row.sample_text.push(row.token)
        probs = _probabilities(logits, token, row.settings.show_probs)
        prob, top = probs[0] if probs else (None, ())
        yield Token(row.token, text, row.sample, prob, top, row.index)
        if stopped:
            yield self._finish(slot, "stop", "")
        elif row.sample_text.count >= row.budget:
            yield self._finish(slot, "length", row.sample_text.flush())

    def _finish(self, slot: int, reason: str, tail: str) -> Finished:
        row, self.rows[slot] = self.rows[slot], None
        if self.prefix_cache is not None:  # the tokens whose keys and values the row holds
            generated = row.sample_text.ids
            held = row.prompt_ids + (generated if row.token in self.lm.eos_ids else generated[:-1])
            n = len(held)
            self.prefix_cache.put(held, self.cache.k[:, slot, :, :n], self.cache.v[:, slot, :, :n])
        done = row.sample_text.finished(reason, tail, len(row.prompt_ids), row.start, row.first, row.sample,
                                        row.index, row.cached)
        return dataclasses.replace(done, drafted=row.drafted, accepted=row.accepted) if row.lookup else done

    def _copy_prefix(self, slot: int, ids: list[int]) -> int:
        """Copy the keys and values of the longest cached prefix of ``ids`` into row ``slot`` (at
        least one token is left to prefill, for its logits); how many tokens that is."""
        if self.prefix_cache is None:
            return 0
        n, k, v = self.prefix_cache.longest(ids)
        n = min(n, len(ids) - 1)
        if n > 0:
            self.cache.k[:, slot, :, :n] = k[:, :, :n]
            self.cache.v[:, slot, :, :n] = v[:, :, :n]
        return n

    def _reserve(self, length: int) -> None:
        """A cache with room for ``length`` positions per row, grown (and its rows kept) if need be."""
        self.cache = self.model.grow_cache(self.cache, length, len(self.rows))
