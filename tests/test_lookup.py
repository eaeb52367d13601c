"""Prompt-lookup decoding (lmgen.engine.lookup, checked in batching.Engine.step): drafts are the
tokens that followed the latest earlier occurrence of the text's suffix, and greedy output with
--lookup is the output without it, token for token, for any family, weight format, batch,
constraint, stop string and end-of-sequence set."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_families import CASES, save_family

import lmgen
from lmgen.errors import CheckpointError
from lmgen.engine.batching import generate, generate_many
from lmgen.engine.constraint import Constraint
from lmgen.engine.generation import Finished, GenerationSettings
from lmgen.engine.lookup import NGRAMS, PromptLookup
from lmgen.errors import InputError


def brute_force_draft(tokens: list[int], count: int) -> list[int]:
    for n in NGRAMS:
        if len(tokens) <= n:
            continue
        suffix = tokens[-n:]
        starts = [i for i in range(len(tokens) - n) if tokens[i : i + n] == suffix]
        if starts:
            end = starts[-1] + n
            return tokens[end : end + count]
    return []


@given(st.lists(st.integers(0, 4), max_size=60), st.integers(0, 8), st.integers(-1, 10))
def test_a_draft_follows_the_latest_earlier_occurrence_of_the_longest_suffix(tokens, limit, room):
    lookup = PromptLookup(tokens[: len(tokens) // 2], limit)
    for token in tokens[len(tokens) // 2 :]:  # indexed as they arrive, as output tokens are
        lookup.add(token)
    count = min(room, lookup.worth())
    assert lookup.draft(room) == (brute_force_draft(tokens, count) if count > 0 else [])


def test_drafts_grow_while_accepted_stop_when_they_fail_and_come_back():
    lookup = PromptLookup([], 8)
    assert lookup.worth() == 1  # even odds: one token is worth its row
    for _ in range(6):
        lookup.checked(lookup.worth(), lookup.worth())  # every drafted token taken
    assert lookup.worth() == 8
    for _ in range(6):
        lookup.checked(lookup.worth(), 0)  # every draft wrong from its first token
    assert lookup.worth() == 0
    steps = 0
    while lookup.worth() == 0:  # no drafts, no evidence: back to a one-token try in a while
        lookup.checked(0, 0)
        steps += 1
    assert 5 <= steps <= 60 and lookup.worth() == 1


def test_lookup_is_bounded():
    with pytest.raises(InputError, match="lookup must be from 0 to 64"):
        GenerationSettings(lookup=65)


# --------------------------------------------------------------------- greedy, with and without

FAMILIES = ["llama-llama3-tied", "qwen3-tied-sliding", "gemma2", "phi3-mha-sliding"]
DTYPES = [None, "q8", "q4", "bfloat16"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for case in FAMILIES:
        model_type, overrides = CASES[case]
        path = tmp_path_factory.mktemp(case)
        save_family(model_type, overrides, path)
        for dtype in DTYPES:
            out[case, dtype] = lmgen.load(path, dtype=dtype, threads=1)
    return out


def outputs(lm, prompts, settings, batch_size):
    done = {e.index: e for e in generate_many(lm, prompts, settings, batch_size) if isinstance(e, Finished)}
    return [done[i] for i in range(len(prompts))]


repetitive = st.lists(st.integers(0, 255), min_size=1, max_size=6).flatmap(
    lambda unit: st.integers(1, 8).map(lambda times: (unit * times)[:100]))  # drafts found everywhere
prompts = st.lists(st.one_of(repetitive, st.lists(st.integers(0, 255), min_size=1, max_size=40)), min_size=1,
                   max_size=4)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(FAMILIES), st.sampled_from(DTYPES), prompts, st.integers(1, 8), st.integers(1, 3),
       st.integers(1, 24), st.sets(st.integers(0, 299), max_size=40), st.sampled_from([(), ("a",), (" ", "e")]),
       st.sampled_from([None, Constraint("regex", "[a-e ]+"), Constraint("regex", r"[\s\S]*")]))
def test_greedy_output_with_lookup_is_the_output_without(models, case, dtype, prompts, lookup, batch_size, budget,
                                                          eos, stop, constraint):
    lm = dataclasses.replace(models[case, dtype], eos_ids=frozenset(eos))
    plain = GenerationSettings(max_new_tokens=budget, stop=stop, constraint=constraint)
    try:
        without = outputs(lm, prompts, plain, batch_size)
    except CheckpointError as refused:  # (the pad token alone: its zero embedding gives logits all 0)
        with pytest.raises(CheckpointError, match=re.escape(str(refused))):  # the same outcome with lookup
            outputs(lm, prompts, dataclasses.replace(plain, lookup=lookup), batch_size)
        return
    with_lookup = outputs(lm, prompts, dataclasses.replace(plain, lookup=lookup), batch_size)
    for a, b in zip(without, with_lookup):
        assert (a.token_ids, a.reason, a.output) == (b.token_ids, b.reason, b.output)
        assert 0 <= b.accepted <= b.drafted and a.drafted == 0


def test_sampling_does_not_draft(models):
    lm = models["llama-llama3-tied", None]
    sampled = GenerationSettings(max_new_tokens=16, sampling=lmgen.SamplingSettings(temperature=0.8), seed=3, lookup=8)
    done = [e for e in generate(lm, [1, 2, 3] * 10, sampled) if isinstance(e, Finished)][0]
    assert done.drafted == 0
    plain = [e for e in generate(lm, [1, 2, 3] * 10, dataclasses.replace(sampled, lookup=0)) if isinstance(e, Finished)]
    assert done.token_ids == plain[0].token_ids  # seeded sampling: the same tokens


PARAGRAPH = ("Repeat the following paragraph exactly, word for word:\nThe history of Paris begins with a small "
             "settlement on an island in the Seine. Over the centuries it grew into the capital of France, a centre "
             "of art, science and trade, and one of the largest cities in Europe.\nRepeated:\n")


def test_a_repeated_paragraph_accepts_drafts_and_reads_the_same(smollm2_lm):
    plain = GenerationSettings(max_new_tokens=48)
    alone = [e for e in generate(smollm2_lm, PARAGRAPH, plain) if isinstance(e, Finished)][0]
    drafted = [e for e in generate(smollm2_lm, PARAGRAPH, dataclasses.replace(plain, lookup=8))
               if isinstance(e, Finished)][0]
    assert drafted.token_ids == alone.token_ids
    assert drafted.accepted >= 20  # most of the paragraph came from drafts


@pytest.fixture(scope="module")
def smollm2_lm():
    from lmgen.formats.paths import bundled_gguf

    return lmgen.load(bundled_gguf())


def test_stats_report_drafted_and_accepted_tokens(cli):
    result = cli("generate", "--lookup", "8", "-n", "32", "--stats", "--json", PARAGRAPH)
    assert result.returncode == 0, result.stderr
    assert b"lookup drafted" in result.stderr and b"accepted" in result.stderr
    refused = cli("generate", "--lookup", "99", "hi")
    assert refused.returncode == 2 and b"lookup must be from 0 to 64" in refused.stderr
