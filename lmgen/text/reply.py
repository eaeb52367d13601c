"""A chat reply's parts: reasoning, answer text and tool calls, split from the model's text as a
whole (``split_reply``) or as it streams (``ReplySplitter``), the same way both times."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmgen.text.reasoning import ThinkingSplitter
from lmgen.text.tool_calls import CallSplitter, ToolCall, ToolSyntax


@dataclass
class Reply:
    content: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def add(self, pieces: list[tuple[str, object]]) -> None:
        for kind, value in pieces:
            if kind == "calls":
                self.calls.extend(value)
            elif kind == "reasoning":
                self.reasoning += value
            else:
                self.content += value


class ReplySplitter:
    """feed(text) -> [(kind, value)]: ("reasoning", str), ("content", str) or ("calls", [ToolCall]).
    ``syntax``: the tools' (None: no tools, all text is content); ``thinking``: the prompt opened a
    thinking block."""

    def __init__(self, syntax: ToolSyntax | None = None, thinking: bool = False):
        self.thinking = ThinkingSplitter(thinking)
        self.calls = CallSplitter(syntax) if syntax is not None else None
        self.blank = ""  # answer text that is only blanks so far: dropped if calls are all there is
        self.called = False

    def feed(self, text: str) -> list[tuple[str, object]]:
        return self._route(self.thinking.feed(text), final=False)

    def finish(self) -> list[tuple[str, object]]:
        return self._route(self.thinking.finish(), final=True)

    @property
    def held(self) -> int:
        """Characters fed and not yet given out, without tools: the end of the text fed so far,
        which may still become a marker (or is blank answer text waiting for more)."""
        return len(self.thinking.pending) + len(self.blank)

    def _route(self, pieces, final: bool) -> list[tuple[str, object]]:
        out = []
        for kind, text in pieces:
            if kind == "content" and self.calls is not None:
                out += [("calls", p) if isinstance(p, list) else ("content", p) for p in self.calls.feed(text)]
            else:
                out.append((kind, text))
        if final and self.calls is not None:
            out += [("calls", p) if isinstance(p, list) else ("content", p) for p in self.calls.finish()]
        return self._hold_blanks(out, final)

    def _hold_blanks(self, pieces, final: bool) -> list[tuple[str, object]]:
        """Blank answer text waits until text follows it (then it goes out first) or the reply
        ends (then it goes out unless the reply made calls)."""
        out = []
        for kind, value in pieces:
            if kind == "content" and not (self.blank + value).strip():
                self.blank += value
                continue
            if kind == "content" and self.blank:
                value, self.blank = self.blank + value, ""
            self.called = self.called or kind == "calls"
            out.append((kind, value))
        if final and self.blank and not self.called:
            out.append(("content", self.blank))
        if final:
            self.blank = ""
        return out


def split_reply(text: str, syntax: ToolSyntax | None = None, thinking: bool = False) -> Reply:
    splitter, reply = ReplySplitter(syntax, thinking), Reply()
    reply.add(splitter.feed(text) + splitter.finish())
    return reply
