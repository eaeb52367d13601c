"""lmgen.engine.engine: the one request API (add, abort, step) on a tiny random model.

Invariants: a request that could never fit is refused when added; every job added and not
aborted ends with one Finished per sample; a job's greedy text is what its prompt gives alone,
whatever the prefill budget per step, its neighbours, or the jobs aborted around it; and while a
long prompt is prefilled, every running row still gets a token at every step (the prompt delays
them by one piece, never by its whole length).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgen.engine.batching import generate
from lmgen.engine.engine import Engine, Job
from lmgen.engine.events import Failed, Finished, Token
from lmgen.engine.generation import (
    PREFILL_CHUNK,
    PREFILL_WORK,
    SMALLEST_PIECE,
    GenerationSettings,
    load,
    piece_work,
    prefill_chunks,
)
from lmgen.errors import InputError

CONTEXT = 128  # the tiny model's

prompts = st.lists(st.integers(0, 255), min_size=1, max_size=CONTEXT - 9)


@pytest.fixture(scope="module", params=["float32", "bfloat16", "q8_0"])
def tiny_lm(tiny_dir, request):
    """The tiny model with an fp32 KV cache, a bf16 one and a q8_0 one: every invariant holds for each."""
    return load(tiny_dir, threads=1, kv_dtype=request.param)


def alone(lm, ids, settings) -> Finished:
    return [e for e in generate(lm, ids, dataclasses.replace(settings, num_samples=1)) if isinstance(e, Finished)][0]


def drain(engine: Engine, limit: int = 10_000) -> list:
    events = []
    for _ in range(limit):
        if not engine.busy():
            return events
        events += engine.step()
    raise AssertionError("the engine never emptied")


@given(st.integers(0, 8000), st.integers(1, 9000))
def test_prefill_pieces_tile_the_prompt_and_bound_their_work(start, length):
    pieces = prefill_chunks(start, start + length)
    assert pieces[0][0] == start and pieces[-1][1] == start + length
    assert all(b == c for (_, b), (c, _) in zip(pieces, pieces[1:]))  # contiguous, in order
    for a, b in pieces:
        assert 0 < b - a <= PREFILL_CHUNK
        assert piece_work(a, b) <= PREFILL_WORK + PREFILL_CHUNK**2 or b - a <= SMALLEST_PIECE  # (the smallest, or the tail)


def test_a_job_that_could_never_fit_is_refused_when_added(tiny_lm):
    engine = Engine(tiny_lm, 2)
    with pytest.raises(InputError, match="3 samples"):
        engine.add(Job(ids=[1, 2], settings=GenerationSettings(num_samples=3)))
    assert not engine.busy()


@given(st.lists(prompts, min_size=1, max_size=5), st.integers(1, 4), st.sampled_from([1, 5000, PREFILL_WORK, None]),
       st.sets(st.integers(0, 4)), st.integers(1, 3))
def test_greedy_text_is_the_prompt_alone_whatever_the_budget_and_neighbours(tiny_lm, ids_list, rows, budget,
                                                                            aborted, samples):
    settings = GenerationSettings(max_new_tokens=5, num_samples=min(samples, rows))
    engine = Engine(tiny_lm, rows, prefill_budget=budget)
    idents = [engine.add(Job(ids=ids, settings=settings)) for ids in ids_list]
    events = []
    for step in range(10_000):
        if not engine.busy():
            break
        for i in aborted:  # some jobs are aborted at their step, waiting, prefilling or decoding
            if i == step and i < len(idents):
                engine.abort(idents[i])
        events += engine.step()
    assert not engine.busy()
    done: dict = {}
    for event in events:
        assert not isinstance(event, Failed)
        if isinstance(event, Finished):
            assert (event.index, event.sample) not in done  # one Finished per sample
            done[event.index, event.sample] = event
    for i, ids in enumerate(ids_list):
        finished = [done[idents[i], s] for s in range(settings.num_samples) if (idents[i], s) in done]
        if len(finished) < settings.num_samples:  # only an aborted job may lose samples
            assert i in aborted
            continue
        expected = alone(tiny_lm, ids, settings)
        assert all(f.token_ids == expected.token_ids for f in finished)


def test_a_long_prompt_delays_running_rows_by_one_piece_per_step(tiny_lm):
    settings = GenerationSettings(max_new_tokens=40)
    engine = Engine(tiny_lm, 3, prefill_budget=1)  # one piece per step
    short = engine.add(Job(ids=[1, 2, 3], settings=settings))
    while not any(isinstance(e, Token) for e in engine.step()):
        pass
    long_ids = list(range(100))
    engine.add(Job(ids=long_ids, settings=dataclasses.replace(settings, max_new_tokens=1)))
    steps = 0
    while True:
        events = engine.step()
        steps += 1
        assert any(e.index == short for e in events if isinstance(e, Token)), "a running row missed a step"
        if any(e.index != short for e in events):
            break
    assert steps == len(prefill_chunks(0, len(long_ids)))  # one piece per step, no more, no less
    drain(engine)


def test_end_all_closes_every_row_and_keeps_the_queue(tiny_lm):
    settings = GenerationSettings(max_new_tokens=50)
    engine = Engine(tiny_lm, 1)
    first = engine.add(Job(ids=[5, 6], settings=settings))
    waiting = engine.add(Job(ids=[7], settings=settings))
    engine.step()
    ended = engine.end_all("abort")
    assert [(e.index, e.reason) for e in ended] == [(first, "abort")]
    assert [ident for ident, _ in engine.waiting] == [waiting]
