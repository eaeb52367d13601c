"""What narrower weights cost in accuracy: bf16 and int8 against fp32 on the same model.

    python scripts/bench_quality.py
    python scripts/bench_quality.py --tokens 256 --prompt "Once upon a time"

For each of bfloat16 and int8: the largest absolute difference of the prompt's logits from
fp32's (and the span of fp32's logits, for scale), and greedy continuations of --tokens
new tokens: how many leading tokens are identical to fp32's and how many positions agree.
It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgen  # noqa: E402
from lmgen.generation import Token  # noqa: E402
from lmgen.paths import resolve_model  # noqa: E402


def greedy(lm, prompt: str, tokens: int) -> list[int]:
    lm = dataclasses.replace(lm, eos_ids=frozenset())  # always generate `tokens` tokens
    settings = lmgen.GenerationSettings(max_new_tokens=tokens)
    return [e.id for e in lmgen.generate(lm, prompt, settings) if isinstance(e, Token)]


def prompt_logits(lm, prompt: str) -> torch.Tensor:
    ids = torch.tensor([lm.tokenizer.encode(prompt)])
    with torch.inference_mode():
        return lm.model(ids)[0].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: lmgen's default model)")
    parser.add_argument("--prompt", default="The history of the city of Paris begins")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    path = resolve_model(args.model)
    reference = lmgen.load(path, dtype="float32")
    ref_logits, ref_tokens = prompt_logits(reference, args.prompt), greedy(reference, args.prompt, args.tokens)
    print(f"model {path}, prompt {args.prompt!r}, {args.tokens} greedy tokens; "
          f"fp32 logits span {ref_logits.min():.1f}..{ref_logits.max():.1f}")
    for dtype in ("bfloat16", "int8"):
        lm = lmgen.load(path, dtype=dtype)
        error = (prompt_logits(lm, args.prompt) - ref_logits).abs().max().item()
        tokens = greedy(lm, args.prompt, args.tokens)
        leading = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), len(tokens))
        same = sum(a == b for a, b in zip(tokens, ref_tokens))
        print(f"{dtype:9s} max |logit - fp32| {error:.3f}; first {leading} of {args.tokens} tokens identical, "
              f"{same} positions agree")


if __name__ == "__main__":
    main()
