"""The ``lmgen`` command line: parse, call the library, print.

torch is imported only by the commands that run a model, so ``--help`` and
``inspect`` start fast. ``main`` is the console entry point: every error
becomes one line on stderr and an exit code (see README, "Exit codes").
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from typer.exceptions import Abort

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import NoArgsIsHelpError, UsageError

from lmgen.cli.app import app
from lmgen.cli.render import one_line
from lmgen.cli.startup import start_early, stop_early
from lmgen.errors import EnvironmentFailure, LmgenError
from lmgen.model.threads import yielding_threads

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def error_line(message: str) -> None:
    stop_early()  # the spinner erased first: the line stands alone
    try:
        sys.stderr.write(f"lmgen: error: {one_line(message)}\n")
        sys.stderr.flush()
    except OSError:  # nowhere left to say it: the exit code still does
        pass


class ClosedStream:
    """What stands in for a standard stream the process was started without (``>&-``): writing
    to it is an OSError (one line, exit 4), never an AttributeError on None."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text) -> int:
        raise OSError(errno.EBADF, f"cannot write to {self.name}: it is closed")

    def flush(self) -> None:  # nothing was ever buffered
        pass

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self):
        return self


def run(argv: list[str]) -> int:
    """Run one command and return its exit code: errors become one line on stderr."""
    debug = "--debug" in argv
    try:
        return _run(argv, debug)
    finally:
        stop_early()  # never left spinning over an error line or the shell's prompt


def _run(argv: list[str], debug: bool) -> int:
    if not [a for a in argv if a != "--debug"]:  # `lmgen` alone: its help, as asked for
        argv = [*argv, "--help"]
    if sys.stdout is None:
        sys.stdout = ClosedStream("standard output")
    try:
        code = app(args=argv, prog_name="lmgen", standalone_mode=False)
    except (KeyboardInterrupt, Abort):
        code = EXIT_INTERRUPTED
    except NoArgsIsHelpError as exc:
        sys.stdout.write(exc.format_message() + "\n")
        code = 2
    except UsageError as exc:
        if debug:
            raise
        error_line(exc.format_message().replace("\n", " ").rstrip(".") + "; see --help")
        code = 2
    except LmgenError as exc:
        if debug:
            raise
        error_line(str(exc))
        code = exc.exit_code
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    except OSError as exc:  # the machine refused: a full disk, a closed or read-only output
        if debug:
            raise
        error_line(environment_message(exc))
        code = EnvironmentFailure.exit_code
    except Exception as exc:  # a bug in lmgen, not bad input: still one line unless --debug
        if debug:
            raise
        error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        code = 1
    return code if isinstance(code, int) else 0


def environment_message(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def main(argv: list[str] | None = None) -> None:
    """The console entry point: run, flush, and end the process (see ``leave``)."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lmgen … | head` ends quietly, like cat would
    yielding_threads()
    argv = sys.argv[1:] if argv is None else argv
    start_early(argv)
    leave(run(argv))


def leave(code: int) -> None:
    """Flush and end the process. Once torch is loaded, skip the interpreter's orderly
    shutdown: tearing torch down takes about half a second, which a script that runs lmgen
    once per input would pay every time. Nothing lmgen writes is left unflushed."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    except OSError as exc:  # stdout on a full disk: the text did not arrive
        error_line(environment_message(exc))
        code = EnvironmentFailure.exit_code
    try:
        sys.stderr.flush()
    except OSError:
        pass
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


from lmgen.cli import (  # noqa: E402,F401; (each registers its command on app)
    batch_command,
    chat_command,
    embed_command,
    generate_command,
    hub_command,
    inspect_command,
    quantize_command,
    score_command,
    serve_command,
    setup_command,
)
