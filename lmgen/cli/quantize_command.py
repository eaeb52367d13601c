"""``lmgen quantize SRC OUT.gguf --type TYPE``: a checkpoint directory or a GGUF file written as a
block-quantized GGUF file for llama.cpp and ollama (``lmgen.formats.gguf.quantize``). No torch."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lmgen.cli.app import app


@app.command()
def quantize(
    src: Path = typer.Argument(..., metavar="SRC", help="A checkpoint directory (config.json, model.safetensors, tokenizer.json), "
                                         "a .gguf file, or a Hub name (ORG/REPO[:QUANT])."),
    out: Path = typer.Argument(..., metavar="OUT", help="The GGUF file to write (staged beside it, renamed into place when complete)."),
    type_name: str = typer.Option(..., "--type", help="The block format: q8_0, q4_0, q4_1, q5_0 or q5_1."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Write a checkpoint or GGUF file as a block-quantized GGUF file for llama.cpp."""
    from lmgen.formats.gguf.quantize import parse_type, quantize as quantize_file

    from lmgen.formats.paths import model_path

    parse_type(type_name)  # a bad --type is refused before SRC is read
    summary = quantize_file(model_path(str(src)), out, type_name, force=force)
    sys.stderr.write(summary.line() + "\n")
