"""One chat turn with tools: the conversation rendered through the model's own template (tools
and all), the calls constrained to that model's syntax, and how its reply's text splits into
reasoning, answer and calls (``Shape``).

A template that renders tools gets them as transformers passes them, and assistant turns with
``tool_calls`` whose arguments are objects. A template that knows no tools gets the fallback:
the tools described in a system message, earlier calls written into the assistant's text in the
fallback syntax, and tool results as user turns in ``<tool_response>`` tags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmgen.engine.generation import GenerationSettings
from lmgen.errors import InputError
from lmgen.text.reasoning import OPEN as THINK_OPEN
from lmgen.text.reasoning import opens_thinking
from lmgen.text.reply import Reply, ReplySplitter, split_reply
from lmgen.text.tool_calls import ToolSyntax, arguments_object, call_text, describe_tools, syntax_for


@dataclass(frozen=True)
class Shape:
    """How a reply's text splits: the tools' syntax (None: calls are not parsed) and whether the
    prompt opened a thinking block."""

    syntax: ToolSyntax | None = None
    thinking: bool = False

    def splitter(self) -> ReplySplitter:
        return ReplySplitter(self.syntax, self.thinking)

    def split(self, text: str) -> Reply:
        """A whole reply's parts, as its splitter gives them piece by piece."""
        return split_reply(text, self.syntax, self.thinking)


def _native(messages: list[dict]) -> list[dict]:
    """Messages for a template that renders tool calls: arguments as objects."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [{**c, "function": {**c["function"],
                                                        "arguments": arguments_object(c["function"]["arguments"])}}
                                     for c in m["tool_calls"]]}
        out.append(m)
    return out


def _fallback(messages: list[dict], tools: list[dict], syntax: ToolSyntax) -> list[dict]:
    """Messages for a template that knows no tools: everything as text in plain turns."""
    described = describe_tools(tools) if tools else ""
    out = []
    for m in messages:
        if m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        elif m.get("tool_calls"):
            text = call_text(m["tool_calls"], syntax)
            m = {"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + text}
        else:
            m = {"role": m["role"], "content": m["content"]}
        out.append(m)
    if described:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def prepare_chat(lm, messages: list[dict], settings: GenerationSettings, tools: list[dict] | None = None,
                 choice: str = "none", parallel: bool = True,
                 options: dict | None = None) -> tuple[str, GenerationSettings, Shape]:
    """(prompt text, settings with the calls' constraint, the reply's Shape) for a chat turn."""
    tools = tools or []
    source = lm.chat_template.source
    syntax = syntax_for(source) if tools else None
    if syntax is not None and syntax.native:
        text = lm.chat_template.render(_native(messages), tools=tools, options=options)
    else:
        text = lm.chat_template.render(_fallback(messages, tools, syntax or syntax_for("")), options=options)
    thinking = opens_thinking(text)
    if syntax is None or choice == "none":
        return text, settings, Shape(None, thinking)
    if settings.constraint is not None:
        raise InputError("a response format and tool calls cannot be asked for together (tool_choice \"none\" "
                         "allows a response format)")
    from lmgen.engine.tool_grammar import tool_constraint

    may_think = "open" if thinking else "may" if THINK_OPEN in source else "no"
    constraint = tool_constraint(tools, choice, syntax, parallel, may_think)
    return text, dataclasses.replace(settings, constraint=constraint), Shape(syntax, thinking)
