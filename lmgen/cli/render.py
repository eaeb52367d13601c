"""How generation events reach the user: text, one JSON object, or JSON lines.

stdout carries the generated text (or JSON) only; anything else goes to stderr.
On a terminal text goes through rich (plain when NO_COLOR is set); in a pipe
it is plain UTF-8, flushed after every token so a reader sees the stream live.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata


def stats_line(record: dict) -> str:
    line = (
        f"prompt {record['prompt_tokens']} tokens, generated {record['new_tokens']} ({record['finish_reason']}); "
        f"time to first token {record['time_to_first_token_s'] * 1000:.0f} ms "
        f"({record['prefill_tokens_per_s']:.1f} prompt tokens/s); "
        f"decode {record['decode_tokens_per_s']:.1f} tokens/s"
    )
    if "weights_gb_per_s" in record:  # not known of a server's model
        line += f", reading weights at {record['weights_gb_per_s']:.1f} GB/s"
    if "drafted_tokens" in record:
        drafted, accepted = record["drafted_tokens"], record["accepted_tokens"]
        line += f"; lookup drafted {drafted} tokens, {accepted} accepted ({accepted / drafted:.0%})"
    if "constraint_s" in record:
        total = record["time_to_first_token_s"] + record["decode_s"]
        share = record["constraint_s"] / total if total > 0 else 0.0
        line += f"; constraint masks {record['constraint_s'] * 1000:.0f} ms ({share:.1%} of the time)"
    return line


def one_line(text: str) -> str:
    """Text with its line breaks and other control characters written as escapes (a message may
    quote the user's input): an error is always one line."""
    return "".join(c if c == "\t" or unicodedata.category(c) not in ("Cc", "Zl", "Zp")
                   else repr(c)[1:-1] if len(repr(c)) <= 6 else f"\\u{ord(c):04x}" for c in text)


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def json_line(record: dict) -> None:
    write_out(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def rich_console(stream):
    """A rich console for a terminal without NO_COLOR, else None (plain bytes)."""
    if not stream.isatty() or os.environ.get("NO_COLOR"):
        return None
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True)


def escape_line(text: str) -> str:
    """Text on one line: backslash, newline and carriage return written as \\, \n and \r."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class TextRenderer:
    """The continuation as text. One sample streams live; several are printed one after another
    when all are done (on a terminal each under a "sample N" rule). Every sample ends with one
    newline, even an empty one. With ``one_line`` (--each-line) each sample is exactly one line:
    its own line breaks are escaped, so that output line N answers input line N. A chat reply goes
    through a ``ThinkingView`` per sample (``thinking``: the --thinking mode; cli/thinking.py)."""

    def __init__(self, echo: bool, num_samples: int, tokenizer, show_probs: int, one_line: bool = False,
                 thinking: str = "show"):
        self.echo = echo
        self.one_line = one_line
        self.thinking = thinking
        self.views: list = []
        self.console = rich_console(sys.stdout)
        # Several samples are printed one after another at the end; so is one sample when its
        # probability lines go to the same terminal (stderr), which would otherwise land mid-text.
        self.buffered = num_samples > 1 or bool(show_probs and sys.stdout.isatty())
        self.buffers = [""] * num_samples
        self.prompt = ""
        self.at_line_start = True
        self.probs = ProbabilityDisplay(tokenizer) if show_probs else None

    def write(self, text: str, style: str | None = None) -> None:
        self.emit(escape_line(text) if self.one_line else text, style)

    def emit(self, text: str, style: str | None = None) -> None:
        if not text:
            return
        self.at_line_start = text.endswith("\n")  # before writing: Ctrl-C may land mid-write
        if self.console is not None:
            self.console.print(text, end="", style=style, markup=False)
            self.console.file.flush()
        else:
            write_out(text)

    def start(self, prompt: str, opened: bool | None = None) -> None:
        """A prompt's output begins; ``opened``: whether its chat prompt opened a thinking block
        (None: not a chat, the text printed as it comes)."""
        from lmgen.cli.thinking import ThinkingView

        self.prompt = prompt
        self.buffers = [""] * len(self.buffers)  # --each-line: every prompt starts afresh
        self.views = [ThinkingView("show") if opened is None else
                      ThinkingView(self.thinking, opened, styled=self.console is not None) for _ in self.buffers]
        self.at_line_start = False  # this prompt's line is open until its newline
        if self.echo and not self.buffered:
            self.write(prompt, style="bold")

    def token(self, event) -> None:
        if self.probs:
            self.probs.show(event)
        if self.buffered:
            self.buffers[event.sample] += event.text
        else:
            self.show(self.views[event.sample].feed(event.text))

    def finish(self, record: dict, tail: str) -> None:
        if not self.buffered:
            view = self.views[record["sample"]]
            self.show(view.feed(tail) + view.finish())
            self.end_line()
            return
        self.buffers[record["sample"]] += tail

    def close(self) -> None:
        """Print buffered samples in order."""
        if not self.buffered:
            return
        for i, text in enumerate(self.buffers):
            self.at_line_start = False
            if self.console is not None and len(self.buffers) > 1:
                self.console.rule(f"sample {i + 1}", style="dim")
            if self.echo:
                self.write(self.prompt, style="bold")
            self.show(self.views[i].feed(text) + self.views[i].finish())
            self.end_line()

    def show(self, pieces: list[tuple[str, bool]]) -> None:
        """A ThinkingView's pieces: the thinking dim (the view marks it only on a terminal)."""
        for text, dim in pieces:
            self.write(text, style="dim" if dim else None)

    def end_line(self) -> None:
        """Leave the cursor at the start of a line (also after Ctrl-C)."""
        if not self.at_line_start:
            self.emit("\n")


class ProbabilityDisplay:
    """--show-probs in text mode: one line per token on stderr (rich on a terminal)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.console = rich_console(sys.stderr)

    def show(self, event) -> None:
        def piece(token_id: int) -> str:
            return repr(self.tokenizer.decode([token_id], skip_special_tokens=False))

        alternatives = "  ".join(f"{piece(i)} {p:.3f}" for i, p in event.top if i != event.id)
        prefix = f"[{event.sample + 1}] " if event.sample else ""
        line = f"{prefix}{event.prob:6.3f} {piece(event.id):<16} | {alternatives}"
        if self.console is None:
            sys.stderr.write(line + "\n")
            return
        colour = "green" if event.prob >= 0.5 else "yellow" if event.prob >= 0.1 else "red"
        self.console.print(line, style=colour, markup=False)


class JsonRenderer:
    """One JSON object per sample, printed when all the prompt's samples are done, in sample order
    (they may finish in any order)."""

    def start(self, prompt: str, opened: bool | None = None) -> None:
        self.records: list[dict] = []

    def token(self, event) -> None:
        pass

    def finish(self, record: dict, tail: str) -> None:
        self.records.append(record)

    def close(self) -> None:
        for record in sorted(self.records, key=lambda r: r["sample"]):
            json_line(record)

    def end_line(self) -> None:
        pass


class JsonlRenderer(JsonRenderer):
    """One JSON line per token, then the summary line (with "event": "done").

    Text held back at the end (bytes of an unfinished character) comes in one
    "flush" line before "done", so the text fields always add up to the reply as written: the
    summary's ``text`` (a thinking chat reply's thinking block, given apart as ``reasoning``, first).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def token(self, event) -> None:
        from lmgen.engine.records import token_record

        json_line({"event": "token", "sample": event.sample, **token_record(event, self.tokenizer)})

    def finish(self, record: dict, tail: str) -> None:
        if tail:
            json_line({"event": "flush", "sample": record["sample"], "text": tail})
        json_line({"event": "done", **record})
