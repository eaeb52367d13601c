"""A thinking model's reasoning kept apart from its answer.

Qwen3, SmolLM3 and the DeepSeek-R1 distills think between ``<think>`` and ``</think>`` before
they answer. Some templates open the thinking in the prompt itself (the reply then starts inside
it); others leave it to the model, whose reply then starts with ``<think>``. ``ThinkingSplitter``
takes the reply piece by piece and tells reasoning from answer, holding back only what may still
become a marker.
"""

from __future__ import annotations

from lmgen.text.stops import held_back

OPEN, CLOSE = "<think>", "</think>"


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside a thinking block (its template opened one)."""
    return prompt.rfind(OPEN) > prompt.rfind(CLOSE)


class ThinkingSplitter:
    """feed(text) -> [(kind, text)] with kind "reasoning" or "content"."""

    def __init__(self, inside: bool = False):
        self.state = "thinking" if inside else "start"  # start: the reply may yet open a thinking block
        self.pending = ""
        self.state_was_thinking = False
        self.fresh = True  # the answer has not begun (blanks after </think> are dropped)

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.pending += text
        out = []
        if self.state == "start":
            head = self.pending.lstrip()
            if head.startswith(OPEN):
                self.pending, self.state = head[len(OPEN):], "thinking"
            elif OPEN.startswith(head):
                return []  # still undecided
            else:
                self.state = "content"
        if self.state == "thinking":
            at = self.pending.find(CLOSE)
            if at < 0:
                keep = held_back(self.pending, (CLOSE,))
                out.append(("reasoning", self.pending[:len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep:]
                return [p for p in out if p[1]]
            out.append(("reasoning", self.pending[:at]))
            self.pending, self.state = self.pending[at + len(CLOSE):], "content"
            self.state_was_thinking = True
        if self.state == "content" and self.pending:
            if self.fresh and self.state_was_thinking:
                self.pending = self.pending.lstrip()
            self.fresh = self.fresh and not self.pending
            out.append(("content", self.pending))
            self.pending = ""
        return [p for p in out if p[1]]

    def finish(self) -> list[tuple[str, str]]:
        kind = "reasoning" if self.state == "thinking" else "content"
        out, self.pending = ([(kind, self.pending)] if self.pending else []), ""
        return out
