"""The real SmolLM2-135M-Instruct, imported from GGUF, against transformers' load of the same file."""

import numpy as np
import pytest
import torch

from lmgen.engine.batching import generate
from lmgen.engine.generation import GenerationSettings, load
from lmgen.errors import CheckpointError
from lmgen.formats.gguf.arch import unpermute_rows
from lmgen.formats.gguf.reader import convert_gguf

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load(smollm2_dir)


def llama_cpp_permute(weights, n_head):
    """llama.cpp's convert_hf_to_gguf.py permutation of Q/K rows, restated for the test."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@pytest.mark.parametrize("n_heads", [1, 3, 9])
def test_unpermute_inverts_llama_cpp_permutation(n_heads):
    w = np.random.default_rng(0).standard_normal((n_heads * 8, 5))
    assert np.array_equal(unpermute_rows(llama_cpp_permute(w, n_heads), n_heads), w)
    assert not np.array_equal(llama_cpp_permute(w, n_heads), w)


def test_logits_match_transformers_gguf_load(smollm2, smollm2_reference):
    ids = torch.tensor([smollm2.tokenizer.encode("The cat sat on the mat because it was warm. 日本 🐱")])
    with torch.no_grad():
        expected = smollm2_reference(ids).logits
        actual = smollm2.model(ids)
    diff = (actual - expected).abs().max().item()
    print(f"SmolLM2 GGUF import: max abs logit diff {diff:.2e}")
    assert diff < 1e-3


def test_greedy_capital_of_france_is_paris(smollm2):
    events = list(generate(smollm2, PROMPT, GenerationSettings(max_new_tokens=4)))
    text = "".join(e.text for e in events)
    assert text.startswith(" Paris"), text


def test_tied_head_is_one_tensor(smollm2):
    assert smollm2.config.tied_embeddings
    assert smollm2.model.head.linear.weight is smollm2.model.embed.weight


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
    from transformers import AutoTokenizer

    from lmgen.formats.paths import bundled_gguf

    gguf = bundled_gguf()
    reference = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for text in [PROMPT, "Héllo wörld, 🐱 cats!\n\n  indented", "<|im_start|>user\nHi<|im_end|>\n"]:
        assert smollm2.tokenizer.encode(text) == reference(text).input_ids, text


def test_digits_are_split_one_per_token_like_llama_cpp_smollm(smollm2):
    # llama.cpp's "smollm" pre-tokenizer (and the original SmolLM2 tokenizer) split every digit.
    ids = smollm2.tokenizer.encode("year 2024")
    assert [smollm2.tokenizer.decode([i]) for i in ids][-4:] == ["2", "0", "2", "4"]


def test_chat_template_and_special_tokens_are_kept(smollm2_dir):
    import json

    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    assert config["eos_token"] == "<|im_end|>"


def test_converted_directory_loads_in_transformers_too(smollm2_dir, smollm2):
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ids = torch.tensor([smollm2.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        assert (reference(ids).logits - smollm2.model(ids)).abs().max().item() < 1e-4


def test_not_a_gguf_file_is_reported(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        convert_gguf(bad, tmp_path / "out")
