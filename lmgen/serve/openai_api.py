"""OpenAI's request and response shapes: a request's fields into lmgen's settings, and the
completions' and errors' JSON.

A body is parsed within bounds (``parse_body``: JSON, an object, nested at most 64 deep, no
integer of more than 100 digits), so that no body makes a 500. Fields are read as the ``openai``
client sends them; unknown ones are ignored (a chat's messages and tools: ``chat_request``).
``response_format`` becomes lmgen's llguidance constraint (``json_object``: any JSON object;
``json_schema``: its schema, an object, always handed over as JSON text, never as a file's path);
``logprobs`` come from the same probabilities as ``--show-probs``, with each token's own bytes.
Every bad value is an ``APIError``: a 400 with OpenAI's error object naming the field, never a
422 or a 500.
"""

from __future__ import annotations

import codecs
import json
import math
import time
import uuid

from lmgen.engine.generation import GenerationSettings
from lmgen.engine.sampling import SamplingSettings
from lmgen.errors import InputError

MAX_DEPTH = 64  # arrays and objects within each other (a real request: under 10; a schema: under 30)
MAX_DIGITS = 100  # of an integer (Python refuses over 4300 with a ValueError; a seed has 20)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Unbounded(ValueError):
    """A JSON value past a bound (its message says which)."""


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _Unbounded(f"an integer of more than {MAX_DIGITS} digits")
    return int(text)


def _constant(name: str):
    raise _Unbounded(f"{name} (not JSON)")


def parse_body(data: bytes) -> dict:
    """A request body as a JSON object within bounds, else a 400: not JSON, not an object, nested
    deeper than MAX_DEPTH (the parser's own recursion limit, near 1000, stops a deeper one first),
    an integer longer than MAX_DIGITS, NaN or Infinity."""
    too_deep = APIError(400, f"the request body is nested more than {MAX_DEPTH} levels deep")
    try:
        body = json.loads(data, parse_int=_integer, parse_constant=_constant)
    except RecursionError:
        raise too_deep from None
    except _Unbounded as exc:
        raise APIError(400, f"the request body holds {exc}") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise APIError(400, "the request body is not valid JSON") from None
    if _depth(body) > MAX_DEPTH:
        raise too_deep
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _depth(value) -> int:
    """How deep arrays and objects nest in a parsed value (a loop, not recursion; it stops
    counting past MAX_DEPTH)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _field(body: dict, name: str, kinds, default=None, check=None, hint: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
        raise APIError(400, f"'{name}' must be {hint or kinds.__name__}, got {value!r}"[:300], name)
    if check is not None and not check(value):
        raise APIError(400, f"'{name}' must be {hint}, got {value!r}"[:300], name)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 16 of them", "stop")
    return tuple(stops)


def settings_of(body: dict, context: int, chat: bool) -> tuple[GenerationSettings, bool, bool]:
    """(settings, stream, include_usage) from a request's fields."""
    number = (int, float)
    limit = _field(body, "max_completion_tokens", int, None, lambda v: v >= 1, "an integer >= 1")
    limit = limit or _field(body, "max_tokens", int, None, lambda v: v >= 1, "an integer >= 1") or context
    options = _stream_options(body)
    try:
        sampling = SamplingSettings(
            temperature=float(_field(body, "temperature", number, 1.0, hint="a number")),
            top_p=float(_field(body, "top_p", number, 1.0, hint="a number")),
            top_k=_field(body, "top_k", int, 0, hint="an integer"),
            min_p=float(_field(body, "min_p", number, 0.0, hint="a number")),
            repetition_penalty=float(_field(body, "repetition_penalty", number, 1.0, hint="a number")),
            frequency_penalty=float(_field(body, "frequency_penalty", number, 0.0, hint="a number")),
            presence_penalty=float(_field(body, "presence_penalty", number, 0.0, hint="a number")),
            logit_bias=_logit_bias(body.get("logit_bias")),
        )
        seed = _field(body, "seed", int, None, lambda v: 0 <= v < 2**64, "an integer from 0 to 2**64 - 1")
        n = _field(body, "n", int, 1, lambda v: 1 <= v <= 16, "an integer from 1 to 16")
        settings = GenerationSettings(max_new_tokens=limit, sampling=sampling, seed=seed, stop=_stops(body),
                                      num_samples=n, show_probs=_probabilities(body, chat),
                                      constraint=_constraint(body),
                                      lookup=_field(body, "lookup", int, 0, hint="an integer from 0 to 64"))
    except InputError as exc:  # the option's name leads the message ("top-p must be ..."; "a --stop string ...")
        words = [w for w in str(exc).split(", got ")[0].split(" ") if w.lstrip("-")[:1].isalpha()]  # (not the value's)
        name = next((w.lstrip("-") for w in words if w.startswith("--")), words[0] if words else None)
        raise APIError(400, str(exc), name.replace("-", "_") if name else None) from None
    return settings, bool(_field(body, "stream", bool, False, hint="true or false")), options


def _logit_bias(value) -> tuple:
    """OpenAI's ``logit_bias``, {"50256": -100}: token ids as strings, each to a bias (checked by
    SamplingSettings; the ids against the model's vocabulary with the prompt's: ``prompt_ids_for``).
    InputErrors name "logit-bias", which settings_of reports as param ``logit_bias``."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InputError(f"logit-bias must be an object of token ids (as strings) to biases from -100 to 100, "
                         f"got {json.dumps(value)[:60]}")
    pairs = []
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):  # (a JSON object's keys are strings)
            raise InputError(f"logit-bias keys must be token ids, integers >= 0 written as strings, "
                             f"got {json.dumps(key)[:60]}")
        pairs.append((int(key), bias))
    return tuple(pairs)


def _probabilities(body: dict, chat: bool) -> int:
    """How many alternatives each token's record carries (``show_probs``), at least 1 when
    logprobs are asked for (the chosen token's own), 0 when not. Chat: ``logprobs`` true and
    ``top_logprobs`` 0-20; completions: ``logprobs`` 0-5."""
    if chat:
        if not _field(body, "logprobs", bool, False, hint="true or false"):
            if body.get("top_logprobs") is not None:
                raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
            return 0
        return max(1, _field(body, "top_logprobs", int, 0, lambda v: 0 <= v <= 20, "an integer from 0 to 20"))
    top = _field(body, "logprobs", int, None, lambda v: 0 <= v <= 5, "an integer from 0 to 5")
    return 0 if top is None else max(1, top)


def _constraint(body: dict):
    form = body.get("response_format")
    if form is None:
        return None
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema" and isinstance(form.get("json_schema"), dict):
        schema = form["json_schema"].get("schema")
        schema = {} if schema is None else schema  # none: any JSON
        if not isinstance(schema, dict):  # a string would be taken for a file's path by --json-schema's rules
            raise APIError(400, "'response_format.json_schema.schema' must be a JSON object", "response_format")
    else:
        raise APIError(400, "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                       "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": …}}", "response_format")
    from lmgen.engine.constraint import Constraint
    from lmgen.errors import EnvironmentFailure

    try:  # the schema's own JSON text, never through from_options, which also reads files
        constraint = Constraint("json_schema", json.dumps(schema))
        constraint.check()
        return constraint
    except EnvironmentFailure as exc:
        raise APIError(400, str(exc), "response_format") from None
    except InputError as exc:
        raise APIError(400, str(exc).replace("--json-schema", "response_format"), "response_format") from None


def _stream_options(body: dict) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    return bool(options.get("include_usage"))


def prompts_of(body: dict) -> list[str]:
    """A completions request's prompts: a string or a list of strings."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise APIError(400, "'prompt' must be a non-empty string or a list of them", "prompt")
    return prompts


# ---------------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens found in the prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def text_choice(index: int, text: str, reason: str, logprobs=None) -> dict:
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def chat_logprobs(tokens: list, tokenizer, top: int) -> dict:
    """OpenAI's chat shape: per token its text, logprob, bytes and the ``top`` likeliest. The
    bytes are the token's own (a piece of a character shows as U+FFFD in ``token``, and only
    ``bytes`` can put the character back together, as OpenAI's field is for)."""
    def entry(token_id: int, p: float) -> dict:
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": _logprob(p), "bytes": list(tokenizer.token_bytes(token_id))}

    return {"content": [{**entry(t.id, t.prob), "top_logprobs": [entry(i, p) for i, p in t.top[:top]]}
                        for t in tokens]}


def text_offsets(pieces: list[bytes]) -> list[int]:
    """Where each token starts in the text, in characters: the characters its bytes complete
    before it (a token inside a character starts where that character does)."""
    decoder, offsets, done = codecs.getincrementaldecoder("utf-8")("replace"), [], 0
    for piece in pieces:
        offsets.append(done)
        done += len(decoder.decode(piece))
    return offsets


def text_logprobs(tokens: list, tokenizer, top: int) -> dict:
    """The completions shape: tokens, their logprobs, the ``top`` likeliest of each, offsets."""
    texts = [tokenizer.decode([t.id], skip_special_tokens=False) for t in tokens]
    offsets = text_offsets([tokenizer.token_bytes(t.id) for t in tokens])
    return {"tokens": texts, "token_logprobs": [_logprob(t.prob) for t in tokens],
            "top_logprobs": [{tokenizer.decode([i], skip_special_tokens=False): _logprob(p) for i, p in t.top[:top]}
                             for t in tokens], "text_offset": offsets}


def envelope(kind: str, ident: str, model: str, choices: list, extra: dict | None = None) -> dict:
    return {"id": ident, "object": kind, "created": int(time.time()), "model": model, "choices": choices,
            **(extra or {})}
