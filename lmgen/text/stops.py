"""Stop strings: end generation when the text contains one, without ever printing it.

Text is released as soon as it can no longer be the start of a stop string, so
only the few characters that might still begin one are held back.
"""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None  # the stop string that ended the text (the earliest, the longest there)

    def push(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit, whether a stop string was found)."""
        self.pending += text
        hits = [(at, -len(s), s) for s in self.stops if (at := self.pending.find(s)) >= 0]
        if hits:
            at, _, self.matched = min(hits)
            emit, self.pending = self.pending[:at], ""
            return emit, True
        hold = held_back(self.pending, self.stops)
        cut = len(self.pending) - hold
        emit, self.pending = self.pending[:cut], self.pending[cut:]
        return emit, False

    def flush(self) -> str:
        """At the end of generation the held-back text is real output."""
        emit, self.pending = self.pending, ""
        return emit


def held_back(text: str, markers) -> int:
    """How many of text's last characters begin one of ``markers`` (the longest such end): what a
    stream must hold back, since it may still become a marker (a stop string, a tool call's or a
    thinking block's)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best
