"""The ``lmgen`` Typer application: its options (--debug, --version) and help; each command module
registers itself on ``app`` (``main`` imports them all)."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from lmgen.config.model_config import FAMILIES


class Commands(TyperGroup):
    """The commands, listed alphabetically in the help (Typer lists them as they were registered)."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(super().list_commands(ctx))


app = typer.Typer(
    cls=Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generate text with small decoder-only language models. Families (config.json's model_type): "
         f"{', '.join(FAMILIES)}; checkpoint directories or GGUF files.",
)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("lmgen")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown (not installed)"
        sys.stdout.write(f"lmgen {number}\n")
        raise typer.Exit()


@app.callback()
def callback(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
             version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                          help="Print lmgen's version and exit.")) -> None:
    """(--debug is read by main before parsing, so that it also covers parse errors.)"""
