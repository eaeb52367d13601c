"""The records lmgen prints for scripts (``--json``, ``--jsonl``), built from generation events.

Library code: no Typer, no rich. A finished sample carries its text and token ids
(``Finished.output``, ``Finished.token_ids``); ``summary`` adds the prompt and the rates.
"""

from __future__ import annotations

from lmgen.engine.events import Finished, Token


def summary(prompt: str, done: Finished, bytes_per_token: int, tokens: list[Token] | None = None,
            tokenizer=None) -> dict:
    """The record of one finished sample: what ``--json`` prints (and ``--jsonl`` last). With the
    sample's Token events (and the tokenizer), each token's probabilities too (--show-probs)."""
    decode_tokens = max(done.new_tokens - 1, 0)
    decode_rate = _rate(decode_tokens, done.decode_seconds)
    record = {
        "prompt": prompt,
        "text": done.output,
        "token_ids": list(done.token_ids),
        "finish_reason": done.reason,
        "prompt_tokens": done.prompt_tokens,
        "new_tokens": done.new_tokens,
        "time_to_first_token_s": round(done.prefill_seconds, 6),
        "decode_s": round(done.decode_seconds, 6),
        "prefill_tokens_per_s": _rate(done.prompt_tokens - done.cached_tokens, done.prefill_seconds),  # those prefilled
        "decode_tokens_per_s": decode_rate,
        "weights_gb_per_s": round(decode_rate * bytes_per_token / 1e9, 3),
        "sample": done.sample,
        "index": done.index,
    }
    if done.complete is not None:  # with --json-schema, --regex or --grammar
        record["complete"] = done.complete
        record["constraint_s"] = round(done.constraint_seconds, 6)
    if done.drafted:  # with --lookup
        record["drafted_tokens"], record["accepted_tokens"] = done.drafted, done.accepted
    if tokens is not None:
        record["tokens"] = [token_record(t, tokenizer) for t in tokens]
    return record


def reasoning_apart(record: dict, opened: bool) -> dict:
    """A chat reply's record with a thinking model's reasoning apart from its answer, as the server's
    ``reasoning_content`` is: ``text`` the answer, ``reasoning`` (just after it) what was thought,
    when the reply had a thinking block (``opened``: its prompt opened one; else the reply began
    with ``<think>``). A reply without one keeps its record as it was, with no ``reasoning`` key."""
    from lmgen.text.reply import split_reply

    reply = split_reply(record["text"], thinking=opened)
    if not opened and reply.content == record["text"]:
        return record
    out = {}
    for key, value in record.items():
        out[key] = reply.content if key == "text" else value
        if key == "text":
            out["reasoning"] = reply.reasoning
    return out


def token_record(token, tokenizer) -> dict:
    record = {"id": token.id, "text": token.text}
    if token.prob is not None:
        record["token"] = tokenizer.decode([token.id], skip_special_tokens=False)
        record["prob"] = round(token.prob, 6)
        record["top"] = [
            {"id": i, "token": tokenizer.decode([i], skip_special_tokens=False), "prob": round(p, 6)}
            for i, p in token.top
        ]
    return record


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3) if seconds > 0 and count > 0 else 0.0
