"""``lmgen pull NAME``, ``lmgen list`` and ``lmgen rm NAME``: models by name, from the Hugging
Face Hub into its cache (``formats.hub``). No torch."""

from __future__ import annotations

import json
import sys

import typer

from lmgen.cli.app import app

NAME_HELP = "ORG/REPO[:QUANT] (Qwen/Qwen3-0.6B-GGUF:Q4_K_M) or hf://ORG/REPO\\[/FILE]\\[@REVISION]."


@app.command()
def pull(
    name: str = typer.Argument(..., metavar="NAME", help=NAME_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print path, size, sha256 and revision as one JSON object."),
) -> None:
    """Fetch a model by name into the Hugging Face cache (or find it there) and print its path."""
    from lmgen.errors import InputError
    from lmgen.formats.hub.pull import pull as pull_model
    from lmgen.formats.hub.reference import parse

    ref = parse(name) if not name.startswith("-") else None
    if ref is None:
        raise InputError(f"{name!r} is not a Hub name: write ORG/REPO[:QUANT] or hf://ORG/REPO[/FILE][@REVISION]")
    pulled = pull_model(ref)
    if pulled.note:
        sys.stderr.write(f"lmgen: note: {pulled.note}\n")
    if as_json:
        print(json.dumps(pulled.record()))
        return
    from lmgen.cli.tables import human_bytes

    how = "fetched" if pulled.fetched else "in the cache"
    sys.stderr.write(f"lmgen: {ref}: {human_bytes(pulled.size)}, {how} (revision {pulled.revision[:12]})\n")
    print(pulled.path)


@app.command(name="list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print one JSON object per model.")) -> None:
    """List the models here that lmgen can run: the default, and the Hugging Face cache's."""
    from lmgen.cli.tables import human_bytes, print_table
    from lmgen.formats.hub.catalog import models

    entries = models()
    if as_json:
        for entry in entries:
            print(json.dumps(entry.record()))
        return
    rows = [[e.name, e.format, e.family, human_bytes(e.size), e.quant, "yes" if e.pulled_by_lmgen else ""]
            for e in entries]
    print_table(["name", "format", "family", "size", "quant", "pulled by lmgen"], rows, right={3})


@app.command()
def rm(
    name: str = typer.Argument(..., metavar="NAME", help="A name `lmgen list` shows, fetched by lmgen."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (a terminal is asked first)."),
) -> None:
    """Remove a model lmgen fetched from the Hugging Face cache (nothing it did not fetch)."""
    from lmgen.cli.tables import human_bytes
    from lmgen.formats.hub.catalog import remove, removable

    entry, links = removable(name)
    if not yes and sys.stdin.isatty() and sys.stderr.isatty():
        sys.stderr.write(f"remove {entry.name} ({human_bytes(entry.size)}, {len(links)} file(s))? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            sys.stderr.write("lmgen: nothing removed\n")
            return
    freed = remove(entry, links)
    sys.stderr.write(f"lmgen: removed {entry.name} ({human_bytes(freed)} freed)\n")
