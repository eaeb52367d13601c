"""What a request body may hold and what logprobs say, below the HTTP layer: bodies parsed within
bounds (``openai_api.parse_body``), a ``response_format`` schema that is always an object and
never a file's path, and each token's own bytes and character offsets (``Tokenizer.token_bytes``).
The same bounds over HTTP, on a real server, are in test_serve_http.py."""

import pytest

from lmgen.engine.events import Token
from lmgen.serve import openai_api as api

# ---------------------------------------------------------------------------- bodies and fields


@pytest.mark.parametrize("data, message", [
    (b"[" * 100_000, "nested more than 64 levels"), (b'{"a":' * 65 + b"1" + b"}" * 65, "nested more than 64 levels"),
    (b'{"seed": ' + b"9" * 5000 + b"}", "more than 100 digits"), (b'{"seed": -' + b"9" * 101 + b"}", "more than 100"),
    (b'{"temperature": NaN}', "NaN"), (b'{"a": Infinity}', "Infinity"), (b"\xff\xfe", "not valid JSON"),
    (b'{"a": 1', "not valid JSON"), (b"", "not valid JSON"), (b"[]", "must be a JSON object"),
    (b"5", "must be a JSON object"),
])
def test_bodies_beyond_the_bounds_are_400s(data, message):
    with pytest.raises(api.APIError) as raised:
        api.parse_body(data)
    assert raised.value.status == 400 and message in raised.value.message


def test_bodies_within_the_bounds_parse():
    assert api.parse_body(b'{"a":' * 63 + b"1" + b"}" * 63)  # 64 levels with the outer object
    assert api.parse_body(b'{"seed": ' + b"9" * 100 + b"}") == {"seed": int("9" * 100)}


@pytest.mark.parametrize("schema", [5, "/etc/passwd", "schema.json", ["a"], True, None])
def test_a_response_format_schema_must_be_an_object_never_a_path(schema, monkeypatch, tmp_path):
    """A string schema once went through --json-schema's rules, where a string is a file's path."""
    (tmp_path / "5").write_text('{"type": "object"}')  # the file "5" names, were it read
    monkeypatch.chdir(tmp_path)
    form = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {"messages": [{"role": "user", "content": "hi"}], "response_format": form}
    if schema is None:  # no schema: any JSON
        assert api.settings_of(body, 100, chat=True)[0].constraint.text == "{}"
        return
    with pytest.raises(api.APIError) as raised:
        api.settings_of(body, 100, chat=True)
    assert raised.value.status == 400 and raised.value.param == "response_format"


# ------------------------------------------------------------------------------------- logprobs


def byte_level_tokenizer(tmp_path):
    from conftest import byte_tokenizer

    from lmgen.text.tokenizer import Tokenizer

    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    return Tokenizer(tmp_path / "tokenizer.json")


def sentencepiece_tokenizer(tmp_path):
    """SentencePiece BPE with byte fallback, as a GGUF "llama" tokenizer is rebuilt."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    from lmgen.text.tokenizer import Tokenizer

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "\u2581a": 257, "a": 258}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    return Tokenizer(tmp_path / "tokenizer.json")


def tokens_of(tokenizer, pieces: list[bytes]) -> list[Token]:
    """The tokens spelling these bytes, as the engine reports them (each with itself as the top)."""
    ids = [next(i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) == piece) for piece in pieces]
    return [Token(id=i, text="", prob=0.5, top=((i, 0.5),)) for i in ids]


@pytest.mark.parametrize("make", [byte_level_tokenizer, sentencepiece_tokenizer])
def test_logprobs_carry_each_tokens_own_bytes_and_offsets_in_characters(make, tmp_path):
    tokenizer = make(tmp_path)
    text = "aé😀a"
    pieces = [bytes([b]) for b in text.encode()]  # every byte its own token: é and 😀 in pieces
    tokens = tokens_of(tokenizer, pieces)
    chat = api.chat_logprobs(tokens, tokenizer, 1)["content"]
    assert [bytes(entry["bytes"]) for entry in chat] == pieces
    assert b"".join(bytes(entry["bytes"]) for entry in chat).decode() == text
    assert [bytes(top["bytes"]) for entry in chat for top in entry["top_logprobs"]] == pieces
    assert chat[1]["token"] == "\ufffd"  # the text of a piece of a character (what --show-probs shows)
    offsets = api.text_logprobs(tokens, tokenizer, 1)["text_offset"]
    assert offsets == [0, 1, 1, 2, 2, 2, 2, 3]  # a piece of a character starts where the character does
    assert [text[o] for o in offsets] == ["a", "é", "é", "😀", "😀", "😀", "😀", "a"]


def test_token_bytes_of_whole_tokens(tmp_path):
    tokenizer = sentencepiece_tokenizer(tmp_path)
    assert tokenizer.token_bytes(257) == b" a"  # the leading space decode() strips is the token's own
    assert tokenizer.token_bytes(258) == b"a"
    bytes_level = byte_level_tokenizer(tmp_path)
    assert bytes_level.token_bytes(bytes_level.token_id("<|endoftext|>")) == b"<|endoftext|>"
    assert bytes_level.token_bytes(bytes_level.token_id("\u0120")) == b" "  # Ġ: the space's byte-level spelling


@pytest.mark.parametrize("fields, param", [({"stop": "\ud800"}, "stop"), ({"stop": ["ok", "\udcff"]}, "stop"),
                                           ({"top_p": 2}, "top_p"), ({"min_p": -1}, "min_p"),
                                           ({"logit_bias": {"1": "a --stop b"}}, "logit_bias"),  # (not the value's)
                                           ({"logit_bias": {"a --top-k": 1}}, "logit_bias"),
                                           ({"logit_bias": ["--stop"]}, "logit_bias")])
def test_a_refused_sampling_field_is_named_in_param(fields, param):
    with pytest.raises(api.APIError) as raised:
        api.settings_of(fields, 100, chat=True)
    assert raised.value.status == 400 and raised.value.param == param


@pytest.mark.parametrize("bias, message", [
    ([[1, 2]], "must be an object of token ids"), ("50256", "must be an object of token ids"),
    ({"x": 1}, "keys must be token ids"), ({"-1": 1}, "keys must be token ids"), ({"1.5": 1}, "keys must be token ids"),
    ({" 1": 1}, "keys must be token ids"), ({"9" * 11: 1}, "keys must be token ids"),
    ({"4294967296": 1}, "beyond any model's vocabulary"),
    ({"1": 100.01}, "from -100 to 100, got 100.01"), ({"1": -101}, "from -100 to 100"), ({"1": "5"}, "a number"),
    ({"1": True}, "a number"), ({"1": None}, "a number"), ({"1": [1]}, "a number"),
    ({"1": 1, "01": 2}, "gives token 1 more than one bias"), ({str(i): 1 for i in range(1025)}, "at most 1024"),
])
def test_a_bad_logit_bias_is_400_naming_logit_bias(bias, message):
    for chat in (True, False):
        with pytest.raises(api.APIError) as raised:
            api.settings_of({"logit_bias": bias}, 100, chat=chat)
        error = raised.value
        assert (error.status, error.param) == (400, "logit_bias") and message in error.message
        assert error.message.startswith("logit-bias ")


def test_logit_bias_is_read_as_openais_client_sends_it():
    settings, _, _ = api.settings_of({"logit_bias": {"50256": -100, "7": 5, "0": 100.0}}, 100, chat=False)
    assert settings.sampling.logit_bias == ((0, 100.0), (7, 5.0), (50256, -100.0))
    for none in ({}, {"logit_bias": None}, {"logit_bias": {}}):
        assert api.settings_of(none, 100, chat=True)[0].sampling.logit_bias == ()
