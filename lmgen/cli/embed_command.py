"""``lmgen embed``: one JSON line per text — its embedding (pooled final hidden states) and its
token count — for texts given as arguments or read one per line from stdin."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, THREADS_OPTION
from lmgen.errors import InputError


@app.command()
def embed(
    texts: Optional[list[str]] = typer.Argument(None, metavar="[TEXT]...",
                                                help="Texts to embed; none (or '-') reads one per line from stdin."),
    model: Optional[str] = MODEL_OPTION,
    pooling: Optional[str] = typer.Option(None, "--pooling", metavar="MODE",
                                          help="mean, last or cls (default: the model's own pooling, else mean)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Scale each vector to length 1."),
    dtype: str = DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Embed each TEXT: one JSON line {"index", "embedding", "tokens"} per text, in order."""
    from lmgen.engine.embed import pooling_for, token_ids, vectors

    if pooling is not None:
        pooling_for(None, pooling)  # an unknown mode fails before the slow load
    path, config = prepare(model, dtype, device, threads)
    inputs = read_texts(texts, config.max_context)
    lm = load_model(path, dtype, device)
    pooling = pooling_for(lm, pooling)
    ids = token_ids(lm, inputs)
    for index, (vector, one) in enumerate(zip(vectors(lm, ids, pooling, normalize), ids)):
        print(json.dumps({"index": index, "embedding": vector, "tokens": len(one)}, allow_nan=False))


def read_texts(texts: Optional[list[str]], context: int) -> list[str]:
    """The arguments, or (none, or '-' alone) the non-empty lines of stdin, each within the bytes
    the context could use."""
    from lmgen.cli import prompts

    if texts and texts != ["-"]:
        return texts
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("no text: pass it as arguments, or one per line on stdin")
    lines = list(prompts.each_line(prompts.max_bytes(context)))
    if not lines:
        raise InputError("no text: stdin has no non-empty line")
    return lines
