"""OpenAI's Responses API (``POST /v1/responses``), stateless: a thin adapter onto the chat path.

A request becomes a ``Chat`` and chat-completions fields (``request``): ``input`` (a string, or
message, ``function_call`` and ``function_call_output`` items), ``instructions`` (a system
message), ``tools`` (function tools, flattened), ``tool_choice``, ``max_output_tokens`` and
``text.format`` (a response format). The reply's parts become output items: a ``reasoning``
item, a ``message`` with ``output_text``, and a ``function_call`` per call; a stream sends the
typed events the ``openai`` client and the Agents SDK read, ending with ``response.completed``
(or ``response.incomplete`` when the output ran out of tokens). Nothing is stored:
``previous_response_id`` is refused.
"""

from __future__ import annotations

import json
import time

from lmgen.engine.events import Finished
from lmgen.serve.chat_request import Chat, chat_messages, check_choice, check_tools, template_options
from lmgen.serve.openai_api import APIError, new_id
from lmgen.serve.replies import pieces
from lmgen.text.reply import Reply

PASSED = ("temperature", "top_p", "top_k", "min_p", "seed", "stream", "repetition_penalty", "frequency_penalty",
          "presence_penalty", "stop", "logit_bias")  # read as chat completions reads them


def _input_messages(items) -> list[dict]:
    """Responses input items as chat messages (consecutive calls join one assistant turn)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise APIError(400, "'input' must be a string or a non-empty list of items", "input")
    messages = []
    for i, item in enumerate(items):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else json.dumps(output)})
        elif kind != "reasoning":  # earlier reasoning items are not shown to the model again
            raise APIError(400, f"input[{i}] must be a message, function_call or function_call_output item", "input")
    return chat_messages({"messages": messages})


def _tools(tools) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
        raise APIError(400, "'tools' must be a list of function tools ({\"type\": \"function\", \"name\": …})",
                       "tools")
    return check_tools([{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")
                                                          if k in t}} for t in tools])


def _format(text) -> dict | None:
    """``text.format`` as a chat completions ``response_format``."""
    form = (text or {}).get("format") if isinstance(text, (dict, type(None))) else None
    if form is None or form.get("type") == "text":
        return None
    if form.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"schema": form.get("schema")}}
    return form


def request(body: dict) -> tuple[Chat, dict]:
    """(the chat, chat completions fields for its settings)."""
    if body.get("previous_response_id") is not None:
        raise APIError(400, "lmgen's server stores no responses: send the whole conversation as 'input'",
                       "previous_response_id")
    messages = _input_messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise APIError(400, "'instructions' must be a string", "instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    tools = _tools(body.get("tools"))
    parallel = body.get("parallel_tool_calls")
    chat = Chat(messages, tools, check_choice(body.get("tool_choice"), tools), parallel is True,
                template_options(body))
    fields = {k: body[k] for k in PASSED if k in body}
    fields.update(max_tokens=body.get("max_output_tokens"), response_format=_format(body.get("text")))
    return chat, fields


def message_item(text: str) -> dict:
    return {"type": "message", "id": new_id("msg"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def reasoning_item(text: str) -> dict:
    return {"type": "reasoning", "id": new_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def call_item(call) -> dict:
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            "name": call.name, "arguments": call.arguments, "status": "completed"}


def response(ident: str, model: str, body: dict, chat: Chat, output: list, done: Finished | None,
             prompt_tokens: int) -> dict:
    """The Response object (``done`` None: still in progress)."""
    status = "in_progress" if done is None else "incomplete" if done.reason == "length" else "completed"
    new = done.new_tokens if done else 0
    return {"id": ident, "object": "response", "created_at": int(time.time()), "status": status, "model": model,
            "output": output, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": chat.parallel, "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0), "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "text": body.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "metadata": body.get("metadata") or {}, "store": False,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": new, "total_tokens": prompt_tokens + new,
                      "input_tokens_details": {"cached_tokens": done.cached_tokens if done else 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def output_items(reply: Reply) -> list[dict]:
    items = [reasoning_item(reply.reasoning)] if reply.reasoning else []
    if reply.content.strip() or not reply.calls:
        items.append(message_item(reply.content))
    return items + [call_item(c) for c in reply.calls]


async def whole(ctx, ticket, shape, ident: str, body: dict, chat: Chat) -> dict:
    reply, done = Reply(), None
    async for kind, value in pieces(ctx, ticket, shape):
        if kind == "done":
            done = value
        else:
            reply.add([(kind, value)])
    return response(ident, ctx.name, body, chat, output_items(reply), done, len(ticket.job.ids))
