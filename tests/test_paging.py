"""The paged KV cache (model/kv_cache.py) and what the engine does with it (engine/paging.py):
rows take pages as they grow from one pool, a job waits until its prompt's pages fit, and rows
that outgrow the pool are preempted and resumed with their text unchanged.

Invariants, over random inputs on a tiny random model:
- pages: no page is held by two rows, none is lost (held + free = handed out), page 0 (the
  zeros every unreserved entry points to) is never handed out, and what is written is read back;
- any pool that holds each job's own whole length gives every sample the record it gets with a
  pool of every row's whole context (preemption changes nothing a client sees), exactly once;
- a row that cannot grow even alone ends with reason "length", its text a prefix of its text
  with room; a prompt the pool can never hold is refused, costing no earlier prompt's work.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings as hyp_settings
from hypothesis import strategies as st

from lmgen.engine.batching import PromptError, generate_many
from lmgen.engine.engine import Engine, Job
from lmgen.engine.generation import Finished, GenerationSettings, load
from lmgen.engine.sampling import SamplingSettings
from lmgen.errors import InputError
from lmgen.model.kv_cache import PAGE, KVCache, pages_for

CONTEXT = 128  # the tiny model's


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir):
    return load(tiny_dir, threads=1)


def mib_of(lm, pages: int) -> float:
    """--kv-cache-mib for a pool of ``pages`` pages."""
    return pages * KVCache.page_size(lm.model.cfg, lm.model.kv_dtype or lm.model.dtype) / 2**20


def records(events) -> dict[tuple[int, int], tuple]:
    done = [e for e in events if isinstance(e, Finished)]
    out = {(e.index, e.sample): (e.token_ids, e.reason, e.output) for e in done}
    assert len(out) == len(done)  # exactly one Finished per sample
    return out


# ---------------------------------------------------------------------------------- the pool

@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 60)), max_size=40))
def test_pages_are_never_shared_lost_or_page_zero(tiny_lm, ops):
    """reserve(row, n) for n ≥ 0, release(row) for n = -1, in any order, on a pool of 9 pages."""
    cache = KVCache(tiny_lm.model.cfg, 4, 64, torch.float32, "cpu", limit=9)
    for row, n in ops:
        before = cache.free_pages()
        if n < 0:
            cache.release(row)
        elif not cache.reserve(row, n):
            assert cache.free_pages() == before and pages_for(n) - cache.held(row) // PAGE > before
        held = [int(p) for p in cache.table.flatten() if p > 0]
        assert len(held) == len(set(held)) and 0 not in held
        assert len(held) + cache.free_pages() == cache.pages == 9


@given(st.integers(1, 64), st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_what_is_written_to_a_row_is_read_back_whatever_pages_it_holds(tiny_lm, n, churn):
    cfg = tiny_lm.model.cfg
    cache = KVCache(cfg, 4, 64, torch.float32, "cpu", limit=20)
    for row in churn:  # other rows take and give back pages first: the row's pages are scattered
        cache.reserve(row, 17 * (row + 1))
        if row % 2:
            cache.release(row)
    cache.release(0)
    assert cache.reserve(0, n)
    k = torch.randn(cfg.n_layers, cfg.n_kv_heads, n, cfg.head_dim)
    v = torch.randn_like(k)
    cache.write(0, k, v)
    got_k, got_v = cache.read(0, n)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)


def test_a_position_without_a_page_is_refused_not_written_to_page_zero(tiny_lm):
    model = tiny_lm.model
    cache = model.new_cache(1, 64, limit=4)
    with pytest.raises(ValueError, match="no page reserved"):
        model(torch.tensor([[1, 2, 3]]), 0, cache)
    assert not cache.k[:, 0].any() and not cache.v[:, 0].any()


# ------------------------------------------------------------------------ preemption, resumption

@st.composite
def runs(draw):
    sampled = draw(st.booleans())
    settings = GenerationSettings(
        max_new_tokens=draw(st.integers(1, 40)),
        sampling=SamplingSettings(temperature=1.0, top_k=draw(st.integers(0, 20))) if sampled else SamplingSettings(),
        seed=draw(st.integers(0, 2**64 - 1)) if sampled else None,
        num_samples=draw(st.integers(1, 3)),
    )
    prompts = draw(st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=60), min_size=1, max_size=5))
    return prompts, settings, draw(st.integers(1, 5))


def job_pages(lm, prompts, settings, batch_size) -> int:
    """The most pages one job (a prompt's samples admitted together) holds at its longest."""
    return max(min(settings.num_samples, batch_size) *
               pages_for(min(len(ids) + settings.max_new_tokens, CONTEXT) + 1) for ids in prompts)


@hyp_settings(max_examples=40)
@given(runs(), st.integers(0, 3))
def test_a_pool_that_holds_each_job_gives_every_sample_its_record(tiny_lm, run, spare):
    """With room for only the largest job (plus 0-3 pages), rows are preempted and resumed as
    others grow: every record is still the one a pool of every row's whole context gives."""
    prompts, settings, batch_size = run
    roomy = records(generate_many(tiny_lm, prompts, settings, batch_size))
    tight = job_pages(tiny_lm, prompts, settings, batch_size) + spare
    assert records(generate_many(tiny_lm, prompts, settings, batch_size, kv_cache_mib=mib_of(tiny_lm, tight))) == roomy


def test_rows_are_preempted_and_resumed_with_their_text_unchanged(tiny_lm):
    """Three greedy rows of 60 tokens in a pool that holds one and a half: the youngest is
    preempted (it waits, then prefills its prompt and replays its tokens), and each text is the
    one it has alone."""
    settings = GenerationSettings(max_new_tokens=60)
    prompts = [[10 + i, 20, 30 + i] for i in range(3)]
    alone = records(generate_many(tiny_lm, prompts, settings, 3))
    engine = Engine(tiny_lm, 3, kv_cache_mib=mib_of(tiny_lm, pages_for(64) * 3 // 2))
    for i, ids in enumerate(prompts):
        engine.add(Job(ids=ids, settings=settings, index=i))
    events, preempted = [], 0
    while engine.busy():
        events += engine.step()
        preempted = max(preempted, len(engine.preempted))
    assert preempted > 0
    assert records(events) == alone


def test_a_row_that_cannot_grow_even_alone_ends_with_length(tiny_lm):
    settings = GenerationSettings(max_new_tokens=100)
    ids = [5, 6, 7]
    (tokens, reason, output), = records(generate_many(tiny_lm, [ids], settings, 1)).values()
    (short, short_reason, short_output), = records(
        generate_many(tiny_lm, [ids], settings, 1, kv_cache_mib=mib_of(tiny_lm, 2))).values()
    # the 32 positions of two pages, and the token chosen from the last one's logits (never fed back)
    assert short_reason == "length" and len(ids) + len(short) == 2 * PAGE + 1
    assert tokens[: len(short)] == short and output.startswith(short_output)


def test_a_prompt_the_pool_can_never_hold_is_refused_after_the_earlier_ones(tiny_lm):
    settings = GenerationSettings(max_new_tokens=3)
    small, huge = [1, 2, 3], list(range(100))
    events = []
    with pytest.raises(PromptError, match="--kv-cache-mib") as raised:
        for event in generate_many(tiny_lm, [small, huge], settings, 2, kv_cache_mib=mib_of(tiny_lm, 3)):
            events.append(event)
    assert raised.value.index == 1
    assert [(e.index, e.reason) for e in events if isinstance(e, Finished)] == [(0, "length")]
    engine = Engine(tiny_lm, 2, kv_cache_mib=mib_of(tiny_lm, 3))
    with pytest.raises(InputError, match="needs more KV cache"):
        engine.add(Job(ids=huge, settings=settings))


def test_a_preempted_job_can_be_aborted_and_ends_with_the_others(tiny_lm):
    """abort and end_all see preempted rows: an aborted one never resumes, end_all ends it."""
    settings = GenerationSettings(max_new_tokens=60)
    engine = Engine(tiny_lm, 2, kv_cache_mib=mib_of(tiny_lm, pages_for(64) + 2))
    first, second = (engine.add(Job(ids=[9, i], settings=settings, index=i)) for i in range(2))
    while not engine.preempted:
        engine.step()
    victim = engine.preempted[0].job
    ended = engine.end_all("abort")
    assert sorted(e.index for e in ended) == [0, 1] and all(e.reason == "abort" for e in ended)
    assert not engine.busy() and engine.cache.free_pages() == engine.cache.pages
    engine = Engine(tiny_lm, 2, kv_cache_mib=mib_of(tiny_lm, pages_for(64) + 2))
    for i in range(2):
        engine.add(Job(ids=[9, i], settings=settings, index=i))
    while not engine.preempted:
        engine.step()
    engine.abort(victim)
    events = []
    while engine.busy():
        events += engine.step()
    assert [e.index for e in events if isinstance(e, Finished)] == [1 - victim]


# --------------------------------------------------------------------------------------- q8_0

@given(st.lists(st.floats(-1e4, 1e4, width=32), min_size=64, max_size=64), st.sampled_from([32, 64]))
def test_q8_values_are_within_half_a_step_and_zeros_stay_zeros(values, block):
    from lmgen.model.kv_cache import dequantize_q8, quantize_q8

    x = torch.tensor(values, dtype=torch.float32)
    q, scale = quantize_q8(x, block)
    assert q.dtype == torch.int8 and scale.shape == (64 // block,) and int(q.abs().max()) <= 127
    step = scale.repeat_interleave(block)
    assert bool(((dequantize_q8(q, scale) - x).abs() <= step / 2 * (1 + 1e-6) + 1e-30).all())
    assert bool((dequantize_q8(q, scale)[x == 0] == 0).all())


def test_a_q8_cache_reads_back_what_it_stored_and_copies_rows_bit_for_bit(tiny_lm):
    cfg = tiny_lm.model.cfg
    cache = KVCache(cfg, 3, 64, torch.int8, "cpu", limit=12)
    n = 37
    for row in range(3):
        assert cache.reserve(row, n)
    k = torch.randn(cfg.n_layers, cfg.n_kv_heads, n, cfg.head_dim)
    v = torch.randn_like(k)
    cache.write(0, k, v)
    got_k, got_v = cache.read(0, n)
    assert (got_k - k).abs().max() <= k.abs().max() / 127 and (got_v - v).abs().max() <= v.abs().max() / 127
    cache.copy(0, 2, n)
    assert all(torch.equal(a, b) for a, b in zip(cache.read(2, n), (got_k, got_v)))


def test_a_q8_cache_of_heads_of_64_reads_as_pytorch_reads_it(smollm2_dir, monkeypatch):
    """SmolLM2's heads are 64 wide: two blocks of 32 each, which the native step must index as
    PyTorch's path does (a scale misplaced by one block puts logits off by whole units): the two
    paths' logits over 8 decode steps agree within a few rounding flips of the q8 values."""
    from lmgen.model import kernels

    lm = load(smollm2_dir, kv_dtype="q8_0")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])

    def stepwise():
        cache = lm.model.new_cache(1, 32)
        assert cache.q8_block == 32 and cache.k_scale.shape[-1] == 2
        with torch.inference_mode():
            out = [lm.model(ids[:, :4], 0, cache)]
            out += [lm.model(ids[:, i : i + 1], i, cache) for i in range(4, 12)]
        return torch.cat(out, dim=1)

    native = stepwise()
    assert lm.model.plan is not None
    monkeypatch.setattr(kernels, "library", lambda: None)
    reference = stepwise()
    assert lm.model.plan is None
    # rounding flips of q8 values (the paths' keys differ in their last bits) move logits by up to
    # ~0.15 here; the native step reading each value with its neighbour block's scale: 4 to 38
    assert (native - reference).abs().max().item() < 1.0
