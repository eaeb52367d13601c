"""``lmgen score``: each token's log-probability and rank, total NLL and perplexity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import DEVICE_OPTION, DTYPE_OPTION, FILE_OPTION, MODEL_OPTION, THREADS_OPTION


@app.command()
def score(
    text: Optional[str] = typer.Argument(None, metavar="TEXT", help="Text to score; '-' or nothing reads stdin."),
    file: Optional[Path] = FILE_OPTION,
    model: Optional[str] = MODEL_OPTION,
    window: Optional[int] = typer.Option(None, "--window", help="Tokens per forward pass (default 1024, at most the context)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Tokens between window starts (default window / 2)."),
    dtype: str = DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score TEXT: each token's log-probability and rank, total NLL and perplexity."""
    from lmgen.cli import prompts
    from lmgen.cli.tables import print_score, score_record
    from lmgen.engine.score import MAX_TEXT_BYTES
    from lmgen.engine.score import score as run

    path, _ = prepare(model, dtype, device, threads)
    body = prompts.read_prompt(text, file, MAX_TEXT_BYTES)
    lm = load_model(path, dtype, device)
    record = score_record(run(lm, body, window, stride), lm.tokenizer)
    if as_json:
        print(json.dumps(record, ensure_ascii=False, allow_nan=False))
    else:
        print_score(record)
