"""Embeddings (``lmgen.engine.embed`` and ``lmgen embed``): transformers' final hidden states
pooled, the same bits alone and in any batch, normalised to length 1, the model's own pooling
(a config's ``pooling_type``, a GGUF file's, a sentence-transformers folder's) and bad input as
one-line errors."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import VOCAB, assert_one_line_error, save_tiny
from hypothesis import given
from hypothesis import strategies as st

import lmgen
from lmgen.engine.embed import embed
from lmgen.errors import ConfigError, InputError
from lmgen.model.attention import soft_cap

TEXTS = ["The cat sat on the mat.", "a", "Embeddings of texts of other lengths, in one batch."]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    reference = save_tiny(request.param, path)
    return reference, lmgen.load(path)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return lmgen.load(tiny_dir)


def reference_hidden(reference, ids) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_vectors_are_transformers_final_hidden_states_pooled(pair, pooling):
    reference, lm = pair
    result = embed(lm, TEXTS, pooling=pooling, normalize=False)
    for text, vector, tokens in zip(TEXTS, result.vectors, result.tokens):
        ids = lm.encode_prompt(text)
        hidden = reference_hidden(reference, ids)
        expected = {"mean": hidden.mean(0), "last": hidden[-1], "cls": hidden[0]}[pooling]
        assert tokens == len(ids)
        torch.testing.assert_close(torch.tensor(vector), expected, atol=1e-5, rtol=1e-5)


def test_hidden_states_are_what_the_head_turns_into_logits(pair):
    _, lm = pair
    tokens = torch.tensor([lm.encode_prompt(TEXTS[0])])
    with torch.inference_mode():
        logits, hidden = lm.model(tokens), lm.model.hidden_states(tokens)
        assert torch.equal(soft_cap(lm.model.head.linear(hidden), lm.model.head.softcap), logits)


@given(st.lists(st.one_of(st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
                          st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)), min_size=1, max_size=5),
       st.sampled_from(["mean", "last", "cls"]))
def test_each_vector_is_the_same_alone_and_in_any_batch(tiny, inputs, pooling):
    batched = embed(tiny, inputs, pooling)
    for item, vector, tokens in zip(inputs, batched.vectors, batched.tokens):
        alone = embed(tiny, [item], pooling)
        assert alone.vectors == [vector] and alone.tokens == [tokens]  # bit for bit
        assert all(math.isfinite(x) for x in vector)
        assert math.sqrt(math.fsum(x * x for x in vector)) == pytest.approx(1, abs=1e-5)
    assert batched.total_tokens == sum(batched.tokens)


def test_token_ids_are_the_text_they_stand_for_and_one_token_works(tiny):
    ids = tiny.encode_prompt(TEXTS[0])
    assert embed(tiny, [ids]).vectors == embed(tiny, [TEXTS[0]]).vectors
    one = lmgen.embed(tiny, [[65]], normalize=False)  # (the public API's)
    assert one.tokens == [1] and len(one.vectors[0]) == tiny.config.d_model


@pytest.mark.parametrize("inputs, pattern", [
    ([], "nothing to embed"), ("text", "nothing to embed"), ([""], "the input is empty"),
    (["ok", []], "input 1 is empty"), ([[1, VOCAB]], f"token id {VOCAB} is not in the model's vocabulary"),
    ([[-1]], "token id -1 is not"), ([[1] * 129], "129 tokens but the context window holds 128"),
    (["x" * 129], "129 tokens but the context window holds 128"), (["x" * 40_000], "more bytes than"),
    ([3.5], "must be text or a list of token ids"), ([[True]], "must be text or a list of token ids"),
    (["\udcff"], "not valid UTF-8"),
])
def test_bad_inputs_are_input_errors(tiny, inputs, pattern):
    with pytest.raises(InputError, match=pattern):
        embed(tiny, inputs)


def test_a_whole_context_fits(tiny):
    assert embed(tiny, [[7] * tiny.config.max_context]).tokens == [128]


def test_unknown_pooling_is_refused(tiny):
    with pytest.raises(InputError, match="pooling must be one of mean, last, cls"):
        embed(tiny, ["a"], pooling="max")


def with_config(src, dst, **fields):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **fields}))
    return dst


def test_the_models_own_pooling_is_the_default(tiny_dir, tmp_path):
    lm = lmgen.load(with_config(tiny_dir, tmp_path / "last", pooling_type="last"))
    assert lm.config.pooling == "last"
    assert embed(lm, TEXTS).vectors == embed(lm, TEXTS, pooling="last").vectors
    with pytest.raises(ConfigError, match="pooling_type must be one of mean, last, cls"):
        lmgen.load(with_config(tiny_dir, tmp_path / "bad", pooling_type="max"))
    st_dir = shutil.copytree(tiny_dir, tmp_path / "st")
    (st_dir / "1_Pooling").mkdir()
    (st_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True,
                                                                  "pooling_mode_mean_tokens": False}))
    assert embed(lmgen.load(st_dir), ["a"]).pooling == "last"
    assert embed(lmgen.load(tiny_dir), ["a"]).pooling == "mean"


def test_a_gguf_embedding_model_is_served_as_it_is(cli, tiny_dir, tmp_path):
    """A checkpoint whose tokenizer ends each text with EOS and whose config pools the last
    token (as Qwen3-Embedding's), written to GGUF (pooling_type, add_eos_token) and run from it."""
    from tokenizers import Tokenizer, processors

    src = with_config(tiny_dir, tmp_path / "embedder", pooling_type="last")
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=["$A", "<|endoftext|>"], special_tokens=[("<|endoftext|>", 256)])])
    tokenizer.save(str(src / "tokenizer.json"))
    result = cli("quantize", str(src), str(tmp_path / "embedder.gguf"), "--type", "q8_0")
    assert result.returncode == 0, result.stderr
    lm = lmgen.load(tmp_path / "embedder.gguf")
    assert lm.config.pooling == "last" and lm.encode_prompt("hi") == [*lm.encode("hi", add_special_tokens=False), 256]
    from_gguf, from_checkpoint = embed(lm, TEXTS), embed(lmgen.load(src), TEXTS)
    assert from_gguf.pooling == "last" and from_gguf.tokens == from_checkpoint.tokens
    for a, b in zip(from_gguf.vectors, from_checkpoint.vectors):  # Q8_0 weights against fp32
        assert sum(x * y for x, y in zip(a, b)) > 0.999


# ----------------------------------------------------------------------------------- the command


def records(result) -> list[dict]:
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_embed_prints_one_record_per_text_as_the_library_computes(cli, tiny_dir, tiny):
    printed = records(cli("embed", "-m", str(tiny_dir), *TEXTS))
    expected = embed(tiny, TEXTS)
    assert [r["index"] for r in printed] == [0, 1, 2]
    assert [r["embedding"] for r in printed] == expected.vectors
    assert [r["tokens"] for r in printed] == expected.tokens
    piped = records(cli("embed", "-m", str(tiny_dir), input=("\n".join(TEXTS[:2]) + "\n\n" + TEXTS[2] + "\n").encode()))
    assert piped == printed


def test_embed_pooling_and_no_normalize(cli, tiny_dir, tiny):
    printed = records(cli("embed", "-m", str(tiny_dir), "--pooling", "last", "--no-normalize", "hello"))
    assert printed[0]["embedding"] == embed(tiny, ["hello"], pooling="last", normalize=False).vectors[0]


@pytest.mark.parametrize("args, stdin, pattern", [
    (["--pooling", "max", "a"], None, "pooling must be one of mean, last, cls"),
    ([""], None, "the input is empty"),
    (["a", ""], None, "input 1 is empty"),
    (["x" * 200], None, "200 tokens but the context window holds 128"),
    ([], b"\n  \n", "no text: stdin has no non-empty line"),
    ([], b"\xff\xfe\n", "stdin line 1 is not valid UTF-8"),
])
def test_embed_bad_input_is_one_line_and_exit_2(cli, tiny_dir, args, stdin, pattern):
    assert_one_line_error(cli("embed", "-m", str(tiny_dir), *args, input=stdin), 2, pattern)


def test_embed_help_needs_no_torch():
    code = ("import sys\nfrom lmgen.cli.main import run\nrun(['embed', '--help'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert b"--no-normalize" in result.stdout
