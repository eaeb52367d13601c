"""The read–reply loop of ``lmgen chat``: on a terminal, a prompt with line editing and history
(the standard ``readline``), replies streamed as they are generated; from a pipe, one user turn
per line in and one reply per line out (or one JSON object per reply with ``--jsonl``).

The conversation itself — templates, the KV cache kept between turns, dropping old exchanges —
is ``lmgen.engine.conversation``; this module reads, prints and runs the slash commands.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from lmgen.cli.render import escape_line, json_line, one_line, rich_console, stats_line, write_out
from lmgen.cli.thinking import ThinkingView, print_pieces
from lmgen.engine.events import Finished, Token
from lmgen.engine.records import reasoning_apart, summary
from lmgen.errors import InputError, LmgenError
from lmgen.formats.files import not_special
from lmgen.formats.home import cache_dir
from lmgen.text.utf8 import BOM, utf8_text

HELP = """\
/help            this list
/reset           start a new conversation (the system message stays)
/system TEXT     set the system message (/system alone removes it)
/save FILE       write the conversation as JSON messages
/load FILE       read a conversation written by /save (or any JSON list of messages)
/undo            drop the last exchange
/stats           timings of the last reply
/exit            leave (so do Ctrl-D, and Ctrl-C at an empty prompt)
A line ending in \\ continues on the next; \"\"\" on a line of its own opens and closes a block.
Ctrl-C during a reply stops it; what was said stays, marked as cut."""
BLOCK = '"""'


def note(text: str) -> None:
    """A line on stderr: dim on a terminal (without NO_COLOR), plain elsewhere."""
    console = rich_console(sys.stderr)
    if console is None:
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()
    else:
        console.print(text, style="dim", markup=False)


class Session:
    """A conversation (``engine.conversation.Conversation``, or ``cli.remote_chat``'s from a server)
    with its slash commands and the record of its last reply. ``thinking``: the --thinking mode
    (cli/thinking.py), how a thinking model's replies are shown."""

    def __init__(self, conversation, stats: bool, bytes_per_token: int = 0, thinking: str = "show"):
        self.conversation, self.stats, self.thinking = conversation, stats, thinking
        self.bytes_per_token = bytes_per_token  # the model's weights read per token (0: unknown, on a server)
        self.record: dict | None = None  # the last reply's, if it finished and is still in the conversation
        self.last = "(no reply yet)"  # what /stats says when there is no such record

    def command(self, line: str) -> bool:
        """Run a slash command; False when it asks to leave."""
        name, _, arg = line[1:].partition(" ")
        conv, arg = self.conversation, arg.strip()
        try:
            if name in ("exit", "quit"):
                return False
            elif name == "help":
                note(HELP)
            elif name == "reset":
                conv.reset()
                self.record, self.last = None, "(a new conversation: no reply yet)"
                note("(a new conversation)")
            elif name == "system":
                conv.set_system(arg)
                note("(system message set)" if arg else "(system message removed)")
            elif name in ("save", "load") and not arg:
                note(f"/{name} needs a file name")
            elif name == "save":
                save_conversation(conv, Path(arg))
                note(f"(saved {len(conv.messages)} messages to {arg})")
            elif name == "load":
                conv.load(Path(arg))
                self.record, self.last = None, "(no reply since /load)"
                note(f"(loaded {len(conv.messages)} messages from {arg})")
            elif name == "undo":
                undone = conv.undo()
                if undone:
                    self.record, self.last = None, "(the last reply was undone: no reply since)"
                note("(dropped the last exchange)" if undone else "(nothing to undo)")
            elif name == "stats":
                note(self.stats_text() if self.record else self.last)
            else:
                note(f"unknown command /{name}; /help lists them")
        except (LmgenError, OSError) as exc:  # a bad file: say so, and the session goes on
            note(f"lmgen: error: {one_line(str(exc))}")
        return True

    def reply(self, user: str, show, styled: bool = False) -> dict | None:
        """Generate the reply to ``user``, passing what to print of it to ``show`` as it comes, in
        ThinkingView pieces [(text, dim)] (``styled``: on a terminal with colour); its record."""
        events = self.conversation.reply(user)
        before = self.record, self.last
        self.record, self.last = None, "(the last reply was cut: no timings)"
        view = None
        try:
            for event in events:
                if view is None:  # the turn's prompt is rendered by now: whether it opened a thinking block
                    opened = getattr(self.conversation, "thinking", False)
                    view = ThinkingView(self.thinking, opened, styled)
                if isinstance(event, Token):
                    show(view.feed(event.text))
                elif isinstance(event, Finished):
                    show(view.feed(event.text) + view.finish())
                    self.record = reasoning_apart(summary(user, event, self.bytes_per_token), opened)
                    if not self.bytes_per_token:  # a server's model: what it reads is not known here
                        del self.record["weights_gb_per_s"]
                    self.record.update(turn=self.turns(), reused_tokens=self.conversation.reused,
                                       prefilled_tokens=self.conversation.prefilled)
        except InputError:  # the message was not taken: the conversation, and its last reply, are as they were
            self.record, self.last = before
            raise
        finally:
            events.close()  # on Ctrl-C: the reply so far joins the history, marked as cut
        if self.conversation.dropped:
            note(f"lmgen: note: dropped the {self.conversation.dropped} oldest exchange(s) to fit the context window")
        if self.stats and self.record is not None:
            note(self.stats_text())
        return self.record

    def turns(self) -> int:
        return sum(m["role"] == "user" for m in self.conversation.messages)

    def stats_text(self) -> str:
        r = self.record
        return f"{stats_line(r)}; {r['reused_tokens']} tokens reused from the cache, {r['prefilled_tokens']} prefilled"


def save_conversation(conversation, path: Path) -> None:
    """/save FILE, written aside and renamed into place (``staged_file``): a failure leaves an
    earlier FILE whole, and a FIFO or a device named there is refused, never written or replaced.
    Its directory must exist (a typo in it is an error, not a new directory)."""
    from lmgen.formats.files import staged_file

    with staged_file(path, force=True, parents=False) as stage:
        conversation.save(stage)


def run_chat(conversation, jsonl: bool, stats: bool, bytes_per_token: int = 0, thinking: str = "show") -> None:
    if sys.stdin is None:
        raise InputError("chat reads messages from stdin, and stdin is closed")
    session = Session(conversation, stats, bytes_per_token, thinking)
    if sys.stdin.isatty():
        interactive(session)
    else:
        piped(session, jsonl)


def piped(session: Session, jsonl: bool) -> None:
    """One user turn per non-empty line; one reply per line (its line breaks escaped) or JSON
    object. A line that cannot be answered (not UTF-8, too long for the context) is one error line
    on stderr and an empty reply (``{"line": N, "error": …}`` with --jsonl); the session goes on,
    and ends with exit 2."""
    refused = 0
    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n").removeprefix(BOM if number == 1 else "")
            if not line.strip():
                continue
            if line.startswith("/"):
                if not session.command(line):
                    break
                continue
            pieces: list[str] = []
            record = session.reply(line, lambda shown, kept=pieces: kept.extend(text for text, _ in shown))
        except (UnicodeDecodeError, InputError) as exc:
            refused += 1
            message = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            note(f"lmgen: error: stdin line {number}: {one_line(message)}")
            json_line({"line": number, "error": message}) if jsonl else write_out("\n")
            continue
        if jsonl:
            json_line(record)
        else:
            write_out(escape_line("".join(pieces)) + "\n")
    if refused:
        raise InputError(f"{refused} message(s) could not be answered (each named above)")


def interactive(session: Session) -> None:
    history = _start_readline()
    console = rich_console(sys.stdout)
    show = functools.partial(print_pieces, write=write_out, console=console)  # the thinking dim with colour
    note("lmgen chat: /help for commands, Ctrl-D to leave")
    try:
        while True:
            text = read_message()
            if text is None:
                return
            if not text.strip():
                continue
            if text.startswith("/"):
                if not session.command(text.strip()):
                    return
                continue
            try:
                session.reply(utf8_text(text, "the message"), show, styled=console is not None)
                write_out("\n")
            except InputError as exc:  # this message cannot be answered; the session goes on
                note(f"lmgen: error: {one_line(str(exc))}")
            except KeyboardInterrupt:
                write_out("\n")
                note("(reply cut)")
    finally:
        _save_history(history)


def read_message() -> str | None:
    """One message from the terminal (None: leave). A trailing backslash continues the line; a
    line of three double quotes opens a block that another closes."""
    lines: list[str] = []
    block = False
    while True:
        try:
            line = input("... " if lines or block else ">>> ")
        except EOFError:
            write_out("\n")
            return None
        except KeyboardInterrupt:  # at an empty prompt: leave; with text typed: drop it
            write_out("\n")
            if lines or block or _line_buffer():
                return ""
            return None
        if line.strip() == BLOCK:
            if block:
                return "\n".join(lines)
            block = True
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
        else:
            return "\n".join([*lines, line])


def _line_buffer() -> str:
    try:
        import readline

        return readline.get_line_buffer()
    except ImportError:
        return ""


def _start_readline() -> Path | None:
    """Line editing and a history (where readline exists) kept in $LMGEN_CHAT_HISTORY, else in
    lmgen's cache ("" keeps none; ``chat_history``). With NO_COLOR or a dumb terminal
    readline writes no escape codes of its own (bracketed paste)."""
    try:
        import readline
    except ImportError:
        return None
    import os


    if os.environ.get("NO_COLOR") or os.environ.get("TERM") in (None, "", "dumb"):
        readline.parse_and_bind("set enable-bracketed-paste off")
    path = chat_history()
    if path is None:
        return None
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


def _save_history(path: Path | None) -> None:
    """The history written aside and renamed into place (``staged_file``: never over a FIFO or a
    device, which is one error line). A cache that cannot be written is no error: history is a
    convenience."""
    if path is None:
        return
    import readline

    from lmgen.errors import EnvironmentFailure
    from lmgen.formats.files import staged_file

    try:
        with staged_file(path, force=True) as stage:
            readline.write_history_file(stage)
    except (EnvironmentFailure, OSError):
        pass


def chat_history() -> Path | None:
    """Where ``chat`` keeps its readline history: $LMGEN_CHAT_HISTORY, else lmgen's cache; None
    when the variable is set to "" (keep none). A path that exists and is not a regular file is
    refused (reading a FIFO would hang, and writing one would replace it)."""
    text = os.environ.get("LMGEN_CHAT_HISTORY")
    if text == "":
        return None
    path = Path(text) if text is not None else cache_dir() / "chat_history"
    try:
        not_special(path)
    except InputError as exc:
        raise InputError(f"LMGEN_CHAT_HISTORY: {exc} (set it to a file's path, or to \"\" to keep no history)") \
            from None
    return path
