"""Sampling steps against transformers' logits warpers, and reproducibility."""

import pytest
import torch

from lmgen.errors import InputError
from lmgen.sampling import SamplingSettings, sample_next_token, top_k_filter, top_p_filter


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


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(InputError):
        SamplingSettings(**kwargs)
