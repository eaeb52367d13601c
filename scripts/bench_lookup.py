"""Prompt-lookup decoding against plain greedy decoding, side by side in one process.

    python scripts/bench_lookup.py                     # the default model, --lookup 8
    python scripts/bench_lookup.py --lookup 4 --reps 5 --tokens 128

Input-grounded tasks (repeat a paragraph, edit one lightly, quote from a text, fix a code
snippet) and free generation (a story, an explanation), each as a chat message, greedy, up to
--tokens new tokens (the model's own end of sequence ends a run, as it would for a user). For
each task the two settings run alternately --reps times; it prints the median tokens/s of each
(new tokens over the whole generation, first token included), the ratio, the ratio of decode
rates alone (the tokens after the first), and the share of drafted tokens accepted, and checks
that both gave the same text. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgen  # noqa: E402
from lmgen.engine.generation import Finished, GenerationSettings  # noqa: E402
from lmgen.formats.paths import resolve_model  # noqa: E402

PARAGRAPH = ("The history of Paris begins with a small settlement on an island in the Seine. Over the centuries it "
             "grew into the capital of France, a centre of art, science and trade, and one of the largest cities in "
             "Europe. Its streets, bridges and monuments tell the story of kings, revolutions and artists.")
CODE = '''def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(value)
'''
TASKS = {
    "repeat": f"Repeat this paragraph exactly:\n\n{PARAGRAPH}",
    "edit": f"Rewrite this paragraph, replacing Paris with Lyon and changing nothing else:\n\n{PARAGRAPH}",
    "quote": f"{PARAGRAPH}\n\nQuote the sentence of the text above that mentions the Seine, word for word.",
    "fix code": f"Fix the bug in this Python function and give the whole corrected function:\n\n{CODE}",
    "free: story": "Write a short story about a dragon who learns to bake bread.",
    "free: explain": "Explain how a refrigerator works.",
}


def run(lm, prompt, settings) -> tuple[float, float, Finished]:
    """(new tokens / whole generation, tokens after the first / their time, the record)."""
    start = time.perf_counter()
    done = next(e for e in lmgen.generate(lm, prompt, settings) if isinstance(e, Finished))
    decode = (done.new_tokens - 1) / done.decode_seconds if done.decode_seconds > 0 else 0.0
    return done.new_tokens / (time.perf_counter() - start), decode, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or GGUF file (default: lmgen's default model)")
    parser.add_argument("--lookup", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    lm = lmgen.load(resolve_model(args.model))
    plain = GenerationSettings(max_new_tokens=args.tokens)
    drafted = dataclasses.replace(plain, lookup=args.lookup)
    print(f"model {lm.path}, greedy, up to {args.tokens} new tokens, --lookup {args.lookup} against none, "
          f"{args.reps} alternating runs each (medians of new tokens / whole generation)")
    print(f"{'task':15}{'tokens':>7}{'plain tok/s':>13}{'lookup tok/s':>14}{'ratio':>8}{'decode ratio':>14}"
          f"{'accepted':>10}  same text")
    for name, text in TASKS.items():
        prompt = [{"role": "user", "content": text}]
        run(lm, prompt, plain), run(lm, prompt, drafted)  # warm-up
        rates = {key: [] for key in ("plain", "lookup", "plain decode", "lookup decode")}
        last = {}  # each setting's last record
        for _ in range(args.reps):
            for key, settings in (("plain", plain), ("lookup", drafted)):
                whole, decode, done = run(lm, prompt, settings)
                rates[key].append(whole)
                rates[key + " decode"].append(decode)
                last[key] = done
        p, q = statistics.median(rates["plain"]), statistics.median(rates["lookup"])
        dp, dq = statistics.median(rates["plain decode"]), statistics.median(rates["lookup decode"])
        a, b = last["plain"], last["lookup"]
        share = b.accepted / b.drafted if b.drafted else 0.0
        print(f"{name:15}{a.new_tokens:7d}{p:13.1f}{q:14.1f}{q / p:7.2f}x{dq / dp:13.2f}x{share:9.0%}  "
              f"{a.token_ids == b.token_ids}")


if __name__ == "__main__":
    main()
