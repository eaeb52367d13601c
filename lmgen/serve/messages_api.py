"""Anthropic's Messages API (``POST /v1/messages``): a thin adapter onto the chat path.

A request becomes a ``Chat`` and chat completions fields (``request``): ``system`` (a string or
text blocks), ``messages`` whose content is a string or blocks (``text``, ``tool_use`` on the
assistant's turns, ``tool_result`` on the user's), ``tools`` (``input_schema``), ``tool_choice``
(``auto``, ``any``, ``tool``, ``none``), ``max_tokens``, ``stop_sequences``, ``temperature``,
``top_p``, ``top_k``. The reply is a message whose content blocks are ``thinking``, ``text``
and ``tool_use``; a stream sends Anthropic's events (``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``). Errors are Anthropic's error object.
"""

from __future__ import annotations

import json

from lmgen.serve.chat_request import Chat, chat_messages, check_choice, check_tools
from lmgen.serve.openai_api import APIError
from lmgen.serve.replies import pieces, sse

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "abort": "end_turn"}


def error_body(exc: APIError) -> dict:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "request_too_large", 503: "overloaded_error"}
    return {"type": "error", "error": {"type": kinds.get(exc.status, "api_error"), "message": exc.message}}


def _blocks(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise APIError(400, f"{where}.content must be a string or a list of content blocks", "messages")
    return content


def _result_text(content) -> str:
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return content if isinstance(content, str) else json.dumps(content)


def _turns(message, i: int) -> list[dict]:
    """One Anthropic message as chat messages: tool results become tool turns of their own."""
    where = f"messages[{i}]"
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ("user", "assistant"):
        raise APIError(400, f"{where}.role must be user or assistant", "messages")
    text, calls, results = "", [], []
    for block in _blocks(message.get("content"), where):
        kind = block.get("type")
        if kind == "text":
            text += block.get("text") if isinstance(block.get("text"), str) else ""
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _result_text(block.get("content"))})
        elif kind not in ("thinking", "redacted_thinking"):
            raise APIError(400, f"{where}: content blocks of type {str(kind)[:40]!r} are not supported", "messages")
    turn = {"role": role, "content": text, **({"tool_calls": calls} if calls else {})}
    return results + ([turn] if text or calls or not results else [])


def _tool_choice(choice, tools: list[dict]) -> tuple[str, bool]:
    """(OpenAI's tool_choice, parallel calls) from Anthropic's."""
    if choice is None:
        return check_choice(None, tools), False
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise APIError(400, "'tool_choice' must be {\"type\": \"auto\" | \"any\" | \"tool\" | \"none\"}", "tool_choice")
    kind = choice["type"]
    named = {"type": "function", "function": {"name": choice.get("name")}} if kind == "tool" else None
    openai = named or {"any": "required"}.get(kind, kind)
    return check_choice(openai, tools), choice.get("disable_parallel_tool_use") is False


def request(body: dict) -> tuple[Chat, dict]:
    messages = [turn for i, m in enumerate(_list(body.get("messages"), "messages")) for turn in _turns(m, i)]
    system = body.get("system")
    if system is not None:
        messages.insert(0, {"role": "system", "content": _result_text(_blocks(system, "system"))})
    tools = check_tools([{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                           "parameters": t.get("input_schema")}}
                         if isinstance(t, dict) else t for t in _list(body.get("tools") or [], "tools", empty=True)])
    choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        raise APIError(400, "'max_tokens' is required: an integer >= 1", "max_tokens")
    fields = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "stream") if k in body}
    if body.get("stop_sequences"):
        fields["stop"] = body["stop_sequences"]
    return Chat(chat_messages({"messages": messages}), tools, choice, parallel), fields


def _list(value, name: str, empty: bool = False) -> list:
    if not isinstance(value, list) or (not value and not empty):
        raise APIError(400, f"'{name}' must be a {'' if empty else 'non-empty '}list", name)
    return value


def _tool_use(call) -> dict:
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
            "input": json.loads(call.arguments)}


def message(ident: str, model: str, content: list, done, prompt_tokens: int, called: bool) -> dict:
    stopped_by = done.stop_sequence if done is not None else None
    reason = None if done is None else "tool_use" if called and done.reason == "stop" else \
        "stop_sequence" if stopped_by is not None else STOP_REASONS[done.reason]
    return {"id": ident, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": stopped_by,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": done.new_tokens if done else 0,
                      "cache_read_input_tokens": done.cached_tokens if done else 0}}


async def whole(ctx, ticket, shape, ident: str, body: dict, chat: Chat) -> dict:
    content, done = [], None
    async for kind, value in pieces(ctx, ticket, shape):
        if kind == "done":
            done = value
        elif kind == "calls":
            content += [_tool_use(c) for c in value]
        else:
            block, key = ("thinking", "thinking") if kind == "reasoning" else ("text", "text")
            if not content or content[-1]["type"] != block:
                content.append({"type": block, key: "", **({"signature": ""} if block == "thinking" else {})})
            content[-1][key] += value
    called = any(b["type"] == "tool_use" for b in content)
    return message(ident, ctx.name, content, done, len(ticket.job.ids), called)


def _sse(kind: str, data: dict) -> str:
    return sse({"type": kind, **data}, kind)


async def stream(ctx, ticket, shape, ident: str, body: dict, chat: Chat, on_close):
    """Anthropic's events for one reply: each block started, filled by deltas and stopped."""
    prompt, index, open_kind, called = len(ticket.job.ids), -1, None, False
    try:
        yield _sse("message_start", {"message": message(ident, ctx.name, [], None, prompt, False)})
        async for kind, value in pieces(ctx, ticket, shape):
            if kind == "done":
                if open_kind:
                    yield _sse("content_block_stop", {"index": index})
                done = message(ident, ctx.name, [], value, prompt, called)
                yield _sse("message_delta", {"delta": {"stop_reason": done["stop_reason"],
                                                       "stop_sequence": done["stop_sequence"]},
                                             "usage": {"output_tokens": value.new_tokens}})
                yield _sse("message_stop", {})
                return
            if kind == "calls":
                for call in value:
                    if open_kind:
                        yield _sse("content_block_stop", {"index": index})
                    index, open_kind, called = index + 1, None, True
                    block = {**_tool_use(call), "input": {}}
                    yield _sse("content_block_start", {"index": index, "content_block": block})
                    yield _sse("content_block_delta", {"index": index, "delta": {"type": "input_json_delta",
                                                                                 "partial_json": call.arguments}})
                    yield _sse("content_block_stop", {"index": index})
                continue
            block = "thinking" if kind == "reasoning" else "text"
            if open_kind != block:
                if open_kind:
                    yield _sse("content_block_stop", {"index": index})
                index, open_kind = index + 1, block
                start = {"type": "thinking", "thinking": "", "signature": ""} if block == "thinking" else \
                    {"type": "text", "text": ""}
                yield _sse("content_block_start", {"index": index, "content_block": start})
            delta = {"type": "thinking_delta", "thinking": value} if block == "thinking" else \
                {"type": "text_delta", "text": value}
            yield _sse("content_block_delta", {"index": index, "delta": delta})
    except APIError as exc:
        yield _sse("error", error_body(exc))
    finally:
        on_close()
