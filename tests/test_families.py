"""Today's families against transformers, on tiny random checkpoints that transformers saves.

Each case is a config that exercises what makes its family different: a sliding window
shorter than the prompt, rotary scaling with a prompt past the original context, soft-caps
small enough to bite, post-norms, q/k norms, head_dim ≠ d_model / heads, tied and untied
heads, GQA and MHA. Norm weights get noise, so a norm applied wrongly shows.
"""

import copy

import pytest
import torch
from conftest import TINY, byte_tokenizer

from lmgen.engine.generation import GenerationSettings, decode_loop
from lmgen.engine.load_checkpoint import load_model
from lmgen.model import kernels

PROMPT = 40  # longer than the windows (16) and the original contexts (32) below
# Gemma 3: linear scaling on the full-attention layers, an unscaled base of their own on the sliding ones
GEMMA3_ROPE = dict(full_attention=dict(rope_type="linear", factor=2.0, rope_theta=100000.0),
                   sliding_attention=dict(rope_type="default", rope_theta=10000.0))
LONGROPE = dict(rope_type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0], long_factor=[1.0, 2.0, 4.0, 8.0])

CASES = {
    "llama-llama3-tied": ("llama", dict(tie_word_embeddings=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    "llama-linear-mha": ("llama", dict(num_key_value_heads=4, rope_parameters=dict(
        rope_type="linear", rope_theta=10000.0, factor=2.0))),
    "llama-yarn": ("llama", dict(head_dim=32, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32))),
    "llama-dynamic": ("llama", dict(max_position_embeddings=32, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, factor=4.0))),
    "qwen3": ("qwen3", dict(head_dim=32)),
    "qwen3-tied-sliding": ("qwen3", dict(tie_word_embeddings=True, num_hidden_layers=3, use_sliding_window=True,
                                         sliding_window=16, max_window_layers=1)),
    "gemma2": ("gemma2", dict(head_dim=32, num_hidden_layers=3, sliding_window=16, query_pre_attn_scalar=24,
                              attn_logit_softcapping=2.0, final_logit_softcapping=1.5)),
    "gemma2-mha-untied": ("gemma2", dict(num_key_value_heads=4, head_dim=16, sliding_window=16,
                                         tie_word_embeddings=False, final_logit_softcapping=1.5)),
    "gemma3": ("gemma3_text", dict(head_dim=32, num_hidden_layers=4, sliding_window=16, query_pre_attn_scalar=32,
                                   layer_types=["sliding_attention", "full_attention"] * 2,
                                   final_logit_softcapping=1.5,
                                   rope_parameters=GEMMA3_ROPE)),
    "phi3-longrope-partial": ("phi3", dict(partial_rotary_factor=0.5, original_max_position_embeddings=32,
                                           rope_parameters=dict(LONGROPE, rope_theta=10000.0,
                                                                partial_rotary_factor=0.5))),
    "phi3-mha-sliding": ("phi3", dict(num_key_value_heads=4, sliding_window=16, tie_word_embeddings=True)),
    "olmo2": ("olmo2", dict()),
    "olmo2-mha-tied": ("olmo2", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "smollm3": ("smollm3", dict(num_hidden_layers=4, no_rope_layer_interval=2)),
    "smollm3-sliding-untied": ("smollm3", dict(num_hidden_layers=4, no_rope_layer_interval=2, use_sliding_window=True,
                                               sliding_window=16, tie_word_embeddings=False)),
}
# transformers' frequencies for these follow the length a forward pass reaches, so a cached run
# rotates early keys differently from a full pass: lmgen matches transformers' cached runs instead.
LENGTH_DEPENDENT = {"llama-dynamic", "phi3-longrope-partial"}


def save_family(model_type: str, overrides: dict, path, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    args = {**TINY, "num_key_value_heads": 2, "pad_token_id": 0, **copy.deepcopy(overrides)}  # transformers edits them
    cfg = transformers.AutoConfig.for_model(model_type, **args)
    cfg._attn_implementation = "eager"  # the reference: soft-capping is only in eager attention
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms (0 or 1 at init): noise, so a norm applied wrongly shows
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    byte_tokenizer().save(str(path / "tokenizer.json"))
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    model_type, overrides = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    reference = save_family(model_type, overrides, path)
    model, cfg, _ = load_model(path)
    return request.param, reference, model


def ids(n: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(pair):
    case, reference, model = pair
    tokens = ids(PROMPT)
    with torch.no_grad():
        expected, actual = reference(tokens).logits, model(tokens)
    diff = (actual - expected).abs().max().item()
    print(f"{case}: max abs logit diff {diff:.2e}")
    assert diff < 1e-4


def greedy(model, prompt: list[int]) -> list[int]:
    return [int(t) for t, _ in decode_loop(model, prompt, GenerationSettings(max_new_tokens=32))]


def test_greedy_32_tokens_match_transformers(pair):
    case, reference, model = pair
    prompt = ids(PROMPT, batch=1)
    reference.generation_config.eos_token_id = None
    reference.generation_config.pad_token_id = 0
    expected = reference.generate(prompt, max_new_tokens=32, do_sample=False)[0, PROMPT:].tolist()
    assert greedy(model, prompt[0].tolist()) == expected


def test_cached_equals_uncached(pair):
    case, _, model = pair
    if case in LENGTH_DEPENDENT:
        pytest.skip("frequencies depend on the pass's length (as in transformers); greedy test covers the cache")
    tokens = ids(PROMPT)
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch=2, max_len=PROMPT)
        pieces = [model(tokens[:, :20], 0, cache), model(tokens[:, 20:23], 20, cache)]
        pieces += [model(tokens[:, i : i + 1], i, cache) for i in range(23, PROMPT)]
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-5


def decode_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of a 20-token prefill, then of each later token decoded one at a time."""
    with torch.no_grad():
        cache = model.new_cache(batch=tokens.shape[0], max_len=tokens.shape[1])
        pieces = [model(tokens[:, :20], 0, cache)]
        pieces += [model(tokens[:, i : i + 1], i, cache) for i in range(20, tokens.shape[1])]
    return torch.cat(pieces, dim=1)


def test_native_kernels_equal_torch(pair, monkeypatch):
    case, _, model = pair
    model.new_cache(1, 8)
    assert model.plan is not None, f"{case} should run in the native kernels"
    tokens = ids(PROMPT)
    prompt = tokens[0].tolist()
    native, native_logits = greedy(model, prompt), decode_logits(model, tokens)
    monkeypatch.setattr(kernels, "library", lambda: None)
    model.new_cache(1, 8)
    assert model.plan is None
    assert (decode_logits(model, tokens) - native_logits).abs().max().item() < 1e-4
    assert greedy(model, prompt) == native
