"""OpenAI's embeddings (``POST /v1/embeddings``): the request's fields checked, the vectors
computed off the event loop (``lmgen.engine.embed``: each input alone, so its vector is the
one it gets alone or from ``lmgen embed``), and the reply in OpenAI's shape.

``input`` is a string, a list of strings, a list of token ids, or a list of such lists;
``encoding_format`` is ``float`` (lists of numbers, the default) or ``base64`` (each vector's
little-endian float32 bytes, what the ``openai`` client asks for and decodes unless told
otherwise); ``dimensions`` may only be the model's own size (lmgen does not truncate). lmgen's
own ``pooling`` (mean, last, cls) and ``normalize`` (default true) are extra fields. Every bad
value is a 400 with OpenAI's error object naming the field.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from lmgen.config.model_config import POOLINGS
from lmgen.engine.embed import embed
from lmgen.errors import InputError, LmgenError
from lmgen.serve.openai_api import APIError

MAX_INPUTS = 2048  # per request, as OpenAI's own limit
ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingCall:
    """What one embeddings request asks for."""

    inputs: list  # strings or lists of token ids
    encoding: str
    pooling: str | None
    normalize: bool


async def answer(body: dict, served, off_loop) -> dict:
    """The reply to an embeddings request for a served model (its vectors computed by ``off_loop``)."""
    call = call_of(body, served.lm.config.d_model)
    try:
        result = await off_loop(lambda: embed(served.lm, call.inputs, call.pooling, call.normalize))
    except InputError as exc:
        raise APIError(400, str(exc), "input") from None
    except LmgenError as exc:
        raise APIError(500, str(exc), kind="server_error") from None
    return reply(result, served.spec.id, call.encoding)


def call_of(body: dict, dimensions: int) -> EmbeddingCall:
    """A request's fields, each checked (400 naming the field otherwise)."""
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise APIError(400, f"'encoding_format' must be float or base64, got {encoding!r}"[:300], "encoding_format")
    asked = body.get("dimensions")
    if asked is not None and (type(asked) is not int or asked != dimensions):
        raise APIError(400, f"'dimensions' must be this model's size, {dimensions} (lmgen does not shorten "
                            f"embeddings), got {asked!r}"[:300], "dimensions")
    pooling = body.get("pooling")
    if pooling is not None and pooling not in POOLINGS:
        raise APIError(400, f"'pooling' must be one of {', '.join(POOLINGS)}, got {pooling!r}"[:300], "pooling")
    normalize = body.get("normalize", True)
    if not isinstance(normalize, bool):
        raise APIError(400, f"'normalize' must be true or false, got {normalize!r}"[:300], "normalize")
    return EmbeddingCall(inputs_of(body), encoding, pooling, normalize)


def inputs_of(body: dict) -> list:
    """``input`` as a list of inputs: a string, a list of strings, a list of token ids (one
    input), or a list of lists of token ids."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(type(i) is int for i in value):
            return [value]
        if all(isinstance(v, str) for v in value) or all(_token_list(v) for v in value):
            if len(value) > MAX_INPUTS:
                raise APIError(400, f"'input' may hold at most {MAX_INPUTS} inputs, got {len(value)}", "input")
            return value
    raise APIError(400, "'input' must be a non-empty string, a list of strings, a list of token ids, "
                        "or a list of lists of token ids", "input")


def _token_list(value) -> bool:
    return isinstance(value, list) and all(type(i) is int for i in value)


def reply(result, model: str, encoding: str) -> dict:
    """OpenAI's list of embedding objects, with the tokens read as usage."""
    data = [{"object": "embedding", "index": index, "embedding": encoded(vector, encoding)}
            for index, vector in enumerate(result.vectors)]
    usage = {"prompt_tokens": result.total_tokens, "total_tokens": result.total_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def encoded(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as numbers, or as its little-endian float32 bytes in base64 (the same values:
    they are float32 already)."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
