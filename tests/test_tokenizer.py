"""Incremental decoding never prints half a character."""

from conftest import byte_tokenizer

from lmgen.text.tokenizer import REPLACEMENT, Tokenizer


def make(tmp_path):
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    return Tokenizer(tmp_path / "tokenizer.json")


def test_multibyte_characters_split_across_tokens_stream_whole(tmp_path):
    tok = make(tmp_path)
    text = "héllo 🐱 wörld — 日本"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte: characters are split
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)
    assert "🐱" in pieces  # the four bytes of the cat come out as one piece


def test_flush_releases_an_incomplete_character(tmp_path):
    tok = make(tmp_path)
    ids = tok.encode("a🐱")[:-1]  # the cat's last byte never comes
    stream = tok.stream()
    assert "".join(stream.push(i) for i in ids) == "a"
    assert stream.flush() == REPLACEMENT


def test_special_tokens_are_not_printed(tmp_path):
    tok = make(tmp_path)
    stream = tok.stream()
    assert stream.push(tok.token_id("<|endoftext|>")) == ""
