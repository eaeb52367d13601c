"""Tool calls as a model writes them: each family's syntax, found from its chat template, and
the calls parsed back out of its text.

A ``ToolSyntax`` is data: what opens a call, what closes it, and what a call's JSON calls its
arguments. Qwen2.5, Qwen3 and SmolLM3 write Hermes-style ``<tool_call>{…}</tool_call>``; Llama
3.x writes one bare JSON object with ``parameters``; Phi-4-mini wraps a JSON list in
``<|tool_call|>…<|/tool_call|>``; Mistral opens a list with ``[TOOL_CALLS]``. A template that
knows none of them (SmolLM2's, say) gets the fallback: the tools described in a system message
(``describe_tools``) and calls in the Hermes syntax, which its replies are parsed with.

``parse`` splits a whole reply into its text and its calls; ``CallSplitter`` does the same for a
stream, piece by piece, holding back only what may still become an opening marker.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from lmgen.text.stops import held_back


@dataclass(frozen=True)
class ToolSyntax:
    name: str
    open: str  # what starts a call ("" for a bare JSON object: the reply is the call)
    close: str  # what ends it
    arguments: str = "arguments"  # the call's key for its arguments
    listed: bool = False  # the calls are one JSON list between open and close
    native: bool = True  # the template renders tools itself (False: the fallback describes them)
    newlines: bool = False  # a call's JSON on a line of its own between open and close

    def write(self, body: str) -> str:
        """A call's (or a list's) JSON text as the model writes it."""
        gap = "\n" if self.newlines else ""
        return self.open + gap + body + gap + self.close


HERMES = ToolSyntax("hermes", "<tool_call>", "</tool_call>", newlines=True)
SYNTAXES = {
    "hermes": HERMES,
    "llama3": ToolSyntax("llama3", "", "", arguments="parameters"),
    "phi4": ToolSyntax("phi4", "<|tool_call|>", "<|/tool_call|>", listed=True),
    "mistral": ToolSyntax("mistral", "[TOOL_CALLS]", "", listed=True),
    "fallback": ToolSyntax("fallback", "<tool_call>", "</tool_call>", native=False, newlines=True),
}
MARKERS = (("<tool_call>", "hermes"), ("<|tool_call|>", "phi4"), ("[TOOL_CALLS]", "mistral"),
           ("<|python_tag|>", "llama3"))


def syntax_for(template: str) -> ToolSyntax:
    """The tool-call syntax a chat template's model was trained on (the fallback when the
    template shows none)."""
    for marker, name in MARKERS:
        if marker in template:
            return SYNTAXES[name]
    if "<|start_header_id|>" in template and "tools" in template:  # Llama 3.2's JSON calls
        return SYNTAXES["llama3"]
    return SYNTAXES["fallback"]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object's text, as OpenAI's ``function.arguments``
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def openai(self, index: int | None = None) -> dict:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def describe_tools(tools: list[dict]) -> str:
    """The fallback's system message: the tools' signatures and how to call them."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You may call one or more functions to assist with the user query. The functions are:\n"
            f"<tools>\n{listed}\n</tools>\nTo call a function, reply with its name and arguments as JSON "
            'between <tool_call> and </tool_call>:\n<tool_call>\n{"name": <function-name>, '
            '"arguments": <args-json-object>}\n</tool_call>')


def call_text(calls: list[dict], syntax: ToolSyntax) -> str:
    """An assistant turn's calls (OpenAI's ``tool_calls``) as the model writes them, for a
    template that cannot render them itself."""
    objects = [{"name": c["function"]["name"], syntax.arguments: arguments_object(c["function"].get("arguments"))}
               for c in calls]
    if syntax.listed:
        return syntax.write(json.dumps(objects, ensure_ascii=False))
    return "\n".join(syntax.write(json.dumps(o, ensure_ascii=False)) for o in objects)


def arguments_object(arguments) -> dict:
    """A call's arguments as an object, as templates take them (OpenAI sends a JSON string)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return {}
    return arguments if isinstance(arguments, dict) else {}


def _calls_in(body: str, syntax: ToolSyntax) -> list[ToolCall] | None:
    """The calls in one call's text (or a list's), None if it is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get(syntax.arguments, item.get("arguments", {}))
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls


def parse(text: str, syntax: ToolSyntax) -> tuple[str, list[ToolCall]]:
    """(the reply's text, its calls). Text that only looks like a call stays text."""
    splitter = CallSplitter(syntax)
    pieces = splitter.feed(text) + splitter.finish()
    return "".join(p for p in pieces if isinstance(p, str)), [c for p in pieces if isinstance(p, list) for c in p]


class CallSplitter:
    """A reply's text, piece by piece, split into text (str) and calls (a list of ToolCall each
    time a call is complete)."""

    def __init__(self, syntax: ToolSyntax):
        self.syntax = syntax
        self.pending = ""  # text that may still be (or is) a call
        self.inside = False  # (marked syntaxes) inside a call
        self.bare: str | None = None  # (a bare JSON syntax) "call" or "text", once a non-blank is seen
        self.after_call = False  # a call just ended

    def feed(self, text: str) -> list:
        self.pending += text
        return self._bare() if not self.syntax.open else self._marked()

    def finish(self) -> list:
        out = []
        if self.pending and not self.syntax.open:
            calls = _calls_in(self.pending, self.syntax)
            out.append(calls if calls else self.pending)
        elif self.inside and not self.syntax.close:  # [TOOL_CALLS][…] runs to the end
            calls = _calls_in(self.pending[len(self.syntax.open):], self.syntax)
            out.append(calls if calls else self.pending)
        elif self.pending:
            out.append(self.pending)
        self.pending = ""
        return [p for p in out if p]

    def _bare(self) -> list:
        """Llama 3's JSON call is the whole reply: a reply that starts otherwise is text at once
        (blanks first leave it undecided)."""
        if self.bare is None and self.pending.strip():
            self.bare = "call" if self.pending.lstrip().startswith("{") else "text"
        if self.bare != "text":
            return []
        out, self.pending = self.pending, ""
        return [out] if out else []

    def _marked(self) -> list:
        out, syntax = [], self.syntax
        while self.pending:
            if self.after_call:  # the line break after a call is the syntax's, not text
                self.pending, self.after_call = self.pending[1:] if self.pending[0] == "\n" else self.pending, False
                continue
            if not self.inside:
                at = self.pending.find(syntax.open)
                if at < 0:
                    keep = held_back(self.pending, (syntax.open,))
                    text, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
                    out.append(text)
                    break
                out.append(self.pending[:at])
                self.pending, self.inside = self.pending[at:], True
            if not syntax.close:
                break
            end = self.pending.find(syntax.close, len(syntax.open))
            if end < 0:
                break
            body = self.pending[len(syntax.open):end]
            calls = _calls_in(body, syntax)
            out.append(calls if calls else self.pending[:end + len(syntax.close)])
            self.pending, self.inside, self.after_call = self.pending[end + len(syntax.close):], False, bool(calls)
        return [p for p in out if p]

