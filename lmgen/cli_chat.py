"""``lmgen chat``: parse the options, load the model, hand over to the read–reply loop (repl.py)."""

from __future__ import annotations

from typing import Optional

import typer

from lmgen.cli import (DEVICE_OPTION, DTYPE_OPTION, FREQUENCY_PENALTY, MIN_P, MODEL_OPTION, PRESENCE_PENALTY,
                       REPETITION_PENALTY, SEED, STATS, TEMPERATURE, THREADS_OPTION, TOP_K, TOP_P, TYPICAL_P, app,
                       load_model, prepare)


@app.command()
def chat(
    model: Optional[str] = MODEL_OPTION,
    system: Optional[str] = typer.Option(None, "--system", help="System message (change it with /system)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "-n", help="Longest reply, in tokens."),
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    min_p: float = MIN_P,
    typical_p: float = TYPICAL_P,
    repetition_penalty: float = REPETITION_PENALTY,
    frequency_penalty: float = FREQUENCY_PENALTY,
    presence_penalty: float = PRESENCE_PENALTY,
    seed: Optional[int] = SEED,
    dtype: str = DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    jsonl: bool = typer.Option(False, "--jsonl", help="Not on a terminal: one JSON object per reply."),
    stats: bool = STATS,
) -> None:
    """Talk with a chat model: one reply per message, the conversation kept (type /help)."""
    from lmgen.generation import GenerationSettings
    from lmgen.repl import run_chat
    from lmgen.sampling import SamplingSettings

    sampling = SamplingSettings(temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
                                frequency_penalty, presence_penalty)
    settings = GenerationSettings(max_new_tokens, sampling, seed)
    path, _ = prepare(model, dtype, device, threads)  # refuse bad values before the slow load
    lm = load_model(path, dtype, device)
    run_chat(lm, settings, system, jsonl, stats)
