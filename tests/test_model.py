"""The Decoder against transformers on identical random weights, for every family."""

import pytest
import torch
from conftest import save_tiny

from lmgen.engine.generation import GenerationSettings, decode_loop
from lmgen.engine.load_checkpoint import load_model

FAMILIES = ["gpt2", "llama", "qwen2", "mistral"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    reference = save_tiny(request.param, path)
    model, cfg, _ = load_model(path)
    return request.param, reference, model


def token_ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(pair):
    family, reference, model = pair
    ids = token_ids(40)  # longer than mistral's 16-token sliding window
    with torch.no_grad():
        expected = reference(ids).logits
        actual = model(ids)
    assert actual.shape == expected.shape == (2, 40, 300)
    diff = (actual - expected).abs().max().item()
    print(f"{family}: max abs logit diff {diff:.2e}")
    assert diff < 1e-4


def test_greedy_continuation_is_token_identical(pair):
    family, reference, model = pair
    prompt = token_ids(8)[:1]
    reference.generation_config.eos_token_id = None
    reference.generation_config.pad_token_id = 0
    expected = reference.generate(prompt, max_new_tokens=32, do_sample=False)[0, 8:].tolist()
    settings = GenerationSettings(max_new_tokens=32)
    actual = [int(t) for t, _ in decode_loop(model, prompt[0].tolist(), settings)]
    assert len(expected) == 32
    assert actual == expected


def test_kv_cache_matches_full_forward(pair):
    family, _, model = pair
    ids = token_ids(30)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(batch=2, max_len=30)
        pieces = [model(ids[:, :10], 0, cache)]  # prefill, then chunks and single tokens
        pieces.append(model(ids[:, 10:13], 10, cache))
        pieces += [model(ids[:, i : i + 1], i, cache) for i in range(13, 30)]
    cached = torch.cat(pieces, dim=1)
    assert (cached - full).abs().max().item() < 1e-5


def test_last_only_gives_the_last_position(pair):
    _, _, model = pair
    ids = token_ids(12)
    with torch.no_grad():
        assert torch.allclose(model(ids, last_only=True), model(ids)[:, -1:], atol=1e-6)


def test_positions_beyond_the_context_window_are_refused(pair):
    _, _, model = pair
    with pytest.raises(ValueError, match="context window"):
        model(torch.zeros(1, 129, dtype=torch.long))
