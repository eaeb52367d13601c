"""Continuous batching: many prompts decoding together, each exactly as it would alone.

``generate_many`` drives the engine (``engine.Engine``: one request API, ``add``/``step``) from
an iterable: it keeps up to ``batch_size`` samples in flight, one per row of a KV cache, each
seeded from the settings' seed and the prompt's index, so that a prompt's text does not depend
on its neighbours or the batch size. A prompt joins when rows are free and leaves when it
finishes (end of sequence, a stop string, its token budget or the context window), freeing its
row for the next prompt. Every step decodes one token for every row in flight with one
``Decoder.decode_step``, which reads each weight once for all of them: that is where the speed
comes from. Prompts are read from the iterable as rows free up, so any number of them takes
bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lmgen.engine.engine import Engine, Job, prompt_seed  # noqa: F401 (prompt_seed: also from here)
from lmgen.engine.generation import (
    Finished,
    GenerationSettings,
    LanguageModel,
    Token,
    events_alone,
    prompt_ids_for,
)
from lmgen.engine.prefix_cache import PrefixCache
from lmgen.errors import InputError


@dataclass(frozen=True)
class Request:
    """A prompt with settings of its own (``lmgen batch``'s per-record fields; a server's request)."""

    prompt: str | list[dict] | list[int]
    max_new_tokens: int | None = None  # None: the settings'
    seed: int | None = None  # its own sampling seed; None: the settings' seed spread by its index
    settings: GenerationSettings | None = None  # all of its own (sampling, stops, samples...); None: the run's


class PromptError(InputError):
    """A prompt that cannot be used; ``index`` is its 0-based position among the prompts. Raised
    once every prompt before it has finished and its events have been yielded."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def generate_many(lm: LanguageModel, prompts: Iterable[str | list[dict] | list[int] | Request],
                  settings: GenerationSettings = GenerationSettings(), batch_size: int = 8,
                  prefix_cache: PrefixCache | None = None, kv_cache_mib: float | None = None) -> Iterator[Token | Finished]:
    """``Token`` and ``Finished`` events for every prompt (``settings.num_samples`` samples of
    each), tagged with the prompt's 0-based ``index`` and the ``sample``; a sample's events are in
    order, but the samples' are interleaved. A prompt is text, messages (rendered with the chat
    template) or token ids, or a ``Request`` holding one with its own token budget and seed, or
    settings of its own (then its events come from them, as if it ran alone with them). One
    that cannot be used (or an iterable that raises InputError) ends the run with a
    ``PromptError`` naming its index, once every prompt before it has finished and its events
    have been yielded: no work done is lost. With a ``prefix_cache``, each prompt prefills only
    what follows the longest prefix of it found there (kept from earlier prompts' rows). The rows
    share ``kv_cache_mib`` MiB of KV cache (default: what memory allows, up to every row's whole
    context); rows that outgrow it are preempted and resumed, their text unchanged."""
    engine = Engine(lm, batch_size, prefix_cache, kv_cache_mib=kv_cache_mib)
    jobs, refused = _jobs(lm, prompts, settings, batch_size), None
    job = None
    while True:
        while refused is None:  # read prompts as rows free up: any number of them in bounded memory
            try:
                job = job or next(jobs)
            except StopIteration:
                break
            except PromptError as exc:  # finish what is in flight, then say which prompt it was
                refused = exc
                break
            if job.rows > engine.free_rows():
                break
            try:
                engine.add(job)
            except InputError as exc:  # a prompt the KV cache can never hold
                refused, job = PromptError(str(exc), job.index), None
                break
            job = None
        if engine.busy():
            yield from engine.step()
        elif job is None:  # the loop ends only when the input is used up AND no row is in flight
            if refused is not None:
                raise refused
            return


def _jobs(lm: LanguageModel, prompts, settings: GenerationSettings, rows: int) -> Iterator[Job]:
    """Each prompt tokenized once, as jobs of at most ``rows`` samples each (a prompt with more
    samples than rows runs them a group at a time); PromptError for one that cannot be used."""
    read = 0  # prompts read and found usable: the index of the next
    try:
        for prompt in prompts:
            request = prompt if isinstance(prompt, Request) else Request(prompt)
            own = request.settings or settings
            ids = prompt_ids_for(lm, request.prompt, own)
            budget = own.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
            if budget < 1:
                raise InputError(f"max_new_tokens must be >= 1, got {budget}")
            seed = prompt_seed(own.seed, read) if request.seed is None else request.seed
            for first in range(0, own.num_samples, rows):
                yield Job(ids=ids, settings=own, max_new_tokens=budget, seed=seed, index=read, first_sample=first,
                          samples=min(rows, own.num_samples - first))
            read += 1
    except InputError as exc:
        raise PromptError(str(exc), read) from None


def generate(lm: LanguageModel, prompt: str | list[dict], settings: GenerationSettings = GenerationSettings()) -> Iterator:
    """Stream ``Token`` events for the continuation of ``prompt``; each sample ends with a ``Finished``.

    The prompt is text, or messages (``[{"role": "user", "content": ...}]``) that the model's
    chat template renders. One that cannot be used raises here, before any event is produced.
    """
    ids = prompt_ids_for(lm, prompt, settings)
    if settings.num_samples > 1 or settings.lookup:  # one row per sample; lookup drafts are checked there
        return generate_many(lm, [ids], settings, batch_size=settings.num_samples)
    return events_alone(lm, ids, settings)


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
