"""llama-server's ``POST /tokenize`` and ``POST /detokenize`` for a served model's tokenizer.

``/tokenize`` takes ``{"model"?, "content": text, "add_special": bool}`` (default true: the
special tokens the tokenizer adds, a BOS where it adds one) and answers ``{"tokens": [ids]}``;
``/detokenize`` takes ``{"model"?, "tokens": [ids]}``, each id in the model's vocabulary, and
answers ``{"content": text}`` (special tokens kept, so that the two round-trip). Tokenizing runs
off the event loop; a bad field is a 400 with OpenAI's error object naming it.
"""

from __future__ import annotations

from lmgen.errors import InputError
from lmgen.serve.openai_api import APIError
from lmgen.text.tokenizer import check_token_ids
from lmgen.text.utf8 import utf8_text


async def tokenize(body: dict, served, off_loop) -> dict:
    content, special = body.get("content"), body.get("add_special", True)
    if not isinstance(content, str):
        raise APIError(400, "'content' must be a string", "content")
    if not isinstance(special, bool):
        raise APIError(400, f"'add_special' must be true or false, got {special!r}"[:300], "add_special")
    try:
        utf8_text(content, "'content'")
    except InputError as exc:
        raise APIError(400, str(exc), "content") from None
    return {"tokens": await off_loop(lambda: served.lm.encode(content, add_special_tokens=special))}


async def detokenize(body: dict, served, off_loop) -> dict:
    ids = body.get("tokens")
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise APIError(400, "'tokens' must be a list of token ids", "tokens")
    try:
        check_token_ids(ids, served.lm.config.vocab_size, "'tokens': ")
    except InputError as exc:
        raise APIError(400, str(exc)[:300], "tokens") from None
    text = await off_loop(lambda: served.lm.tokenizer.decode(ids, skip_special_tokens=False))
    return {"content": text}
