"""Sampling steps against transformers' logits warpers, and reproducibility."""

import pytest
import torch

from lmgen.engine.sampling import (
    SamplingSettings,
    TokenHistory,
    apply_temperature,
    frequency_presence_penalty,
    min_p_filter,
    penalize,
    repetition_penalty,
    sample_next_token,
    top_k_filter,
    top_p_filter,
    typical_filter,
    warp,
)
from lmgen.errors import InputError


def logits(seed=0, vocab=50):
    return torch.randn(3, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 5, 49])
def test_top_k_keeps_what_transformers_keeps(k):
    from transformers.generation.logits_process import TopKLogitsWarper

    x = logits()
    expected = TopKLogitsWarper(top_k=k)(None, x.clone())
    assert torch.equal(top_k_filter(x, k), expected)
    assert (top_k_filter(x, k) > float("-inf")).sum(-1).tolist() == [k] * 3


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_what_transformers_keeps(p):
    from transformers.generation.logits_process import TopPLogitsWarper

    x = logits(1)
    expected = TopPLogitsWarper(top_p=p)(None, x.clone())
    actual = top_p_filter(x, p)
    assert torch.equal(actual == float("-inf"), expected == float("-inf"))
    assert torch.allclose(actual.softmax(-1), expected.softmax(-1))


def test_top_p_always_keeps_the_most_likely_token():
    x = torch.tensor([[10.0, 0.0, -1.0]])
    kept = top_p_filter(x, 0.01) > float("-inf")
    assert kept.tolist() == [[True, False, False]]


def test_temperature_zero_is_greedy():
    x = logits(2)
    assert torch.equal(sample_next_token(x, SamplingSettings(temperature=0)), x.argmax(-1))


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    x = logits(3, vocab=1000) / 10  # flat enough that seeds disagree
    settings = SamplingSettings(temperature=1.0)

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return [sample_next_token(x, settings, gen).tolist() for _ in range(5)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampling_only_picks_kept_tokens():
    x = logits(4)
    settings = SamplingSettings(temperature=1.5, top_k=3)
    allowed = x.topk(3).indices
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        token = sample_next_token(x, settings, gen)
        assert all(token[i] in allowed[i] for i in range(3))


def assert_same_kept_and_renormalised(actual, expected):
    assert torch.equal(actual == float("-inf"), expected == float("-inf"))
    assert torch.allclose(actual.softmax(-1), expected.softmax(-1), atol=1e-6)


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5])
def test_min_p_matches_transformers(min_p):
    from transformers.generation.logits_process import MinPLogitsWarper

    x = logits(5)
    assert_same_kept_and_renormalised(min_p_filter(x, min_p), MinPLogitsWarper(min_p=min_p)(None, x.clone()))


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.95])
def test_typical_p_matches_transformers(mass):
    from transformers.generation.logits_process import TypicalLogitsWarper

    x = logits(6)
    assert_same_kept_and_renormalised(typical_filter(x, mass), TypicalLogitsWarper(mass=mass)(None, x.clone()))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_temperature_matches_transformers(t):
    from transformers.generation.logits_process import TemperatureLogitsWarper

    x = logits(7)
    assert torch.allclose(apply_temperature(x, t), TemperatureLogitsWarper(t)(None, x.clone()))


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    x = logits(8)
    seen_ids = torch.tensor([[1, 4, 4, 9], [0, 2, 3, 49], [7, 7, 7, 7]])
    history = TokenHistory([], 3, 50)
    for column in seen_ids.T:
        history.add(column)
    expected = RepetitionPenaltyLogitsProcessor(penalty=penalty)(seen_ids, x.clone())
    assert torch.allclose(repetition_penalty(x, history.seen, penalty), expected)


def test_frequency_and_presence_penalties_subtract_per_count():
    x = torch.zeros(1, 5)
    history = TokenHistory([4], 1, 5)  # prompt tokens count for the repetition penalty only
    for token in (1, 1, 2):
        history.add(torch.tensor([token]))
    out = frequency_presence_penalty(x, history.counts, frequency=0.5, presence=1.0)
    assert out.tolist() == [[0.0, -2.0, -1.5, 0.0, 0.0]]
    assert history.seen.tolist() == [[False, True, True, False, True]]


def test_composition_order_matches_transformers_pipeline():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    from lmgen.engine.sampling import penalize, warp

    settings = SamplingSettings(temperature=0.8, top_k=30, top_p=0.9, min_p=0.02, typical_p=0.95,
                                repetition_penalty=1.2)
    x = logits(9)
    seen_ids = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    history = TokenHistory([], 3, 50)
    for column in seen_ids.T:
        history.add(column)
    pipeline = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.8), TopKLogitsWarper(30),
        TopPLogitsWarper(0.9), MinPLogitsWarper(0.02), TypicalLogitsWarper(0.95),
    ])
    expected = pipeline(seen_ids, x.clone())
    assert_same_kept_and_renormalised(warp(penalize(x, settings, history), settings), expected)


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(min_p=1.5), dict(typical_p=0.0), dict(repetition_penalty=0.0),
                                    dict(temperature=float("nan"))])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(InputError):
        SamplingSettings(**kwargs)


# ------------------------------------------------------------------------------ properties (hypothesis)

from hypothesis import given
from hypothesis import strategies as st  # noqa: E402

values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**80, 2**80))


def or_off(off):  # each option off about half the time, so that most examples are accepted settings
    return st.one_of(st.just(off), values)


@given(temperature=or_off(0.0), repetition=or_off(1.0), frequency=or_off(0.0), presence=or_off(0.0),
       top_k=st.integers(-3, 400), top_p=or_off(1.0), min_p=or_off(0.0), typical=or_off(1.0),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), masked=st.floats(0, 0.99), seed=st.integers(0, 2**32))
def test_any_value_is_refused_or_gives_a_token_from_finite_logits(temperature, repetition, frequency, presence, top_k,
                                                                  top_p, min_p, typical, scale, masked, seed):
    """For any option values: refused (InputError) where parsed, or every chosen token is one the
    scores allowed: never NaN arithmetic, never an error from torch."""
    try:
        settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical,
                                repetition_penalty=repetition, frequency_penalty=frequency,
                                presence_penalty=presence)
    except InputError:
        return
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 300, generator=generator) * scale
    ruled_out = torch.rand(3, 300, generator=generator) < masked  # as a constraint's mask does
    ruled_out[torch.arange(3), torch.randint(0, 300, (3,), generator=generator)] = False
    logits = logits.masked_fill(ruled_out, float("-inf"))
    history = TokenHistory([1, 2, 3], 3, 300)
    history.add(torch.tensor([0, 5, 7]))
    history.add(torch.tensor([0, 5, 9]))
    scores = penalize(logits, settings, history)
    if not settings.greedy:
        scores = warp(scores, settings)
    assert not scores.isnan().any() and scores.amax(dim=-1).isfinite().all()  # what a token is chosen from
    assert (scores[ruled_out] == float("-inf")).all()
    tokens = sample_next_token(logits, settings, generator, history)
    assert tokens.shape == (3,)
    assert not ruled_out.gather(1, tokens[:, None]).any()


# ------------------------------------------------------------------------------ logit_bias (OpenAI's)

from lmgen.engine.sampling import logit_bias  # noqa: E402


def test_logit_bias_adds_to_the_named_tokens_only_and_a_constraints_mask_still_wins():
    x = logits()
    settings = SamplingSettings(logit_bias={3: -100, 7: 2.5, 11: 100})
    shifted = logit_bias(x, settings.logit_bias)
    expected = x.clone()
    expected[:, 3] -= 100
    expected[:, 7] += 2.5
    expected[:, 11] += 100
    assert torch.equal(shifted, expected)
    assert logit_bias(x, ()) is x  # none: the logits untouched
    masked = x.clone()
    masked[:, 11] = float("-inf")  # a constraint rules the +100 token out: it stays out
    assert logit_bias(masked, settings.logit_bias)[:, 11].eq(float("-inf")).all()
    assert (sample_next_token(x, settings) == 11).all()  # greedy honours it
    assert not (sample_next_token(masked, settings) == 11).any()


def test_logit_bias_is_kept_sorted_and_hashable_whatever_form_it_was_given_in():
    as_dict = SamplingSettings(logit_bias={5: -100, 2: 1})
    as_pairs = SamplingSettings(logit_bias=[(2, 1.0), (5, -100)])
    assert as_dict == as_pairs and hash(as_dict) == hash(as_pairs)
    assert as_dict.logit_bias == ((2, 1.0), (5, -100.0))
    assert SamplingSettings().logit_bias == ()


@pytest.mark.parametrize("given, message", [
    ({"5": 1}, "token ids must be integers >= 0"), ({-1: 1}, "token ids must be integers >= 0"),
    ({True: 1}, "token ids must be integers >= 0"), ({2**40: 1}, "beyond any model's vocabulary"),
    ({1: 100.5}, "must be a number from -100 to 100"), ({1: -101}, "must be a number from -100 to 100"),
    ({1: float("nan")}, "must be a number from -100 to 100"), ({1: float("inf")}, "must be a number from -100"),
    ({1: "1"}, "must be a number"), ({1: True}, "must be a number"), ({1: 10**5000}, "must be a number"),
    ([(1, 2), (1, 3)], "gives token 1 more than one bias"), ({i: 0 for i in range(1025)}, "at most 1024 tokens"),
    ("12", "must map token ids to biases"), (5, "must map token ids to biases"), ([(1,)], "must map token ids"),
])
def test_bad_logit_bias_is_refused_naming_the_option(given, message):
    with pytest.raises(InputError, match=message) as raised:
        SamplingSettings(logit_bias=given)
    assert str(raised.value).startswith("logit-bias ")


def test_logit_bias_beyond_the_logits_is_an_input_error_not_an_index_error():
    with pytest.raises(InputError, match="logit-bias token id 50 is not in the model's vocabulary"):
        sample_next_token(logits(), SamplingSettings(logit_bias={50: 1}))


@given(biases=st.dictionaries(st.integers(0, 299), st.floats(-100, 100), max_size=40),
       banned=st.sets(st.integers(0, 299), max_size=40), forced=st.one_of(st.none(), st.integers(0, 299)),
       temperature=st.sampled_from([0.0, 0.7, 1.0]), top_k=st.sampled_from([0, 1, 20]),
       scale=st.sampled_from([1e-3, 1.0, 10.0]), seed=st.integers(0, 2**32))
def test_a_token_biased_minus_100_is_never_chosen_and_one_biased_plus_100_alone_always_is(
        biases, banned, forced, temperature, top_k, scale, seed):
    """Over logits a working model gives (|logit| <= 10): -100 bans a token, +100 on one token
    (the others at most +50) forces it, greedy or sampled."""
    pairs = {**{t: b for t, b in biases.items() if -99 <= b <= 50}, **{t: -100.0 for t in banned}}
    if forced is not None:
        pairs = {**pairs, forced: 100.0}
    settings = SamplingSettings(temperature=temperature, top_k=top_k, logit_bias=pairs)
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(3, 300, generator=generator) * 2 - 1) * scale
    tokens = sample_next_token(x, settings, generator)
    assert not any(int(t) in banned and pairs.get(int(t)) == -100 for t in tokens)
    if forced is not None:
        assert tokens.tolist() == [forced] * 3
