"""The engine's invariants (batching.generate_many), over random inputs on a tiny random model.

For any prompts (text or token ids, one token to nearly the whole context), any batch size, token
budget, number of samples, stop strings, constraint and end-of-sequence ids (many, so that
samples end at their first token): exactly one ``Finished`` per (prompt, sample), each sample's
events in order and adding up to its record, greedy text equal to the prompt run alone, seeded
samples independent of the batch size, and a prompt that cannot be used costs no earlier work.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgen.engine.batching import PromptError, generate, generate_many, prompt_seed
from lmgen.engine.constraint import Constraint
from lmgen.engine.generation import Finished, GenerationSettings, Token, load
from lmgen.engine.sampling import SamplingSettings

CONTEXT = 128  # the tiny model's

text_prompts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
id_prompts = st.lists(st.integers(0, 255), min_size=1, max_size=CONTEXT - 1)
prompt_lists = st.lists(st.one_of(text_prompts, id_prompts, st.just([65])), min_size=0, max_size=7)
constraints = st.sampled_from([None, Constraint("regex", "[a-e ]+"), Constraint("regex", "a"),
                               Constraint("regex", r"[\s\S]*")])


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir):
    return load(tiny_dir, threads=1)


@st.composite
def runs(draw):
    """(prompts, settings, batch size, end-of-sequence ids)"""
    sampled = draw(st.booleans())
    sampling = SamplingSettings(temperature=1.0, top_k=draw(st.integers(0, 20))) if sampled else SamplingSettings()
    settings = GenerationSettings(
        max_new_tokens=draw(st.integers(1, 6)),
        sampling=sampling,
        seed=draw(st.integers(0, 2**64 - 1)) if sampled else None,
        stop=tuple(draw(st.lists(st.sampled_from(["a", "e", " ", "ab", "\n", "é"]), max_size=2))),
        num_samples=draw(st.integers(1, 3)),
        constraint=draw(constraints),
    )
    eos = draw(st.sets(st.integers(0, 299), max_size=200))  # many: samples often end at once
    return draw(prompt_lists), settings, draw(st.integers(1, 6)), frozenset(eos | {256})


def with_eos(lm, eos):
    return dataclasses.replace(lm, eos_ids=eos)


def by_sample(events) -> dict[tuple[int, int], list]:
    out: dict[tuple[int, int], list] = {}
    for event in events:
        out.setdefault((event.index, event.sample), []).append(event)
    return out


def check_samples(samples: dict, prompts: list, settings: GenerationSettings) -> None:
    """Exactly one Finished per (prompt, sample), last; the Tokens add up to it."""
    assert set(samples) == {(i, s) for i in range(len(prompts)) for s in range(settings.num_samples)}
    for events in samples.values():
        *tokens, done = events
        assert isinstance(done, Finished) and all(isinstance(t, Token) for t in tokens)
        assert done.reason in ("stop", "length")
        assert [t.id for t in tokens] == list(done.token_ids)
        assert "".join(t.text for t in tokens) + done.text == done.output
        assert 0 <= done.new_tokens == len(done.token_ids) <= settings.max_new_tokens


@given(runs())
def test_every_prompt_and_sample_finishes_exactly_once(tiny_lm, run):
    prompts, settings, batch_size, eos = run
    lm = with_eos(tiny_lm, eos)
    samples = by_sample(generate_many(lm, prompts, settings, batch_size))
    check_samples(samples, prompts, settings)
    if settings.sampling.greedy:  # each prompt's text is what it gives alone, whatever its neighbours
        for i, prompt in enumerate(prompts):
            alone = [e for e in generate(lm, prompt, dataclasses.replace(settings, num_samples=1))
                     if isinstance(e, Finished)][0]
            assert all(samples[i, s][-1].output == alone.output for s in range(settings.num_samples))
    else:  # seeded samples do not depend on the batch size
        one = by_sample(generate_many(lm, prompts, settings, 1))
        assert {k: v[-1].token_ids for k, v in one.items()} == {k: v[-1].token_ids for k, v in samples.items()}


@given(runs(), st.data())
def test_a_prompt_that_cannot_be_used_costs_no_earlier_work(tiny_lm, run, data):
    prompts, settings, batch_size, eos = run
    bad = data.draw(st.sampled_from(["", [], [300], list(range(CONTEXT)), [{"role": 1}]]))
    at = data.draw(st.integers(0, len(prompts)))
    events = []
    with pytest.raises(PromptError) as raised:
        for event in generate_many(with_eos(tiny_lm, eos), [*prompts[:at], bad, *prompts[at:]], settings, batch_size):
            events.append(event)
    assert raised.value.index == at
    check_samples(by_sample(events), prompts[:at], settings)  # every earlier prompt, whole; none after


@given(st.lists(id_prompts, min_size=1, max_size=4), st.integers(1, 4), st.integers(0, 2**64 - 1))
def test_a_prompts_seed_depends_on_its_index_only(tiny_lm, prompts, batch_size, seed):
    settings = GenerationSettings(max_new_tokens=4, sampling=SamplingSettings(temperature=1.0), seed=seed)
    together = by_sample(generate_many(tiny_lm, prompts, settings, batch_size))
    for i, prompt in enumerate(prompts):
        alone = dataclasses.replace(settings, seed=prompt_seed(seed, i))
        done = [e for e in generate(tiny_lm, prompt, alone) if isinstance(e, Finished)][0]
        assert together[i, 0][-1].token_ids == done.token_ids


# logit_bias: none, or a few tokens each shifted anywhere from -100 to 100 (-100 and 100 often)
biases = st.one_of(st.just({}), st.dictionaries(st.integers(0, 299), st.one_of(st.sampled_from([-100.0, 100.0]),
                                                                                st.floats(-100, 100)), max_size=12))


@st.composite
def own_settings(draw):
    """A request's settings of its own: greedy or seeded sampling, its logit_bias, stops, budget and samples."""
    sampled = draw(st.booleans())
    return GenerationSettings(
        max_new_tokens=draw(st.integers(1, 6)),
        sampling=SamplingSettings(temperature=1.0, top_k=draw(st.integers(0, 20)),
                                  repetition_penalty=draw(st.sampled_from([1.0, 1.3])),
                                  logit_bias=draw(biases)) if sampled else SamplingSettings(logit_bias=draw(biases)),
        seed=draw(st.integers(0, 2**64 - 1)) if sampled else None,
        stop=tuple(draw(st.lists(st.sampled_from(["a", "e", " "]), max_size=2))),
        num_samples=draw(st.integers(1, 3)),
    )


@given(st.lists(st.tuples(st.one_of(text_prompts, id_prompts), own_settings()), min_size=1, max_size=5),
       st.integers(1, 5))
def test_requests_with_settings_of_their_own_each_decode_as_alone(tiny_lm, requests, batch_size):
    """Rows with different settings share every step (as a server's requests will: different
    logit_bias or none among them), and each request's samples are what it gives alone with its
    settings."""
    from lmgen.engine.batching import Request

    together = by_sample(generate_many(tiny_lm, [Request(p, settings=s) for p, s in requests], batch_size=batch_size))
    for i, (prompt, own) in enumerate(requests):
        for s in range(own.num_samples):  # each sample alone, through the one-prompt decode loop
            seed = None if own.seed is None else prompt_seed(prompt_seed(own.seed, i), s)
            alone = [e for e in generate(tiny_lm, prompt, dataclasses.replace(own, num_samples=1, seed=seed))
                     if isinstance(e, Finished)][0]
            assert together[i, s][-1].token_ids == alone.token_ids


@given(st.lists(st.one_of(text_prompts, id_prompts), min_size=1, max_size=4), st.data(), st.integers(1, 4))
def test_logit_bias_bans_at_minus_100_and_forces_at_plus_100_in_a_batch_of_mixed_biases(tiny_lm, prompts, data,
                                                                                       batch_size):
    """Each prompt with its own logit_bias (or none), batched: (a) a token biased -100 never appears
    in its output, greedy or sampled; (b) a token biased +100 alone (the others at most +50) is
    what greedy picks at every step; (c) its tokens are what it gives alone."""
    from lmgen.engine.batching import Request

    requests = []
    for _ in prompts:
        banned = data.draw(st.sets(st.integers(0, 299), max_size=40))
        others = data.draw(st.dictionaries(st.integers(0, 299), st.floats(-99, 50), max_size=8))
        forced = data.draw(st.one_of(st.none(), st.integers(0, 299)))
        pairs = {**others, **{t: -100.0 for t in banned}, **({} if forced is None else {forced: 100.0})}
        sampled = forced is None and data.draw(st.booleans())
        settings = GenerationSettings(
            max_new_tokens=data.draw(st.integers(1, 8)), seed=data.draw(st.integers(0, 2**64 - 1)) if sampled else None,
            sampling=SamplingSettings(temperature=1.0 if sampled else 0.0, logit_bias=pairs))
        requests.append((settings, {t for t, b in pairs.items() if b == -100}, forced))
    together = by_sample(generate_many(tiny_lm, [Request(p, settings=s) for p, (s, _, _) in zip(prompts, requests)],
                                       batch_size=batch_size))
    for i, (prompt, (own, banned, forced)) in enumerate(zip(prompts, requests)):
        done = together[i, 0][-1]
        assert not banned & set(done.token_ids)  # (a)
        if forced is not None:  # (b): every step, until the budget or the context's end (or at once, if it ends text)
            budget = min(own.max_new_tokens, CONTEXT - done.prompt_tokens)
            assert list(done.token_ids) == ([] if forced in tiny_lm.eos_ids else [forced] * budget)
        seed = None if own.seed is None else prompt_seed(own.seed, i)
        alone = [e for e in generate(tiny_lm, prompt, dataclasses.replace(own, seed=seed))
                 if isinstance(e, Finished)][0]
        assert done.token_ids == alone.token_ids  # (c)


def test_a_logit_bias_id_beyond_the_vocabulary_is_refused_before_any_work(tiny_lm):
    settings = GenerationSettings(sampling=SamplingSettings(logit_bias={300: -100}))
    with pytest.raises(PromptError, match=r"logit-bias token id 300 is not in the model's vocabulary \(0 to 299\)"):
        list(generate_many(tiny_lm, ["hi"], settings))
