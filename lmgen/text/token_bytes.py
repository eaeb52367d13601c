"""The bytes a single token stands for, which its decoded text cannot always say.

A token that is part of a multi-byte character (byte-level BPE splits "😀" into pieces) decodes
to U+FFFD, whose own bytes are not the token's. The ``tokenizers`` library keeps the real bytes
in the token's vocabulary spelling: byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen) writes every
byte as one printable character (``bytes_to_unicode``, mapped back here), and SentencePiece's
byte fallback writes a lone byte as ``<0xE2>`` and a space as ``▁``. Any other token (an added
one, or one of a tokenizer this does not know) is its decoded text.
"""

from __future__ import annotations

import json
import re

SPACE = "\u2581"  # SentencePiece's visible space
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode``, reversed: printable Latin-1 bytes are their own character,
    the others (controls, space, ...) are U+0100 onwards in byte order."""
    own = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in own:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + shifted)] = byte
            shifted += 1
    return alphabet


BYTE_OF = _byte_level_alphabet()


def decoder_kinds(decoder) -> frozenset[str]:
    """The types of a tokenizer's decoder and of the decoders in its sequence ("ByteLevel", ...)."""
    if decoder is None:
        return frozenset()
    state = json.loads(decoder.__getstate__())
    parts = state.get("decoders") or [state]
    return frozenset(part.get("type", "") for part in parts)


def piece_bytes(piece: str, kinds: frozenset[str]) -> bytes | None:
    """A vocabulary spelling's bytes, None where the spelling does not say (decode it instead)."""
    if "ByteLevel" in kinds:
        raw = [BYTE_OF.get(char) for char in piece]
        if None not in raw:
            return bytes(raw)
    if "ByteFallback" in kinds and (match := BYTE_PIECE.fullmatch(piece)):
        return bytes([int(match[1], 16)])
    if kinds & {"Metaspace", "Replace"} and SPACE in piece:
        return piece.replace(SPACE, " ").encode()
    return None
