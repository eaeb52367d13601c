"""``lmgen generate``: one prompt, or every line of stdin (--each-line), printed as text, JSON or
JSON lines (``render``), with progress and stats on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import (
    API_KEY_OPTION,
    DEVICE_OPTION,
    DTYPE_OPTION,
    KV_DTYPE_OPTION,
    FILE_OPTION,
    MODEL_OPTION,
    SEED,
    SERVER_OPTION,
    STATS,
    THINKING_OPTION,
    THREADS_OPTION,
    refuse_with_server,
    with_sampling,
)
from lmgen.errors import InputError


@app.command()
@with_sampling
def generate(
    prompt: Optional[str] = typer.Argument(None, metavar="PROMPT", help="Text to continue; '-' or nothing reads stdin."),
    file: Optional[Path] = FILE_OPTION,
    each_line: bool = typer.Option(False, "--each-line", help="One completion per non-empty line of stdin."),
    model: Optional[str] = MODEL_OPTION,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Stop after this many new tokens."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop before this text (repeatable); never printed."),
    sampling=None,  # the sampling options (with_sampling)
    seed: Optional[int] = SEED,
    num_samples: int = typer.Option(1, "--num-samples", help="Independent continuations, batched."),
    batch_size: int = typer.Option(8, "--batch-size", help="With --each-line: prompts decoded together (1: one at a time)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat."),
    thinking: Optional[str] = THINKING_OPTION,
    show_probs: int = typer.Option(0, "--show-probs", help="Show each token's probability and the K likeliest."),
    lookup: int = typer.Option(0, "--lookup", metavar="N",
                               help="Greedy: draft up to N tokens from the prompt and output so far, checked in one "
                                    "step (the same text, sooner when the output repeats its input)."),
    truncate: bool = typer.Option(False, "--truncate", help="Keep the end of a prompt too long for the context."),
    json_schema: Optional[str] = typer.Option(None, "--json-schema", help="Output JSON this schema accepts (inline or a file)."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Output text this regular expression matches in full."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="Output text this Lark grammar file accepts."),
    dtype: str = DTYPE_OPTION,
    kv_dtype: Optional[str] = KV_DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    echo: bool = typer.Option(False, "--echo", help="Print the prompt before the continuation."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end instead of text."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON line per token, then a summary line."),
    stats: bool = STATS,
    server: Optional[str] = SERVER_OPTION,
    api_key: Optional[str] = API_KEY_OPTION,
) -> None:
    """Continue PROMPT with the model, streaming tokens as they are chosen."""
    from lmgen.cli import prompts, render
    from lmgen.cli.thinking import thinking_mode

    if as_json and jsonl:
        raise InputError("choose one of --json and --jsonl")
    if each_line and (prompt is not None or file is not None):
        raise InputError("--each-line reads prompts from stdin; drop the prompt argument and --file")
    if system is not None and not chat:
        raise InputError("--system needs --chat")
    if thinking is not None and not chat:
        raise InputError("--thinking needs --chat")
    thinking = thinking_mode(thinking)
    if server:
        refuse_with_server(model=model, dtype=dtype, kv_dtype=kv_dtype, threads=threads, jsonl=jsonl, show_probs=show_probs,
                           json_schema=json_schema, regex=regex, grammar=grammar, truncate=truncate, stats=stats,
                           device=device != "cpu")
        return _on_server(server, api_key, prompt, file, each_line, sampling, max_new_tokens, num_samples, seed,
                          stop, chat, system, as_json, echo, batch_size, lookup, thinking)

    from lmgen.engine.batching import PromptError
    from lmgen.engine.batching import generate as run
    from lmgen.engine.constraint import Constraint
    from lmgen.engine.generation import GenerationSettings

    constraint = Constraint.from_options(json_schema, regex, None if grammar is None else str(grammar))
    settings = GenerationSettings(max_new_tokens, sampling, seed, truncate, tuple(stop or ()), num_samples, show_probs,
                                  constraint, lookup)
    path, cfg = prepare(model, dtype, device, threads)  # refuse bad values before the slow load
    limit = prompts.max_bytes(cfg.max_context)
    lines: dict[int, int] = {}  # --each-line: a prompt's position -> its line of stdin
    from lmgen.cli.output import Input, generate_in_order, generate_one
    from lmgen.text.chat import messages_of

    def inputs():
        numbered = prompts.numbered_lines(limit, truncate) if each_line else \
            [(1, prompts.read_prompt(prompt, file, limit, truncate))]
        for position, (number, text) in enumerate(numbered):
            lines[position] = number
            if not chat:
                yield Input(text, text, index=number - 1)
                continue
            messages = messages_of(text, system)  # the template read once, each prompt rendered with it
            yield Input(text, messages, lm.chat_template.render(messages), number - 1)

    lm = load_model(path, dtype, device, kv_dtype)

    if as_json or (jsonl and each_line):
        renderer = render.JsonRenderer()
    elif jsonl:
        renderer = render.JsonlRenderer(lm.tokenizer)
    else:
        renderer = render.TextRenderer(echo, num_samples, lm.tokenizer, show_probs, one_line=each_line,
                                       thinking=thinking)
    if each_line:
        total = prompts.count_lines() if sys.stderr.isatty() else None  # for the progress bar
        records = generate_in_order(lm, inputs(), settings, renderer, batch_size, total)
    else:
        records = (record for item in inputs() for record in generate_one(lm, item, settings, renderer, run))
    try:
        for record in records:
            if record.get("complete") is False:
                print(f"lmgen: warning: the output is incomplete: it ended ({record['finish_reason']}) before "
                      f"{constraint.describe()} was satisfied", file=sys.stderr)
            if stats:
                sys.stderr.write(render.stats_line(record) + "\n")
    except PromptError as exc:  # every earlier prompt has been printed: name the line that cannot be used
        raise InputError(f"stdin line {lines[exc.index]}: {exc}" if exc.index in lines else str(exc)) from None


def _on_server(server, api_key, prompt, file, each_line, sampling, max_new_tokens, num_samples, seed, stop, chat,
               system, as_json, echo, batch_size, lookup, thinking) -> None:
    """generate --server: the prompts read as locally, the work done by the server (cli.remote)."""
    from lmgen.cli import prompts
    from lmgen.cli.remote import run_remote
    from lmgen.engine.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens, sampling, seed, stop=tuple(stop or ()), num_samples=num_samples,
                                  lookup=lookup)
    limit = prompts.max_bytes(1 << 20)  # the server knows its context; a prompt too long is its 400
    numbered = prompts.numbered_lines(limit) if each_line else [(1, prompts.read_prompt(prompt, file, limit))]
    run_remote(server, api_key, ((number - 1, text) for number, text in numbered), settings, chat, system,
               as_json, each_line, echo, batch_size, thinking)
