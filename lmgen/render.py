"""How generation events reach the user: text, one JSON object, or JSON lines.

stdout carries the generated text (or JSON) only; anything else goes to stderr.
On a terminal text goes through rich (plain when NO_COLOR is set); in a pipe
it is plain UTF-8, flushed after every token so a reader sees the stream live.
"""

from __future__ import annotations

import json
import os
import sys


def summary(prompt: str, token_ids: list[int], text: str, done) -> dict:
    """The closing record of one generation, for --json and --jsonl."""
    decode_tokens = max(done.new_tokens - 1, 0)
    return {
        "prompt": prompt,
        "text": text,
        "token_ids": token_ids,
        "finish_reason": done.reason,
        "prompt_tokens": done.prompt_tokens,
        "new_tokens": done.new_tokens,
        "time_to_first_token_s": round(done.prefill_seconds, 6),
        "decode_s": round(done.decode_seconds, 6),
        "prefill_tokens_per_s": _rate(done.prompt_tokens, done.prefill_seconds),
        "decode_tokens_per_s": _rate(decode_tokens, done.decode_seconds),
    }


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3) if seconds > 0 and count > 0 else 0.0


def stats_line(record: dict) -> str:
    return (
        f"prompt {record['prompt_tokens']} tokens, generated {record['new_tokens']} ({record['finish_reason']}); "
        f"time to first token {record['time_to_first_token_s'] * 1000:.0f} ms "
        f"({record['prefill_tokens_per_s']:.1f} prompt tokens/s); "
        f"decode {record['decode_tokens_per_s']:.1f} tokens/s"
    )


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def json_line(record: dict) -> None:
    write_out(json.dumps(record, ensure_ascii=False) + "\n")


class TextRenderer:
    """The continuation as text: rich on a terminal, plain flushed bytes in a pipe."""

    def __init__(self, echo: bool):
        self.echo = echo
        self.console = None
        if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
            from rich.console import Console

            self.console = Console(highlight=False, soft_wrap=True)
        self.at_line_start = True

    def write(self, text: str, style: str | None = None) -> None:
        if not text:
            return
        if self.console is not None:
            self.console.print(text, end="", style=style, markup=False)
            self.console.file.flush()
        else:
            write_out(text)
        self.at_line_start = text.endswith("\n")

    def start(self, prompt: str) -> None:
        if self.echo:
            self.write(prompt, style="bold")

    def token(self, event) -> None:
        self.write(event.text)

    def finish(self, record: dict, tail: str) -> None:
        self.write(tail)
        self.end_line()

    def end_line(self) -> None:
        """Leave the cursor at the start of a line (also after Ctrl-C)."""
        if not self.at_line_start:
            self.write("\n")


class JsonRenderer:
    """One JSON object per generation, printed when it is finished."""

    def start(self, prompt: str) -> None:
        pass

    def token(self, event) -> None:
        pass

    def finish(self, record: dict, tail: str) -> None:
        json_line(record)

    def end_line(self) -> None:
        pass


class JsonlRenderer(JsonRenderer):
    """One JSON line per token, then the summary line (with "event": "done").

    Text held back at the end (bytes of an unfinished character) comes in one
    "flush" line before "done", so the text fields always add up to the summary.
    """

    def token(self, event) -> None:
        json_line({"event": "token", "id": event.id, "text": event.text})

    def finish(self, record: dict, tail: str) -> None:
        if tail:
            json_line({"event": "flush", "text": tail})
        json_line({"event": "done", **record})
