"""A checkpoint directory's tensors into a ``Decoder`` (``formats.checkpoint`` reads and maps
them; this places them): the safetensors path of the loading pipeline (``engine.load``)."""

from __future__ import annotations

from pathlib import Path

from lmgen.formats.checkpoint import locate, read_config, read_state


def load_model(path: str | Path, dtype=None, device: str = "cpu", vector_dtype=None, mapped: bool = True):
    """Build a Decoder from a checkpoint directory. Returns (model, config, files).

    Weight matrices are stored in ``dtype``; norm weights and biases in ``vector_dtype``,
    which also sets the dtype of the activations (default: ``dtype``). ``mapped``: see
    ``read_state``.
    """
    import torch

    from lmgen.model.decoder import Decoder

    files = locate(path)
    cfg = read_config(files)
    dtype = dtype or torch.float32
    state = read_state(files, cfg, dtype, vector_dtype, mapped)
    with torch.device("meta"):
        model = Decoder(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.to(device).eval(), cfg, files
