"""score: mean NLL equals transformers' loss on the same weights and text."""

import json
import math

import pytest
import torch
from conftest import run_lmgen, save_tiny

import lmgen
from lmgen.engine.score import score, windows
from lmgen.errors import InputError

TEXT = "The cat sat on the mat. It was a sunny day, and the cat was happy."


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    reference = save_tiny(request.param, path)
    return reference, lmgen.load(path)


def hf_loss(reference, ids):
    with torch.no_grad():
        return reference(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()


def test_mean_nll_equals_transformers_loss(pair):
    reference, lm = pair
    result = score(lm, TEXT)
    ids = lm.tokenizer.encode(TEXT)
    assert result.scored == len(ids) - 1
    assert abs(result.mean_nll - hf_loss(reference, ids)) < 1e-4
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))
    assert result.tokens[0].logprob is None


def test_real_model_matches_transformers(smollm2_dir, smollm2_reference):
    lm = lmgen.load(smollm2_dir)
    result = score(lm, TEXT)
    assert abs(result.mean_nll - hf_loss(smollm2_reference, lm.tokenizer.encode(TEXT))) < 1e-4


def test_ranks_and_logprobs_agree_with_the_logits(pair):
    _, lm = pair
    ids = lm.tokenizer.encode(TEXT)
    result = score(lm, TEXT)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]))[0]
    t = 5
    row = logits[t - 1]
    assert result.tokens[t].logprob == pytest.approx(row.log_softmax(-1)[ids[t]].item(), abs=1e-5)
    assert result.tokens[t].rank == int((row > row[ids[t]]).sum()) + 1


def test_windows_cover_every_token_once():
    for n, window, stride in [(10, 4, 2), (100, 32, 16), (33, 32, 31), (5, 64, 32)]:
        spans = windows(n, window, stride)
        scored = [p for _, end, first in spans for p in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= window for begin, end, _ in spans)


def test_long_text_is_scored_in_windows_like_the_perplexity_guide(pair):
    reference, lm = pair
    text = TEXT * 4  # 272 byte tokens, more than the 128-token context
    ids = lm.tokenizer.encode(text)
    result = score(lm, text, window=64, stride=32)
    assert result.scored == len(ids) - 1
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), 32):  # transformers' perplexity guide, restated
        end = min(begin + 64, len(ids))
        target_len = end - prev_end
        labels = torch.tensor([ids[begin:end]])
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = reference(torch.tensor([ids[begin:end]]), labels=labels).loss.item()
        n_scored = (labels[:, 1:] != -100).sum().item()
        total += loss * n_scored
        count += n_scored
        prev_end = end
        if end == len(ids):
            break
    assert count == result.scored
    assert abs(result.nll - total) < 1e-3


@pytest.mark.parametrize("kwargs, pattern", [(dict(window=1), "window"), (dict(window=8, stride=8), "stride")])
def test_bad_window_settings(pair, kwargs, pattern):
    _, lm = pair
    with pytest.raises(InputError, match=pattern):
        score(lm, TEXT, **kwargs)


def test_one_token_cannot_be_scored(pair):
    _, lm = pair
    with pytest.raises(InputError, match="at least two tokens"):
        score(lm, "a")


def test_cli_json_and_text(lmgen_exe, smollm2_dir):
    env = {"LMGEN_MODEL": str(smollm2_dir)}
    result = run_lmgen(lmgen_exe, "score", "--json", input=b"The capital of France is Paris.", env=env)
    assert result.returncode == 0, result.stderr.decode()
    record = json.loads(result.stdout)
    assert record["scored_tokens"] == len(record["tokens"]) - 1
    paris = next(t for t in record["tokens"] if t["token"] == " Paris")
    assert paris["rank"] == 1
    assert record["perplexity"] == pytest.approx(math.exp(record["mean_nll"]))
    text = run_lmgen(lmgen_exe, "score", "The capital of France is Paris.", env=env).stdout.decode()
    assert "perplexity" in text and "' Paris'" in text
