"""Many prompts at once: aggregate tokens/s of continuous batching against one at a time.

    python scripts/bench_batch.py                          # default model, fp32 and int8
    python scripts/bench_batch.py --sizes 1,16 --tokens 64 --dtypes float32,q8,stored
    python scripts/bench_batch.py --prompts 64 --tokens 64 --sizes 1,2,4,8,16,32 --transformers

The same prompts of mixed lengths (greedy, end-of-sequence ignored by giving every prompt the
same token budget through a stop-free run) go through ``batching.generate_many`` at each batch
size, in turn, in one process; each line gives the aggregate generated tokens/s (all prompts'
new tokens over the whole job's wall time, prefills included), its ratio to batch size 1 in
this run, the share of the wall time spent in batched decode steps (the rest: prefills of
joining prompts, sampling, detokenizing) and the KV-cache memory each extra row costs. ``--transformers`` adds the same job
through transformers' ``generate`` with left-padded batches of 16. It reports; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmgen.engine.batching import generate_many  # noqa: E402
from lmgen.engine.generation import Finished, GenerationSettings, load  # noqa: E402
from lmgen.formats.paths import resolve_model  # noqa: E402

WORDS = ("the cat sat on a mat while rain fell over quiet hills and people walked home talking about "
         "music science history and the long summer ahead").split()


def mixed_prompts(count: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))).capitalize() for _ in range(count)]


def run_lmgen(lm, prompts: list[str], tokens: int, batch_size: int) -> tuple[float, float, float]:
    """(aggregate generated tokens/s, share of the time in decode steps, tokens/s in the decode
    loop: the tokens the steps chose over the steps' time)."""
    settings = GenerationSettings(max_new_tokens=tokens)
    lm.eos_ids = frozenset()  # every prompt generates its full budget: the same work at every size
    decode_step, in_steps, step_tokens = lm.model.decode_step, [0.0], [0]

    def timed_step(*args):
        begin = time.perf_counter()
        logits = decode_step(*args)
        in_steps[0] += time.perf_counter() - begin
        step_tokens[0] += logits.shape[0]
        return logits

    lm.model.decode_step = timed_step
    start, generated = time.perf_counter(), 0
    try:
        for event in generate_many(lm, prompts, settings, batch_size=batch_size):
            if isinstance(event, Finished):
                generated += event.new_tokens
    finally:
        del lm.model.decode_step
    wall = time.perf_counter() - start
    return generated / wall, in_steps[0] / wall, step_tokens[0] / in_steps[0]


def run_transformers(path: Path, prompts: list[str], tokens: int, batch_size: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    start, generated = time.perf_counter(), 0
    for i in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        generated += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--dtypes", default="float32,int8")
    parser.add_argument("--transformers", action="store_true")
    args = parser.parse_args()
    path = resolve_model(args.model)
    prompts = mixed_prompts(args.prompts)
    for dtype in args.dtypes.split(","):
        lm = load(path, dtype=None if dtype == "stored" else dtype)
        cfg = lm.config
        row_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * 256  # the engine's first cache: 256 positions
        run_lmgen(lm, prompts[:2], 4, 2)  # warm-up: kernels built, pages touched
        base = loop_base = None
        print(f"{dtype}: {len(prompts)} prompts × {args.tokens} new tokens, greedy")
        for size in map(int, args.sizes.split(",")):
            rate, in_steps, in_loop = run_lmgen(lm, prompts, args.tokens, size)
            base, loop_base = base or rate, loop_base or in_loop
            print(f"  batch {size:3}  {rate:7.1f} tokens/s  {rate / base:5.2f}x batch 1   "
                  f"{100 * in_steps:3.0f}% in decode steps   decode loop {in_loop:7.1f} tokens/s "
                  f"{in_loop / loop_base:5.2f}x   KV cache {row_bytes / 2**20:.1f} MiB per row")
    if args.transformers:
        rate = run_transformers(path, prompts, args.tokens, 16)
        print(f"transformers fp32, left-padded batches of 16: {rate:.1f} tokens/s")


if __name__ == "__main__":
    main()
