"""What the command line does around loading a model: freeze the imports out of the garbage
collector's way, and show a spinner on a terminal while the weights load."""

from __future__ import annotations

import os
import sys


def freeze_imports() -> None:
    """Exempt everything imported so far (torch: over a million objects) from garbage collection.

    Otherwise the first full collection, which model loading triggers, walks them all: 0.1 s
    before the first token. Nothing imported is ever garbage, so nothing is lost.
    """
    import gc

    gc.freeze()


class loading_status:
    """A spinner on stderr while the model loads, if stderr is a terminal and loading takes a while."""

    def __enter__(self):
        self.timer = None
        delay = float(os.environ.get("LMGEN_SPINNER_DELAY", "0.5"))
        if sys.stderr.isatty():
            import threading

            from rich.console import Console

            self.status = Console(stderr=True).status("loading model…")
            self.timer = threading.Timer(delay, self.status.start)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.status.stop()
