"""Text ↔ token ids with the ``tokenizers`` library, and incremental decoding."""

from __future__ import annotations

import functools
from pathlib import Path

from lmgen.errors import CheckpointError, InputError
from lmgen.formats.files import read_text

REPLACEMENT = "\ufffd"


def check_token_ids(ids, vocab_size: int, where: str = "") -> None:
    """Every id names a token of the vocabulary: else an InputError naming the first that does
    not (``where`` leads the message: an option's name, an input's place)."""
    beyond = next((i for i in ids if not 0 <= i < vocab_size), None)
    if beyond is not None:
        raise InputError(f"{where}token id {beyond} is not in the model's vocabulary (0 to {vocab_size - 1})")


class Tokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        text = read_text(Path(path), "tokenizer")
        try:
            self.backend = HFTokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises bare Exception subclasses
            message = str(exc).replace("\n", " ")
            raise CheckpointError(f"cannot read tokenizer {path}: {message}") from None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def max_added_id(self) -> int:
        """The largest id of an added (special) token, -1 if there are none."""
        return max(self.backend.get_added_tokens_decoder(), default=-1)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids as transformers' tokenizer gives them (by default with special tokens such as BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for: its own, even where it is part of a character and
        ``decode`` gives U+FFFD (see ``token_bytes``). An added token is its text."""
        from lmgen.text.token_bytes import piece_bytes

        added, kinds = self._spelling
        if token_id in added:
            return added[token_id].encode()
        piece = self.backend.id_to_token(token_id)
        raw = piece_bytes(piece, kinds) if piece is not None else None
        return raw if raw is not None else self.decode([token_id], skip_special_tokens=False).encode()

    @functools.cached_property
    def _spelling(self) -> tuple[dict[int, str], frozenset[str]]:
        """(added tokens' texts by id, the decoder's kinds): what ``token_bytes`` reads, once."""
        from lmgen.text.token_bytes import decoder_kinds

        added = {i: token.content for i, token in self.backend.get_added_tokens_decoder().items()}
        return added, decoder_kinds(self.backend.decoder)

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns token ids, one at a time, into text pieces that are safe to print.

    A character split across tokens (multi-byte UTF-8 in byte-level BPE) decodes
    to U+FFFD until its last byte arrives, so a piece is held back while it ends
    in a replacement character. Decoding a short window (from ``prefix``) rather
    than single tokens keeps decoders that look at neighbours (leading spaces in
    SentencePiece) correct.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window whose text has been emitted
        self.read = 0  # end of that window

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) > len(done) and not text.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (incomplete bytes print as U+FFFD)."""
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(done) :]
