"""lmgen.engine.prefix_cache, and the engine with one: a prompt prefills only what follows the
longest prefix of it that an earlier row held, and its output is what it is without the cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmgen.engine.batching import generate_many
from lmgen.engine.generation import Finished, GenerationSettings, Token, load
from lmgen.engine.prefix_cache import PrefixCache, common_prefix

LAYERS, HEADS, DIM = 2, 1, 3
ENTRY_BYTES_PER_TOKEN = 2 * LAYERS * HEADS * DIM * 4  # keys and values, fp32


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2
    assert common_prefix((1, 2), [1, 2, 3]) == 2


def keys_of(ids: list[int]) -> torch.Tensor:
    """Keys whose every position holds its own token id: what a lookup returns can be checked."""
    return torch.tensor(ids, dtype=torch.float32)[None, None, :, None].expand(LAYERS, HEADS, len(ids), DIM).clone()


sequences = st.lists(st.integers(0, 3), min_size=0, max_size=12)  # few ids: prefixes shared often


@given(st.lists(st.tuples(st.booleans(), sequences), max_size=40), st.integers(0, 30))
def test_a_lookup_finds_the_longest_prefix_held_and_memory_stays_bounded(ops, capacity_tokens):
    cache = PrefixCache(capacity_tokens * ENTRY_BYTES_PER_TOKEN)
    for put, ids in ops:
        if put:
            cache.put(ids, keys_of(ids), -keys_of(ids))
        else:
            n, k, v = cache.longest(ids)
            assert n == max((common_prefix(key, ids) for key in cache.entries), default=0)
            if n:  # the keys and values of exactly those tokens
                assert k[0, 0, :n, 0].tolist() == ids[:n] and v[0, 0, :n, 0].tolist() == [-i for i in ids[:n]]
        held = sum(2 * k.numel() * k.element_size() for k, _ in cache.entries.values())
        assert cache.held == held <= cache.capacity
        keys = list(cache.entries)
        assert not any(a != b and b[: len(a)] == a for a in keys for b in keys)  # no entry within another


def test_the_least_recently_used_entry_goes_first():
    cache = PrefixCache(2 * 4 * ENTRY_BYTES_PER_TOKEN)
    for ids in ([1, 1, 1, 1], [2, 2, 2, 2]):
        cache.put(ids, keys_of(ids), keys_of(ids))
    assert cache.longest([1, 1, 9])[0] == 2  # [1, 1, 1, 1] used: [2, 2, 2, 2] is now the oldest
    cache.put([3, 3, 3, 3], keys_of([3] * 4), keys_of([3] * 4))
    assert list(cache.entries) == [(1, 1, 1, 1), (3, 3, 3, 3)]


# ---------------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir):
    return load(tiny_dir, threads=1)


NEAR_TIE = 1e-4  # cached keys are computed in other chunks than a cold prefill: equal to ~1e-6


def outputs(lm, prompts, settings, batch_size, prefix_cache=None) -> dict[int, tuple[list[Token], Finished]]:
    tokens: dict[int, list[Token]] = {}
    done = {}
    for event in generate_many(lm, prompts, settings, batch_size, prefix_cache):
        if isinstance(event, Finished):
            done[event.index] = event
        else:
            tokens.setdefault(event.index, []).append(event)
    return {i: (tokens.get(i, []), done[i]) for i in done}


@given(st.lists(st.integers(0, 255), min_size=1, max_size=60), st.lists(st.tuples(st.integers(0, 60),
       st.lists(st.integers(0, 255), max_size=20)), min_size=1, max_size=8), st.integers(1, 3), st.integers(0, 200))
def test_greedy_output_is_the_same_with_the_cache_and_only_the_rest_is_prefilled(tiny_lm, base, cuts, batch_size,
                                                                                 capacity_tokens):
    prompts = [base[:cut] + tail for cut, tail in cuts if base[:cut] + tail]
    settings = GenerationSettings(max_new_tokens=6, show_probs=2)
    cache = PrefixCache(capacity_tokens * tiny_lm.model.cfg.n_layers * 2 * 4 * tiny_lm.model.cfg.kv_dim)
    cold, warm = outputs(tiny_lm, prompts, settings, batch_size), outputs(tiny_lm, prompts, settings, batch_size, cache)
    assert cold.keys() == warm.keys() == set(range(len(prompts)))
    for i, prompt in enumerate(prompts):
        (cold_tokens, cold_done), (warm_tokens, warm_done) = cold[i], warm[i]
        assert 0 <= warm_done.cached_tokens < len(prompt) and cold_done.cached_tokens == 0
        for a, b in zip(cold_tokens, warm_tokens):
            if a.id != b.id:  # only where the two likeliest tokens were all but tied
                assert abs(a.top[0][1] - a.top[1][1]) < NEAR_TIE
                break
        else:
            assert [t.id for t in cold_tokens] == [t.id for t in warm_tokens]
            assert cold_done.reason == warm_done.reason
    assert cache.held <= cache.capacity


def test_a_repeated_prompt_prefills_one_token(tiny_lm):
    prompt = list(range(40, 80))
    cache = PrefixCache(1 << 24)
    settings = GenerationSettings(max_new_tokens=5)
    first, second = (outputs(tiny_lm, [prompt], settings, 1, cache)[0][1] for _ in range(2))
    assert first.cached_tokens == 0 and second.cached_tokens == len(prompt) - 1
    assert first.token_ids == second.token_ids
    longer = outputs(tiny_lm, [prompt + list(second.token_ids) + [7]], settings, 1, cache)[0][1]
    assert longer.cached_tokens >= len(prompt) + len(second.token_ids) - 1  # the reply's keys were kept too
