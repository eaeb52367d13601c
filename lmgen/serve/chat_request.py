"""A chat request's conversation and tools, as every API the server speaks hands them over:
OpenAI's chat messages (with ``tool_calls`` and ``tool`` results), the tools and ``tool_choice``,
and the template's own variables. The Responses and Messages adapters build the same ``Chat``
from their own shapes, so that one path renders, constrains and parses them all (``turns``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmgen.serve.openai_api import APIError

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_TOOLS = 128


@dataclass
class Chat:
    messages: list[dict]  # {"role", "content": str, and "tool_calls" / "tool_call_id" / "name" where given}
    tools: list[dict] = field(default_factory=list)  # OpenAI's function tools: {"type": "function", "function": {...}}
    choice: str = "auto"  # "none", "auto", "required" or a tool's name
    parallel: bool = False  # more than one call in a reply
    options: dict = field(default_factory=dict)  # the template's variables (chat_template_kwargs)


def _text(content, where: str) -> str:
    """A message's content: a string, a list of text parts (joined), or null (an assistant turn
    that only called tools)."""
    if content is None:
        return ""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
                   and isinstance(p.get("text"), str) for p in content):
            raise APIError(400, f"{where}.content parts must be text parts", "messages")
        return "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise APIError(400, f"{where}.content must be a string, a list of text parts or null", "messages")
    return content


def _tool_calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            and isinstance(c["function"].get("arguments", ""), (str, dict)) for c in calls):
        raise APIError(400, f"{where}.tool_calls must be a list of {{id, type, function: {{name, arguments}}}}",
                       "messages")
    return [{"id": str(c.get("id", "")), "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"].get("arguments", "")}}
            for c in calls]


def chat_messages(body: dict) -> list[dict]:
    """OpenAI's chat messages, checked, as templates take them."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(400, f"{where} must have a role: system, user, assistant or tool", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        entry = {"role": role, "content": _text(message.get("content"), where)}
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = _tool_calls(message["tool_calls"], where)
        if role == "tool":
            ident = message.get("tool_call_id")
            if not isinstance(ident, str):
                raise APIError(400, f"{where}.tool_call_id must be a string", "messages")
            entry["tool_call_id"] = ident
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        out.append(entry)
    return out


def check_tools(tools) -> list[dict]:
    """OpenAI's ``tools``: function tools with a name and (optionally) JSON-schema parameters."""
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise APIError(400, f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or name in names:
            raise APIError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}} "
                                "with a name of its own", "tools")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise APIError(400, f"tools[{i}].function.parameters must be a JSON schema object", "tools")
        names.add(name)
    return tools


def check_choice(choice, tools: list[dict]) -> str:
    """``tool_choice``: "none", "auto", "required" or {"type": "function", "function": {"name"}}
    (default: "auto" with tools, "none" without)."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, dict):
        function = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        choice = function.get("name")
        if not isinstance(choice, str) or choice in ("none", "auto", "required"):
            raise APIError(400, "'tool_choice' must name a function: {\"type\": \"function\", "
                                "\"function\": {\"name\": …}}", "tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise APIError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or a named function",
                       "tool_choice")
    if choice != "none" and not tools:
        raise APIError(400, f"'tool_choice' {choice!r} needs 'tools'", "tool_choice")
    if choice not in ("none", "auto", "required") and choice not in {t["function"]["name"] for t in tools}:
        raise APIError(400, f"'tool_choice' names {choice!r}, which is not one of the tools", "tool_choice")
    return choice


def template_options(body: dict) -> dict:
    options = body.get("chat_template_kwargs") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs")
    return options


def chat_of(body: dict) -> Chat:
    """The conversation and tools of an OpenAI chat completions request."""
    if body.get("functions") not in (None, []):
        raise APIError(400, "'functions' is OpenAI's old form: give 'tools' instead", "functions")
    tools = check_tools(body.get("tools"))
    parallel = body.get("parallel_tool_calls", False)  # as llama-server: a small model would call on and on
    if not isinstance(parallel, bool):
        raise APIError(400, "'parallel_tool_calls' must be true or false", "parallel_tool_calls")
    return Chat(chat_messages(body), tools, check_choice(body.get("tool_choice"), tools), parallel,
                template_options(body))
