"""``lmgen inspect``: the report of ``formats.inspect``, as tables or JSON (never imports torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lmgen.cli.app import app


@app.command()
def inspect(
    path: Optional[Path] = typer.Argument(None, metavar="PATH", help="Checkpoint directory, .safetensors file, .gguf file or TOML "
                                          "config (default: the model generate would run)."),
    tensors: bool = typer.Option(False, "--tensors", help="List every tensor: shape, dtype, size."),
    match: Optional[str] = typer.Option(None, "--match", help="Only tensors whose name matches this glob."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    stats: bool = typer.Option(False, "--stats", "-v", help="Also the bytes of weights one decoded token reads."),
) -> None:
    """Show the LM head, parameter counts, memory and attention layout without loading weights."""
    from lmgen.cli.tables import print_inspect
    from lmgen.formats.inspect import report
    from lmgen.formats.paths import resolve_model

    path = resolve_model(None if path is None else str(path))
    glob = match if match is not None else ("*" if tensors else None)
    info = report(path, glob, stats)
    from lmgen.model.kernels_loader import kernel_level  # torch-free: what generate would run on this CPU

    info["native_kernels"] = kernel_level()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print_inspect(info)
        print(f"native kernels: {info['native_kernels']} (the instruction set level they run at on this CPU)")
