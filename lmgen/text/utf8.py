"""Text that came in as bytes (an argument, a line, a file), checked to be UTF-8 where it enters."""

from __future__ import annotations

from lmgen.errors import InputError

BOM = "\ufeff"  # a UTF-8 byte order mark some editors put first: not part of the text


def utf8_text(text: str, what: str) -> str:
    """Text that came in as bytes (a command-line argument, a line): any that were not UTF-8,
    which Python keeps as lone surrogates, are refused here, not deep in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid UTF-8 (character {exc.start})") from None
    return text
