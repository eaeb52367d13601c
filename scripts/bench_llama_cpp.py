"""lmgen against llama.cpp on the same GGUF files, interleaved: decode and prefill, side by side.

    python scripts/make_mixes.py /tmp/mixes --llama-1b          # 1B-shaped files (random blocks)
    python scripts/bench_llama_cpp.py /tmp/mixes/llama-1b-q4_k_m.gguf /tmp/mixes/llama-1b-q4_1.gguf \
        --llama-bench /path/to/llama.cpp/build/bin/llama-bench --threads 2 --prompt 512 --tokens 64 --reps 3

llama.cpp's ``llama-bench`` (``--llama-bench``, else $LLAMA_CPP_BIN/llama-bench) measures its
prompt processing (``-p``) and generation (``-n``) of the same sizes, one repetition per call; lmgen
measures the same in this process (a prompt of that many random token ids prefilled, then that
many tokens decoded, end-of-sequence ignored). Rounds alternate between the two, file by file,
and the machine's read bandwidth is measured between them (a sum over 1 GB with --threads
threads). Each line gives medians, lmgen/llama.cpp ratios, the weights one decoded token reads and
that as a share of the bandwidth. On this CPU build llama.cpp with AMX off (its AMX path dies with
SIGILL here): cmake -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" (and CXX). It
reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgen  # noqa: E402
from lmgen.engine.generation import Finished, GenerationSettings  # noqa: E402
from bench import read_bandwidth  # noqa: E402


def lmgen_rates(lm, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of one run."""
    start, first = time.perf_counter(), None
    for event in lmgen.generate(lm, prompt, GenerationSettings(max_new_tokens=tokens)):
        first = first or time.perf_counter()
        if isinstance(event, Finished):
            end = time.perf_counter()
            return len(prompt) / (first - start), (event.new_tokens - 1) / (end - first)
    raise RuntimeError("no Finished event")


def llama_rates(binary: str, path: str, threads: int, prompt: int, tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one llama-bench repetition of each."""
    out = subprocess.run([binary, "-m", path, "-t", str(threads), "-p", str(prompt), "-n", str(tokens), "-r", "1",
                          "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    rate = {("prefill" if r["n_prompt"] else "decode"): r["avg_ts"] for r in rows}
    return rate["prefill"], rate["decode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="GGUF files both run as stored")
    parser.add_argument("--llama-bench", default=str(Path(os.environ.get("LLAMA_CPP_BIN", ".")) / "llama-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens for prefill")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens for decode")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if not Path(args.llama_bench).is_file():
        sys.exit(f"no llama-bench at {args.llama_bench}: pass --llama-bench or set LLAMA_CPP_BIN")
    from lmgen.model.kernels import use_threads

    use_threads(args.threads)
    models = {f: dataclasses.replace(lmgen.load(f), eos_ids=frozenset()) for f in args.files}
    rng = random.Random(0)
    prompts = {f: [rng.randrange(lm.config.vocab_size) for _ in range(args.prompt)] for f, lm in models.items()}
    for f, lm in models.items():
        lmgen_rates(lm, prompts[f][:16], 4)  # warm-up
    runs: dict = {f: {"lmgen": [], "llama": []} for f in args.files}
    bandwidth = []
    for _ in range(args.reps):
        for f, lm in models.items():
            runs[f]["lmgen"].append(lmgen_rates(lm, prompts[f], args.tokens))
            runs[f]["llama"].append(llama_rates(args.llama_bench, f, args.threads, args.prompt, args.tokens))
            bandwidth.append(read_bandwidth(args.threads))
    peak = statistics.median(bandwidth)
    print(f"{args.threads} threads, prompt {args.prompt} tokens, {args.tokens} new tokens, {args.reps} interleaved "
          f"rounds (medians); read bandwidth (sum over 1 GB) {peak / 1e9:.1f} GB/s")
    print(f"{'file':24} {'lmgen decode':>12} {'llama.cpp':>10} {'ratio':>6}  {'lmgen prefill':>13} {'llama.cpp':>10} "
          f"{'ratio':>6}  {'MB/token':>8} {'share':>6}")
    for f, lm in models.items():
        (lp, ld), (cp, cd) = ([statistics.median(r[i] for r in runs[f][who]) for i in (0, 1)] for who in ("lmgen", "llama"))
        per_token = lm.model.weight_bytes_per_token()
        print(f"{Path(f).stem:24} {ld:12.1f} {cd:10.1f} {ld / cd:5.2f}x  {lp:13.1f} {cp:10.1f} {lp / cp:5.2f}x  "
              f"{per_token / 1e6:8.0f} {100 * ld * per_token / peak:5.0f}%")


if __name__ == "__main__":
    main()
