"""``lmgen chat``: parse the options, load the model, hand over to the read–reply loop (repl.py)."""

from __future__ import annotations

from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import (API_KEY_OPTION, DEVICE_OPTION, DTYPE_OPTION, KV_DTYPE_OPTION, MODEL_OPTION, SEED, SERVER_OPTION, STATS,
                               THINKING_OPTION, THREADS_OPTION, refuse_with_server, with_sampling)


@app.command()
@with_sampling
def chat(
    model: Optional[str] = MODEL_OPTION,
    system: Optional[str] = typer.Option(None, "--system", help="System message (change it with /system)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "-n", help="Longest reply, in tokens."),
    sampling=None,  # the sampling options (with_sampling)
    seed: Optional[int] = SEED,
    dtype: str = DTYPE_OPTION,
    kv_dtype: Optional[str] = KV_DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    thinking: Optional[str] = THINKING_OPTION,
    jsonl: bool = typer.Option(False, "--jsonl", help="Not on a terminal: one JSON object per reply."),
    stats: bool = STATS,
    server: Optional[str] = SERVER_OPTION,
    api_key: Optional[str] = API_KEY_OPTION,
) -> None:
    """Talk with a chat model: one reply per message, the conversation kept (type /help)."""
    from lmgen.cli.repl import run_chat
    from lmgen.engine.settings import GenerationSettings
    from lmgen.cli.repl import chat_history
    from lmgen.cli.thinking import thinking_mode

    chat_history()  # a bad $LMGEN_CHAT_HISTORY is refused now, not after the model is loaded
    thinking = thinking_mode(thinking)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
    if server:
        from lmgen.cli.remote_chat import RemoteConversation

        refuse_with_server(model=model, dtype=dtype, kv_dtype=kv_dtype, threads=threads, device=device != "cpu")
        return run_chat(RemoteConversation(server, api_key, settings, system), jsonl, stats, thinking=thinking)
    from lmgen.engine.conversation import Conversation

    path, _ = prepare(model, dtype, device, threads)  # refuse bad values before the slow load
    lm = load_model(path, dtype, device, kv_dtype)
    run_chat(Conversation(lm, settings, system), jsonl, stats, lm.model.weight_bytes_per_token(), thinking)
