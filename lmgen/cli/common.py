"""What the commands that run a model share: checking the options and picking the model before
the slow load (``prepare``), then loading it with a spinner and its notes on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional


def prepare(model: Optional[str], dtype: Optional[str], device: str, threads: Optional[int]):
    """What generate and score do before reading input: check the options, pick the model and
    its config (torch-free: a bad model fails before the slow load). Returns (path, config)."""
    from lmgen.cli.startup import freeze_imports, stop_early
    from lmgen.engine.load import parse_device, parse_dtype
    from lmgen.formats.checkpoint import gguf_file, locate, read_config
    from lmgen.formats.paths import resolve_model
    from lmgen.model.kernels import use_threads

    freeze_imports()
    if dtype is not None:
        parse_dtype(dtype)
    parse_device(device)
    use_threads(threads)
    path = resolve_model(model)
    src = gguf_file(Path(path))
    if src is not None:  # its config, read into the cache on first use
        from lmgen.formats.config_file import load_config_file
        from lmgen.formats.gguf.index import gguf_index

        config = load_config_file(gguf_index(src) / "config.json")
    else:
        config = read_config(locate(path))
    stop_early()  # the loading status takes over (at once, if the early spinner was showing)
    return path, config


def load_model(path, dtype: Optional[str], device: str, kv_dtype: Optional[str] = None):
    from lmgen.cli.startup import loading_status
    from lmgen.engine.load import load

    with loading_status():
        lm = load(path, dtype=dtype, device=device, kv_dtype=kv_dtype)
    for note in lm.notes:
        print(f"lmgen: note: {note}", file=sys.stderr)
    return lm
