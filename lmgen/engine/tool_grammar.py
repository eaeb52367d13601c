"""Tool calls that always parse: a request's tools and ``tool_choice`` as a grammar over the
model's own call syntax, enforced token by token (llguidance, as every other constraint).

Each call is JSON that a schema checks: its ``name`` one of the tools', its arguments that
tool's ``parameters`` (so never invalid JSON, never a required field missing). ``required`` (or a
named function): the whole reply is calls. ``auto``: free text that never opens a call, or text
up to the syntax's opening marker and calls from there on. A thinking model may think first
(``<think>…</think>``), as its template lets it; a prompt that opened the thinking block makes
the reply finish it first.
"""

from __future__ import annotations

import json
import re

from lmgen.engine.constraint import JSON_OPTIONS, Constraint
from lmgen.text.reasoning import CLOSE as THINK_CLOSE
from lmgen.text.reasoning import OPEN as THINK_OPEN
from lmgen.text.tool_calls import ToolSyntax

ANY = "(?s:.*)"


def tool_constraint(tools: list[dict], choice: str, syntax: ToolSyntax, parallel: bool = True,
                    thinking: str = "no") -> Constraint:
    """The grammar for a request's calls. ``tools``: OpenAI's function tools; ``choice``:
    "auto", "required" or a tool's name; ``thinking``: "no", "may" (the reply may open a thinking
    block) or "open" (the prompt opened one)."""
    named = [t for t in tools if choice in ("auto", "required") or t["function"]["name"] == choice]
    call = _call_schema(named, syntax)
    body = f'%json {json.dumps(call, ensure_ascii=False)}'
    if syntax.listed:
        listed = {"type": "array", "items": call, "minItems": 1, **({} if parallel else {"maxItems": 1}),
                  "x-guidance": JSON_OPTIONS}
        body = f'%json {json.dumps(listed, ensure_ascii=False)}'
    rules = [f"body: {body}"]
    if not syntax.open:  # a bare JSON object: the whole reply
        calls, lead = "body", None
    else:
        gap = "\\n" if syntax.newlines else ""
        opening = _literal(syntax.open + ("\n" if gap else ""))
        closing = _literal(("\n" if gap else "") + syntax.close) if syntax.close else ""
        more = f' ("\\n" {opening} body {closing})*' if parallel and not syntax.listed else ""
        calls = f"{opening} body {closing}{more}".strip()
        lead = f"lead body {closing}{more}".strip()
        rules.append(f"lead[lazy]: /{ANY}{_regex(syntax.open)}{gap}/")
    if choice == "auto":
        rules.append(f"TEXT: {_text_pattern(syntax)}")
        start = f"TEXT | {lead}" if lead else "TEXT | body"
    else:
        start = calls
    rules.insert(0, f"start: {_thinking(thinking, rules)}({start})")
    return Constraint("grammar", "\n".join(rules) + "\n")


def _call_schema(tools: list[dict], syntax: ToolSyntax) -> dict:
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 syntax.arguments: t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", syntax.arguments], "additionalProperties": False} for t in tools]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_OPTIONS}


def _text_pattern(syntax: ToolSyntax) -> str:
    """A reply with no call: any text that never opens one (a bare-JSON syntax: any text that
    does not begin with '{')."""
    if not syntax.open:
        return r"/[ \t\n]*[^{ \t\n]" + ANY + "/"
    return f"/(?s:.+)/ & ~/{ANY}{_regex(syntax.open)}{ANY}/"


def _thinking(thinking: str, rules: list[str]) -> str:
    if thinking == "no":
        return ""
    opened = "" if thinking == "open" else _regex(THINK_OPEN)
    rules.append(f"think[lazy]: /[ \\t\\n]*{opened}{ANY}{_regex(THINK_CLOSE)}/")
    rules.append("GAP: /[ \\t\\n]{1,4}/")
    return "think GAP? " if thinking == "open" else "(think GAP?)? "


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _regex(text: str) -> str:
    return re.escape(text).replace("/", "\\/")
