"""``--thinking show|hide|only``: a thinking model's reply on the command line, as it streams.

The reply is split by ``lmgen.text.reply.ReplySplitter`` (what the server's ``reasoning_content``
comes from), fed piece by piece, holding back only what may still become a marker:

- ``show`` (the default) prints the reply as the model wrote it. On a terminal with colour the
  thinking block (its markers too) is dim and the answer plain; to a pipe, or with ``NO_COLOR``,
  the text is as it came, without one escape code: dimming is all a terminal adds.
- ``hide`` prints only the answer; ``only`` only the reasoning (what ``split_reply`` gives).

Records (``--json``, ``--jsonl``) always carry both apart (``records.reasoning_apart``), whatever
the mode: it changes only what is printed for a person.
"""

from __future__ import annotations

from lmgen.errors import InputError
from lmgen.text.reasoning import CLOSE, OPEN
from lmgen.text.reply import ReplySplitter

MODES = ("show", "hide", "only")


def thinking_mode(value: str | None) -> str:
    """The --thinking value, checked (None: the default, show)."""
    if value is None:
        return "show"
    if value not in MODES:
        raise InputError(f"--thinking must be one of {', '.join(MODES)}, got {value!r}")
    return value


class ThinkingView:
    """One reply's text in, what to print out: ``feed(text)`` and ``finish()`` -> [(text, dim)].
    ``opened``: the prompt opened the thinking block (the reply starts inside it); ``styled``:
    the output is a terminal that takes escape codes (only ``show`` uses it)."""

    def __init__(self, mode: str = "show", opened: bool = False, styled: bool = False):
        self.mode = mode
        # show without styling passes the text through as it came: nothing to split
        self.splitter = ReplySplitter(None, opened) if mode != "show" or styled else None
        self.unprinted = ""  # show, styled: text fed and not yet printed (held back by the splitter)

    def feed(self, text: str) -> list[tuple[str, bool]]:
        if self.splitter is None:
            return [(text, False)] if text else []
        return self._view(text, self.splitter.feed(text), final=False)

    def finish(self) -> list[tuple[str, bool]]:
        if self.splitter is None:
            return []
        return self._view("", self.splitter.finish(), final=True)

    def _view(self, text: str, pieces, final: bool) -> list[tuple[str, bool]]:
        if self.mode != "show":
            wanted = "reasoning" if self.mode == "only" else "content"
            shown = "".join(value for kind, value in pieces if kind == wanted)
            return [(shown, False)] if shown else []
        # The text the splitter has decided on goes out as it came: the answer it released is
        # that text's end (answer text is never altered, only blanks before it dropped), and
        # everything before it is the thinking block, markers and all.
        self.unprinted += text
        ready = len(self.unprinted) if final else max(len(self.unprinted) - self.splitter.held, 0)
        out, self.unprinted = self.unprinted[:ready], self.unprinted[ready:]
        answer = min(sum(len(value) for kind, value in pieces if kind == "content"), len(out))
        return [(part, dim) for part, dim in ((out[:len(out) - answer], True), (out[len(out) - answer:], False))
                if part]


class AsWritten:
    """A server's reply, its reasoning apart (``reasoning_content``) from its answer (``content``),
    back into one text as a thinking model writes it: the reasoning in a ``<think>`` block, then
    the answer — which a ReplySplitter splits back into the same two parts. Call it with each
    chunk's (reasoning, content); it returns that chunk's text."""

    def __init__(self):
        self.inside = False  # a <think> block is open

    def __call__(self, reasoning: str, content: str) -> str:
        text = ""
        if reasoning:
            text, self.inside = ("" if self.inside else OPEN) + reasoning, True
        if content and self.inside:
            text, self.inside = text + CLOSE + "\n\n", False
        return text + content


def print_pieces(pieces, write, console=None) -> None:
    """Print a view's pieces: with ``console`` (rich, on a terminal) the thinking dim, else each
    through ``write`` as plain text."""
    for text, dim in pieces:
        if console is None:
            write(text)
        else:
            console.print(text, end="", style="dim" if dim else None, markup=False)
            console.file.flush()
