"""What the command line shows and does around the work: freeze the imports out of the garbage
collector's way, a spinner on a terminal from the process's start until the weights are loaded,
and a progress bar of the prompts done with --each-line."""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

MODEL_COMMANDS = ("batch", "chat", "generate", "score", "serve")  # those that import torch and load a model
FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots", as the loading status shows them


def freeze_imports() -> None:
    """Exempt everything imported so far (torch: over a million objects) from garbage collection.

    Otherwise the first full collection, which model loading triggers, walks them all: 0.1 s
    before the first token. Nothing imported is ever garbage, so nothing is lost.
    """
    import gc

    gc.freeze()


class EarlySpinner:
    """The spinner of a process's first seconds (importing torch, reading the model's config),
    before rich is imported: frames written straight to stderr's descriptor, erased with spaces
    (no escape codes). Stopped (``stop_early``) before anything else is shown."""

    def __init__(self, text: str, delay: float):
        self.text, self.delay, self.shown = text, delay, False
        self.stopped, self.lock = threading.Event(), threading.Lock()
        threading.Thread(target=self._spin, daemon=True, name="lmgen-spinner").start()

    def _spin(self) -> None:
        frame = 0
        while not self.stopped.wait(self.delay if frame == 0 else 0.08):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.shown = _write(f"\r{FRAMES[frame % len(FRAMES)]} {self.text}") or self.shown
            frame += 1

    def stop(self) -> bool:
        """Stop and erase it; whether it was ever shown."""
        with self.lock:
            self.stopped.set()
            if self.shown:
                _write("\r" + " " * (len(self.text) + 2) + "\r")
        return self.shown


def _write(text: str) -> bool:
    try:
        os.write(2, text.encode("utf-8"))
        return True
    except OSError:
        return False


_early: EarlySpinner | None = None
_handed_over = False  # the early spinner was showing when it stopped: the next status starts at once


def start_early(argv: list[str]) -> None:
    """From the process's start, on a terminal (not a dumb one), for a command that loads a model
    here (not --help, --version or --server): the loading spinner, after the usual delay."""
    global _early
    command = next((a for a in argv if not a.startswith("-")), None)
    remote = "--server" in argv or any(a.startswith("--server=") for a in argv) or os.environ.get("LMGEN_SERVER")
    if command not in MODEL_COMMANDS or remote or {"--help", "--version"} & set(argv):
        return
    if not sys.stderr.isatty() or os.environ.get("TERM", "") in ("dumb", "unknown"):
        return
    try:
        delay = spinner_delay()
    except Exception:  # a bad value is refused, one line, once the command reads it
        return
    _early = EarlySpinner("loading model…", delay)


def stop_early() -> None:
    """The early spinner stopped and erased (once the model's config is read, or the command ends)."""
    global _early, _handed_over
    if _early is not None:
        _handed_over = _early.stop()
        _early = None


class status:
    """A spinner with ``text`` on stderr while work goes on, if stderr is a terminal and the work
    takes longer than ``delay`` seconds (default $LMGEN_SPINNER_DELAY, else 0.5; at once where
    the early spinner was showing, so that it goes on without a gap)."""

    def __init__(self, text: str, delay: float | None = None):
        global _handed_over
        stop_early()
        self.text = text
        self.delay = 0.0 if _handed_over else spinner_delay() if delay is None else delay
        _handed_over = False

    def __enter__(self):
        self.timer = None
        if sys.stderr.isatty():
            import threading

            from rich.console import Console

            self.status = Console(stderr=True).status(self.text)
            self.timer = threading.Timer(self.delay, self.status.start)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.status.stop()


def spinner_delay() -> float:
    """$LMGEN_SPINNER_DELAY: seconds from 0 to 3600 (default 0.5); anything else is refused."""
    from lmgen.environment import number

    return number("LMGEN_SPINNER_DELAY", 0.5, 0, 3600, " of seconds")


def loading_status() -> status:
    return status("loading model…")


class progress:
    """A progress bar on stderr of the prompts done (out of ``total``, when known: a running count
    otherwise), their tokens and the aggregate rate, if stderr is a terminal (in a pipe: nothing).
    The context gives a function to call per finished prompt."""

    def __init__(self, total: int | None = None):
        self.total = total

    def __enter__(self):
        import time

        self.bar, self.tokens, self.start = None, 0, time.perf_counter()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            # stdout left alone: the completions go there, not through rich
            self.bar = Progress(BarColumn(), MofNCompleteColumn(), TextColumn("prompts done, {task.description}"),
                                console=Console(stderr=True), transient=True, redirect_stdout=False,
                                redirect_stderr=False)
            self.task = self.bar.add_task("0 tokens", total=self.total)
            self.bar.start()
        return self

    @contextmanager
    def paused(self):
        """The bar taken off the terminal while output is written (stdout and stderr may share
        it: a line must never land on the bar), then drawn again below it."""
        if self.bar is None:
            yield
            return
        self.bar.stop()  # transient: the bar's line is erased
        try:
            yield
        finally:
            sys.stdout.flush()
            self.bar.start()

    def __call__(self, new_tokens: int) -> None:
        """One more prompt done, with its (samples') new tokens."""
        import time

        self.tokens += new_tokens
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=1, description=f"{self.tokens} tokens, {rate:.1f} tokens/s",
                            refresh=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
