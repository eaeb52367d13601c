"""A request's replies from its tickets' events: one JSON completion, or a stream of chunks.

Every way a request can end has a well-formed reply: its text with a ``finish_reason``
("stop", "length", or "abort" when the server shut down before it was done), or OpenAI's error
object — as the whole response, or on a stream as an ``error`` event followed by ``[DONE]``, so
that no client is left with a cut chunked body. ``ReplyContext`` is what the replies need of the
server: the model's name, its tokenizer (for logprobs) and the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmgen.engine.chat_turn import Shape
from lmgen.engine.events import Finished, Token
from lmgen.errors import InputError
from lmgen.serve import openai_api as api
from lmgen.serve.bridge import Refused, Ticket
from lmgen.serve.metrics import Metrics
from lmgen.text.reply import Reply


@dataclass(frozen=True)
class ReplyContext:
    name: str  # the model's, as /v1/models lists it
    tokenizer: object
    metrics: Metrics


def api_error(exc: BaseException) -> api.APIError:
    """What a ticket's error is to the client: 400 its own input, 503 refused, else 500."""
    if isinstance(exc, api.APIError):
        return exc
    if isinstance(exc, InputError):
        return api.APIError(400, str(exc))
    if isinstance(exc, Refused):
        return api.APIError(503, str(exc), kind="server_error", code="overloaded")
    return api.APIError(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")


def sse(data: dict, event: str | None = None) -> str:
    """One server-sent event: its JSON, under an ``event:`` name where the API names them
    (Responses, Messages)."""
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def observe(metrics: Metrics, done: Finished) -> None:
    metrics.generated_tokens.inc(done.new_tokens)
    if done.sample == 0 and done.cached_tokens:
        metrics.prefix_cache_hits.inc()
        metrics.prefix_cache_tokens.inc(done.cached_tokens)
    metrics.time_to_first_token.observe(done.prefill_seconds)
    if done.new_tokens > 1:
        metrics.inter_token.observe(done.decode_seconds / (done.new_tokens - 1))


def _logprobs(ctx: ReplyContext, tokens: list[Token], chat: bool, top: int) -> dict:
    return (api.chat_logprobs if chat else api.text_logprobs)(tokens, ctx.tokenizer, top)


async def pieces(ctx: ReplyContext, ticket: Ticket, shape: Shape):
    """One ticket's reply as its parts, as they come: ("reasoning" | "content", text),
    ("calls", [ToolCall]), and last ("done", Finished). An error the ticket ended with is raised."""
    splitter = shape.splitter()
    while (event := await ticket.events.get()) is not None:
        if isinstance(event, BaseException):
            raise api_error(event)
        for piece in splitter.feed(event.text):
            yield piece
        if isinstance(event, Finished):
            for piece in splitter.finish():
                yield piece
            observe(ctx.metrics, event)
            yield "done", event


def chat_message(reply: Reply) -> dict:
    """OpenAI's assistant message: its text (null when it only calls tools), its reasoning apart,
    its calls."""
    message = {"role": "assistant", "content": reply.content if reply.content.strip() or not reply.calls else None}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.calls:
        message["tool_calls"] = [call.openai() for call in reply.calls]
    return message


def finish_reason(reason: str, calls: bool) -> str:
    return "tool_calls" if calls and reason == "stop" else reason


async def collect(ctx: ReplyContext, tickets: list[Ticket], chat: bool, top: int,
                  shape: Shape | None = None) -> tuple[list, dict]:
    """(choices, usage) once every ticket has ended; APIError if one ended with an error."""
    choices, prompt_tokens, completion_tokens, cached = [], 0, 0, 0
    n, wanted = tickets[0].job.rows, tickets[0].job.settings.show_probs > 0
    for p, ticket in enumerate(tickets):
        done: dict[int, Finished] = {}
        tokens: dict[int, list[Token]] = {s: [] for s in range(n)}
        while (event := await ticket.events.get()) is not None:
            if isinstance(event, BaseException):
                raise api_error(event)
            if isinstance(event, Finished):
                done[event.sample] = event
                observe(ctx.metrics, event)
            elif wanted:
                tokens[event.sample].append(event)
        prompt_tokens += len(ticket.job.ids)
        cached += done[0].cached_tokens if 0 in done else 0
        for sample in sorted(done):
            event = done[sample]
            completion_tokens += event.new_tokens
            logprobs = _logprobs(ctx, tokens[sample], chat, top) if wanted else None
            if chat:
                reply = (shape or Shape()).split(event.output)
                choices.append({"index": p * n + sample, "message": chat_message(reply),
                                "finish_reason": finish_reason(event.reason, bool(reply.calls)), "logprobs": logprobs})
            else:
                choices.append(api.text_choice(p * n + sample, event.output, event.reason, logprobs))
    return choices, api.usage(prompt_tokens, completion_tokens, cached)


def _delta(kind: str, value, calls_sent: int) -> dict:
    if kind == "calls":
        return {"tool_calls": [call.openai(calls_sent + k) for k, call in enumerate(value)]}
    return {"reasoning_content" if kind == "reasoning" else "content": value}


async def chunks(ctx: ReplyContext, tickets: list[Ticket], ident: str, include_usage: bool, chat: bool, top: int,
                 on_close, shape: Shape | None = None):
    """The stream's server-sent events; ``on_close`` runs however it ends (the client gone too).
    A chat's text goes through its Shape's splitter: reasoning, answer and calls each in their
    own delta, the same parts as the whole reply's."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    n, wanted = tickets[0].job.rows, tickets[0].job.settings.show_probs > 0
    completion_tokens, cached = 0, 0
    shape = shape or Shape()
    splitters, calls = {}, {}
    try:
        if chat:
            first = [{"index": s, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for s in range(n)]
            yield sse(api.envelope(kind, ident, ctx.name, first))
        for p, ticket in enumerate(tickets):
            while (event := await ticket.events.get()) is not None:
                if isinstance(event, BaseException):
                    yield sse(api_error(event).body())
                    yield "data: [DONE]\n\n"
                    return
                index = p * n + event.sample
                if not chat:
                    choice = {"index": index, "text": event.text, "logprobs": None, "finish_reason": None}
                    if isinstance(event, Finished):
                        completion_tokens += event.new_tokens
                        cached += event.cached_tokens if event.sample == 0 else 0
                        observe(ctx.metrics, event)
                        choice["finish_reason"] = event.reason
                    elif wanted:
                        choice["logprobs"] = _logprobs(ctx, [event], chat, top)
                    elif not event.text:
                        continue
                    yield sse(api.envelope(kind, ident, ctx.name, [choice]))
                    continue
                splitter = splitters.setdefault(index, shape.splitter())
                pieces = splitter.feed(event.text)
                logprobs = _logprobs(ctx, [event], chat, top) if wanted and not isinstance(event, Finished) else None
                if isinstance(event, Finished):
                    pieces += splitter.finish()
                for piece_kind, value in pieces or ([("content", "")] if logprobs else []):
                    choice = {"index": index, "delta": _delta(piece_kind, value, calls.get(index, 0)),
                              "finish_reason": None, "logprobs": logprobs}
                    if piece_kind == "calls":
                        calls[index] = calls.get(index, 0) + len(value)
                    logprobs = None
                    yield sse(api.envelope(kind, ident, ctx.name, [choice]))
                if isinstance(event, Finished):
                    completion_tokens += event.new_tokens
                    cached += event.cached_tokens if event.sample == 0 else 0
                    observe(ctx.metrics, event)
                    choice = {"index": index, "delta": {}, "logprobs": None,
                              "finish_reason": finish_reason(event.reason, calls.get(index, 0) > 0)}
                    yield sse(api.envelope(kind, ident, ctx.name, [choice]))
        if include_usage:
            prompt_tokens = sum(len(ticket.job.ids) for ticket in tickets)
            yield sse(api.envelope(kind, ident, ctx.name, [], {"usage": api.usage(prompt_tokens, completion_tokens,
                                                                                   cached)}))
        yield "data: [DONE]\n\n"
    finally:  # also when the client disconnects: its rows are freed at the next step
        on_close()
