"""What is inside a checkpoint, from its config and safetensors headers alone.

No torch, no weights read: the parameter counts are sums of the shapes in the
headers, grouped by part of the model. With tied embeddings the LM head *is*
the embedding matrix, so it is counted once (under the embedding).
"""

from __future__ import annotations

from pathlib import Path

from lmgen import layout
from lmgen.checkpoint import locate, read_config, safetensors_header
from lmgen.config import ModelConfig

PARTS = ("embedding", "positions", "blocks", "final_norm", "head")


def _part(canonical: str) -> str:
    if canonical.startswith("embed."):
        return "embedding"
    if canonical.startswith("pos_embed."):
        return "positions"
    if canonical.startswith("blocks."):
        return "blocks"
    return "final_norm" if canonical.startswith("head.norm.") else "head"


def _numel(shape) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def count_from_headers(cfg: ModelConfig, headers: list[dict]) -> tuple[dict[str, int], bool]:
    """Parameters per part from stored tensors, and whether a separate head tensor is stored."""
    counts = dict.fromkeys(PARTS, 0)
    head_stored = False
    for header in headers:
        for name, info in header.items():
            mapped = layout.map_name(cfg.family, name)
            if mapped is None or mapped is layout.IGNORED:
                continue
            part = _part(mapped.targets[0])
            if part == "head":
                head_stored = True
                if cfg.tied_embeddings:
                    continue  # a tied head stored anyway: not a parameter of its own
            counts[part] += _numel(info["shape"])
    return counts, head_stored


def count_from_config(cfg: ModelConfig) -> dict[str, int]:
    counts = dict.fromkeys(PARTS, 0)
    for name, shape in layout.canonical_shapes(cfg).items():
        counts[_part(name)] += _numel(shape)
    return counts


def report(path: str | Path) -> dict:
    """Everything ``lmgen inspect`` shows, as plain data."""
    files = locate(path)
    cfg = read_config(files)
    counts, head_stored = count_from_headers(cfg, [safetensors_header(p) for p in files.weights])
    head_params = cfg.d_model * cfg.vocab_size
    total = sum(counts.values())
    return {
        "path": str(files.root),
        "family": cfg.family,
        "config": cfg.to_dict(),
        "lm_head": {
            "shape": [cfg.d_model, cfg.vocab_size],
            "tied": cfg.tied_embeddings,
            "stored_separately": head_stored,
            "parameters": head_params,
            "share_of_model": head_params / total if total else 0.0,
        },
        "attention": {"heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim},
        "parameters": {**counts, "total": total},
    }
