"""What narrower weights cost in accuracy: each dtype against fp32 on the same model and text.

    python scripts/bench_quality.py                       # default model, ~1,000 tokens of a license
    python scripts/bench_quality.py --text FILE --tokens 1000 --model DIR

For each way of running the model — bf16, q8 and q4 quantized at load, the GGUF file's own
blocks as stored (the default model: Q4_1) — the mean |Δ log p| of the text's tokens against
fp32 (the log-probability each gives the actual next token), and the same for a reference that
dequantizes the same blocks and multiplies in PyTorch (fp32 activations): the difference
between the two is what the kernels add to the format's own rounding. Then greedy agreement
with fp32 over --greedy new tokens. It reports; it asserts nothing.

    python scripts/bench_quality.py --kv          # the KV cache's dtype instead: bf16 and q8_0 against fp32

With --kv the text is read as generation reads it — its first 16 tokens prefilled, then one
decode step per token (the native step where the kernels run), keys and values kept in the
cache — with an fp32 cache, a bf16 one and a q8_0 one, same weights (as stored).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgen  # noqa: E402
from lmgen.engine.generation import Token  # noqa: E402
from lmgen.formats.checkpoint import gguf_file  # noqa: E402
from lmgen.formats.paths import resolve_model  # noqa: E402
from lmgen.model import kernels  # noqa: E402

LICENSE = Path("/usr/share/common-licenses/Apache-2.0")


def token_log_probs(lm, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(lm.model(ids)[0, :-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0]


def cached_log_probs(lm, ids: torch.Tensor, prefill: int = 16) -> torch.Tensor:
    """Each next token's log-probability as generation computes it: through the KV cache."""
    cache = lm.model.new_cache(batch=1, max_len=ids.shape[1])
    with torch.inference_mode():
        logits = [lm.model(ids[:, :prefill], 0, cache)[0]]
        logits += [lm.model(ids[:, i : i + 1], i, cache)[0] for i in range(prefill, ids.shape[1] - 1)]
    return torch.log_softmax(torch.cat(logits).double(), -1).gather(1, ids[0, 1:, None])[:, 0]


def kv_quality(args, path) -> None:
    ids = None
    results = {}
    for kv in ("float32", "bfloat16", "q8_0"):
        lm = lmgen.load(path, kv_dtype=kv)
        if ids is None:
            ids = torch.tensor([lm.encode(args.text.read_text())[: args.tokens]])
        results[kv] = (cached_log_probs(lm, ids), greedy(lm, args.prompt, args.greedy))
    expected, expected_tokens = results["float32"]
    print(f"model {path}; {ids.shape[1]} tokens of {args.text}, through the KV cache")
    for kv in ("bfloat16", "q8_0"):
        got, tokens = results[kv]
        leading = next((i for i, (a, b) in enumerate(zip(tokens, expected_tokens)) if a != b), len(tokens))
        print(f"  KV cache {kv} against fp32: mean |Δ log p| {(got - expected).abs().mean().item():.5f}, "
              f"max {(got - expected).abs().max().item():.4f}; greedy: first {leading} of {args.greedy} tokens as fp32's")


def greedy(lm, prompt: str, tokens: int) -> list[int]:
    lm = dataclasses.replace(lm, eos_ids=frozenset())  # always generate `tokens` tokens
    settings = lmgen.GenerationSettings(max_new_tokens=tokens)
    return [e.id for e in lmgen.generate(lm, prompt, settings) if isinstance(e, Token)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or GGUF file (default: lmgen's default model)")
    parser.add_argument("--text", type=Path, default=LICENSE if LICENSE.exists() else Path(__file__).parent.parent / "README.md")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens of the text to score")
    parser.add_argument("--greedy", type=int, default=64, help="new tokens for the greedy comparison")
    parser.add_argument("--prompt", default="The history of the city of Paris begins")
    parser.add_argument("--kv", action="store_true", help="compare the KV cache's dtypes instead (bf16, q8_0 vs fp32)")
    args = parser.parse_args()
    path = resolve_model(args.model)
    if args.kv:
        return kv_quality(args, path)
    reference = lmgen.load(path, dtype="float32")
    ids = torch.tensor([reference.encode(args.text.read_text())[: args.tokens]])
    expected, expected_tokens = token_log_probs(reference, ids), greedy(reference, args.prompt, args.greedy)
    print(f"model {path}; {ids.shape[1]} tokens of {args.text}; mean |Δ log p| against fp32")
    ways = [("bfloat16", "bfloat16"), ("q8", "q8"), ("q4", "q4")]
    stored = resolve_model(args.model)
    if gguf_file(stored) is not None:
        ways.append(("GGUF as stored", None))
    for label, dtype in ways:
        lm = lmgen.load(stored if dtype is None else path, dtype=dtype)
        delta = (token_log_probs(lm, ids) - expected).abs().mean().item()
        line = f"  {label:15s} {delta:.4f}"
        if dtype != "bfloat16":  # the same blocks, dequantized and multiplied by PyTorch
            usable, kernels.block_usable = kernels.block_usable, lambda x: False
            try:
                plain = (token_log_probs(lm, ids) - expected).abs().mean().item()
            finally:
                kernels.block_usable = usable
            added = f"{100 * (delta / plain - 1):+.1f}%" if plain else f"{delta - plain:+.4f}"
            line += f"   dequantize-then-matmul {plain:.4f} (kernels add {added})"
        tokens = greedy(lm, args.prompt, args.greedy)
        leading = next((i for i, (a, b) in enumerate(zip(tokens, expected_tokens)) if a != b), len(tokens))
        print(f"{line}   greedy: first {leading} of {args.greedy} tokens as fp32's")


if __name__ == "__main__":
    main()
