"""``lmgen chat``: parse the options, load the model, hand over to the read–reply loop (repl.py)."""

from __future__ import annotations

from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, SEED, STATS, THREADS_OPTION, with_sampling


@app.command()
@with_sampling
def chat(
    model: Optional[str] = MODEL_OPTION,
    system: Optional[str] = typer.Option(None, "--system", help="System message (change it with /system)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "-n", help="Longest reply, in tokens."),
    sampling=None,  # the sampling options (with_sampling)
    seed: Optional[int] = SEED,
    dtype: str = DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    jsonl: bool = typer.Option(False, "--jsonl", help="Not on a terminal: one JSON object per reply."),
    stats: bool = STATS,
) -> None:
    """Talk with a chat model: one reply per message, the conversation kept (type /help)."""
    from lmgen.cli.repl import run_chat
    from lmgen.engine.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens, sampling, seed)
    path, _ = prepare(model, dtype, device, threads)  # refuse bad values before the slow load
    lm = load_model(path, dtype, device)
    run_chat(lm, settings, system, jsonl, stats)
