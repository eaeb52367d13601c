"""What the command line shows and does around the work: freeze the imports out of the garbage
collector's way, a spinner on a terminal while the weights load, and a progress bar of the
prompts done with --each-line."""

from __future__ import annotations

import sys
from contextlib import contextmanager


def freeze_imports() -> None:
    """Exempt everything imported so far (torch: over a million objects) from garbage collection.

    Otherwise the first full collection, which model loading triggers, walks them all: 0.1 s
    before the first token. Nothing imported is ever garbage, so nothing is lost.
    """
    import gc

    gc.freeze()


class status:
    """A spinner with ``text`` on stderr while work goes on, if stderr is a terminal and the work
    takes longer than ``delay`` seconds (default $LMGEN_SPINNER_DELAY, else 0.5)."""

    def __init__(self, text: str, delay: float | None = None):
        self.text = text
        self.delay = spinner_delay() if delay is None else delay

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
