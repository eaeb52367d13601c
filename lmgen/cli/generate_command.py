"""``lmgen generate``: one prompt, or every line of stdin (--each-line), printed as text, JSON or
JSON lines (``render``), with progress and stats on stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import (
    API_KEY_OPTION,
    DEVICE_OPTION,
    DTYPE_OPTION,
    KV_CACHE_OPTION,
    KV_DTYPE_OPTION,
    FILE_OPTION,
    MODEL_OPTION,
    SEED,
    SERVER_OPTION,
    STATS,
    THINKING_OPTION,
    THREADS_OPTION,
    kv_cache_mib,
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
    kv_cache: int = KV_CACHE_OPTION,
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
    from lmgen.cli.thinking import thinking_mode
    from lmgen.engine.settings import GenerationSettings

    if as_json and jsonl:
        raise InputError("choose one of --json and --jsonl")
    if each_line and (prompt is not None or file is not None):
        raise InputError("--each-line reads prompts from stdin; drop the prompt argument and --file")
    if system is not None and not chat:
        raise InputError("--system needs --chat")
    if thinking is not None and not chat:
        raise InputError("--thinking needs --chat")
    source = Source(prompt=prompt, file=file, each_line=each_line, chat=chat, system=system, batch_size=batch_size,
                    kv_cache_mib=kv_cache_mib(kv_cache))
    shown = Shown(as_json=as_json, jsonl=jsonl, echo=echo, stats=stats, show_probs=show_probs,
                  thinking=thinking_mode(thinking))
    if server:
        refuse_with_server(model=model, dtype=dtype, kv_dtype=kv_dtype, kv_cache_mib=kv_cache, threads=threads, jsonl=jsonl,
                           show_probs=show_probs, json_schema=json_schema, regex=regex, grammar=grammar, truncate=truncate, stats=stats,
                           device=device != "cpu")
        settings = GenerationSettings(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                                      stop=tuple(stop or ()), num_samples=num_samples, lookup=lookup)
        return _on_server(server, api_key, source, settings, shown)

    from lmgen.engine.constraint import Constraint

    constraint = Constraint.from_options(json_schema, regex, None if grammar is None else str(grammar))
    settings = GenerationSettings(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, truncate=truncate,
                                  stop=tuple(stop or ()), num_samples=num_samples, show_probs=show_probs,
                                  constraint=constraint, lookup=lookup)
    path, cfg = prepare(model, dtype, device, threads)  # refuse bad values before the slow load
    _locally(load_model(path, dtype, device, kv_dtype), source, settings, shown, cfg.max_context)


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where the prompts come from and how they are put to the model."""

    prompt: str | None
    file: Path | None
    each_line: bool
    chat: bool
    system: str | None
    batch_size: int
    kv_cache_mib: float | None = None  # the rows' shared KV cache (None: what memory allows)


@dataclass(frozen=True, kw_only=True)
class Shown:
    """How the output is printed."""

    as_json: bool
    jsonl: bool
    echo: bool
    stats: bool
    show_probs: int
    thinking: str


def _renderer(lm, source: Source, shown: Shown, num_samples: int):
    from lmgen.cli import render

    if shown.as_json or (shown.jsonl and source.each_line):
        return render.JsonRenderer()
    if shown.jsonl:
        return render.JsonlRenderer(lm.tokenizer)
    return render.TextRenderer(shown.echo, num_samples, lm.tokenizer, shown.show_probs, one_line=source.each_line,
                               thinking=shown.thinking)


def _locally(lm, source: Source, settings, shown: Shown, context: int) -> None:
    """The prompts generated here, in input order, printed as they come."""
    from lmgen.cli import prompts, render
    from lmgen.cli.output import Input, generate_in_order, generate_one
    from lmgen.engine.batching import PromptError
    from lmgen.engine.batching import generate as run
    from lmgen.text.chat import messages_of

    limit, truncate = prompts.max_bytes(context), settings.truncate
    lines: dict[int, int] = {}  # --each-line: a prompt's position -> its line of stdin

    def inputs():
        numbered = prompts.numbered_lines(limit, truncate) if source.each_line else \
            [(1, prompts.read_prompt(source.prompt, source.file, limit, truncate))]
        for position, (number, text) in enumerate(numbered):
            lines[position] = number
            if not source.chat:
                yield Input(text, text, index=number - 1)
                continue
            messages = messages_of(text, source.system)  # the template read once, each prompt rendered with it
            yield Input(text, messages, lm.chat_template.render(messages), number - 1)

    renderer = _renderer(lm, source, shown, settings.num_samples)
    kernels = ""  # --stats: the native kernels' instruction set level, where the model runs on the CPU
    if shown.stats and lm.model.device.type == "cpu":
        from lmgen.model.kernels_loader import kernel_level

        kernels = f"; native kernels {kernel_level()}"
    if source.each_line:
        total = prompts.count_lines() if sys.stderr.isatty() else None  # for the progress bar
        records = generate_in_order(lm, inputs(), settings, renderer, source.batch_size, total, source.kv_cache_mib)
    else:
        records = (record for item in inputs() for record in generate_one(lm, item, settings, renderer, run))
    try:
        for record in records:
            if record.get("complete") is False:
                print(f"lmgen: warning: the output is incomplete: it ended ({record['finish_reason']}) before "
                      f"{settings.constraint.describe()} was satisfied", file=sys.stderr)
            if shown.stats:
                sys.stderr.write(render.stats_line(record) + kernels + "\n")
    except PromptError as exc:  # every earlier prompt has been printed: name the line that cannot be used
        raise InputError(f"stdin line {lines[exc.index]}: {exc}" if exc.index in lines else str(exc)) from None


def _on_server(server: str, api_key: str | None, source: Source, settings, shown: Shown) -> None:
    """generate --server: the prompts read as locally, the work done by the server (cli.remote)."""
    from lmgen.cli import prompts
    from lmgen.cli.remote import run_remote

    limit = prompts.max_bytes(1 << 20)  # the server knows its context; a prompt too long is its 400
    numbered = prompts.numbered_lines(limit) if source.each_line else \
        [(1, prompts.read_prompt(source.prompt, source.file, limit))]
    run_remote(server, api_key, ((number - 1, text) for number, text in numbered), settings, source.chat,
               source.system, shown.as_json, source.each_line, shown.echo, source.batch_size, shown.thinking)
