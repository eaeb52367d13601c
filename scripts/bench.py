"""lmgen against transformers' generate, side by side in one process.

    python scripts/bench.py                       # default model, fp32 both
    python scripts/bench.py --dtype bfloat16      # lmgen bf16 weights vs transformers fp32
    python scripts/bench.py --dtype q8 --tokens 64 --reps 3
    python scripts/bench.py --loaded              # lmgen alone vs beside busy processes
    python scripts/bench.py --dtypes bfloat16,q8,q4,stored   # lmgen's dtypes against each other
    python scripts/bench.py --dtypes stored,/tmp/mixes/q4_k_m.gguf  # GGUF files (scripts/make_mixes.py)
    python scripts/bench.py --json-schema schema.json         # constrained decoding against none

Same model directory, same prompt, greedy, the same number of new tokens (end-of-sequence
ignored) and the same torch thread count for both; one warm-up run each, then --reps runs
alternating between the two. Prints medians of time to first token, prefill tokens/s and
decode tokens/s, and, as its last line, the ratios lmgen / transformers. It reports; it
asserts nothing.

With --loaded it measures how lmgen holds up on a busy machine instead: ``lmgen generate``
runs as a fresh process, alternately on a quiet machine and beside one CPU-burning process
(a busy Python loop) per available core (``--busy N``: N of them); it prints the median decode
tokens/s of each and the loaded/quiet ratio, for --tokens new tokens and for a short run of 32
(which must adapt within its first steps). ``--variant NAME:VAR=VALUE,...`` adds runs with other environment
settings (e.g. ``spinning:OMP_WAIT_POLICY=active``, OpenMP's busy-waiting threads), or another
checkout of lmgen (``before:LMGEN_SOURCE=/path/to/checkout``).

With --dtypes it compares lmgen's weight formats instead (``stored``: a GGUF model's blocks as
they are, the default model's Q4_1): decode tokens/s of each, runs interleaved, beside the
machine's read bandwidth measured between them (a sum over a 1 GB array with --threads
threads); each line gives the weights read per second and the fraction of that bandwidth, and
its decode rate as a ratio to the first dtype's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmgen  # noqa: E402
from lmgen.engine.generation import Finished, GenerationSettings  # noqa: E402
from lmgen.formats.paths import resolve_model  # noqa: E402

PROMPT = (
    "The history of Paris begins with a small settlement on an island in the Seine. Over the "
    "centuries it grew into the capital of France, a centre of art, science and trade, and one of "
    "the largest cities in Europe. Its streets, bridges and monuments tell the story of"
)


@dataclasses.dataclass
class Run:
    ttft: float  # seconds from the call to the first new token
    decode: float  # seconds for the remaining tokens
    prompt_tokens: int
    new_tokens: int

    @property
    def prefill_rate(self) -> float:
        return self.prompt_tokens / self.ttft

    @property
    def decode_rate(self) -> float:
        return (self.new_tokens - 1) / self.decode


def run_lmgen(lm, tokens: int) -> Run:
    settings = GenerationSettings(max_new_tokens=tokens)
    start = time.perf_counter()
    first = None
    for event in lmgen.generate(lm, PROMPT, settings):
        first = first or time.perf_counter()
        if isinstance(event, Finished):
            end = time.perf_counter()
            return Run(first - start, end - first, event.prompt_tokens, event.new_tokens)
    raise RuntimeError("no Finished event")


class TimingStreamer:
    """transformers streamer that records when each new token arrives."""

    def __init__(self):
        self.times: list[float] = []
        self.calls = 0

    def put(self, value):
        self.calls += 1
        if self.calls > 1:  # the first call carries the prompt
            self.times.append(time.perf_counter())

    def end(self):
        pass


def run_transformers(model, ids, tokens: int) -> Run:
    streamer = TimingStreamer()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             streamer=streamer, pad_token_id=0)
    end = time.perf_counter()
    new = out.shape[1] - ids.shape[1]
    return Run(streamer.times[0] - start, end - streamer.times[0], ids.shape[1], new)


def burn_cores(count: int) -> list[subprocess.Popen]:
    """count processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


# Run the lmgen found in $LMGEN_SOURCE (another checkout) instead of the installed one.
OTHER_SOURCE = ("import os, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
                "sys.path.insert(0, os.environ['LMGEN_SOURCE']); from lmgen.cli.main import main; main(sys.argv[1:])")


def run_cli(path: Path, dtype: str, tokens: int, env: dict) -> float:
    """Decode tokens/s of one `lmgen generate` process (dtype "stored": the file as it is)."""
    exe = [str(Path(sys.executable).parent / "lmgen")]
    if "LMGEN_SOURCE" in env:
        exe = [sys.executable, "-c", OTHER_SOURCE]
    dtype_args = [] if dtype == "stored" else ["--dtype", dtype]
    result = subprocess.run([*exe, "generate", "-m", str(path), *dtype_args, "-n", str(tokens), "--json",
                             PROMPT], capture_output=True, env={**os.environ, **env}, timeout=900, check=True)
    return json.loads(result.stdout)["decode_tokens_per_s"]


SHORT = 32  # new tokens of the short run: a user's one-line question adapts within it or not at all


def loaded(args) -> None:
    from lmgen.resources import available_cores

    path = resolve_model(args.model)
    variants = {"lmgen": {}}
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        variants[name] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    cores = available_cores()
    busy = args.busy or cores
    lengths = (args.tokens, SHORT)
    rates = {(name, n, load): [] for name in variants for n in lengths for load in ("quiet", "loaded")}
    run_cli(path, args.dtype, 8, {})  # warm-up: page cache, compiled kernels
    for _ in range(args.reps):
        for name, env in variants.items():
            for n in lengths:
                rates[name, n, "quiet"].append(run_cli(path, args.dtype, n, env))
                burners = burn_cores(busy)
                try:
                    time.sleep(0.5)
                    rates[name, n, "loaded"].append(run_cli(path, args.dtype, n, env))
                finally:
                    for p in burners:
                        p.kill()
                        p.wait()
    print(f"model {path}  --dtype {args.dtype}, {cores} cores, loaded = {busy} busy processes beside lmgen; "
          f"{args.reps} runs each, alternating (medians, decode tokens/s)")
    print(f"{'':12}{'tokens':>7}{'quiet':>10}{'loaded':>10}{'loaded/quiet':>14}   runs (quiet | loaded)")
    for name in variants:
        for n in lengths:
            quiet, loaded_rate = (statistics.median(rates[name, n, load]) for load in ("quiet", "loaded"))
            runs = " ".join(f"{r:.0f}" for r in rates[name, n, "quiet"]) + " | " + " ".join(
                f"{r:.1f}" for r in rates[name, n, "loaded"])
            print(f"{name:12}{n:7d}{quiet:10.1f}{loaded_rate:10.1f}{loaded_rate / quiet:14.2f}   {runs}")


def read_bandwidth(threads: int, size: int = 1 << 30) -> float:
    """Bytes per second a sum over a large float32 array reads (the best of three)."""
    array = getattr(read_bandwidth, "array", None)
    if array is None:
        array = read_bandwidth.array = torch.ones(size // 4)
    torch.set_num_threads(threads)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        array.sum()
        best = max(best, size / (time.perf_counter() - start))
    return best


def compare_dtypes(args) -> None:
    path = resolve_model(args.model)
    dtypes = args.dtypes.split(",")
    def load(d: str):  # "stored": the model as its file stores it; a .gguf path: that file, as stored
        if d.endswith(".gguf"):
            return lmgen.load(d, dtype=None)
        return lmgen.load(path, dtype=None) if d == "stored" else lmgen.load(path, dtype=d)

    models = {d: dataclasses.replace(load(d), eos_ids=frozenset()) for d in dtypes}
    for lm in models.values():
        run_lmgen(lm, 8)  # warm-up
    rates: dict[str, list[float]] = {d: [] for d in dtypes}
    bandwidth = []
    for _ in range(args.reps):
        for dtype, lm in models.items():
            rates[dtype].append(run_lmgen(lm, args.tokens).decode_rate)
            bandwidth.append(read_bandwidth(args.threads))
    peak = statistics.median(bandwidth)
    print(f"model {path}, {args.tokens} new tokens, greedy, {args.threads} threads, {args.reps} interleaved runs "
          f"(medians); read bandwidth (sum over 1 GB) {peak / 1e9:.1f} GB/s")
    first = statistics.median(rates[dtypes[0]])
    for dtype, lm in models.items():
        rate, per_token = statistics.median(rates[dtype]), lm.model.weight_bytes_per_token()
        print(f"{Path(dtype).stem:18} {rate:7.1f} tokens/s  {rate / first:5.2f}x {dtypes[0]}  {per_token / 1e6:5.0f} MB/token  "
              f"{rate * per_token / 1e9:5.1f} GB/s = {100 * rate * per_token / peak:3.0f}% of bandwidth")


def compare_constraint(args) -> None:
    """Decode tokens/s with --json-schema against none: the default model as stored, a chat
    prompt asking for JSON, greedy; each constrained run is followed by a free run of as many
    tokens (end-of-sequence ignored), --reps pairs, medians."""
    from lmgen.engine.constraint import Constraint
    from lmgen.text.chat import render_chat

    lm = lmgen.load(resolve_model(args.model))
    free_lm = dataclasses.replace(lm, eos_ids=frozenset())
    prompt = render_chat(lm.path, "Describe a person as a JSON record.", None)
    constraint = Constraint.from_options(json_schema=args.json_schema)

    def finished(model, settings: GenerationSettings) -> Finished:
        return next(e for e in lmgen.generate(model, prompt, settings) if isinstance(e, Finished))

    rates: dict[str, list[float]] = {"free": [], "constrained": []}
    shares, counts = [], []
    finished(lm, GenerationSettings(max_new_tokens=8, constraint=constraint))  # warm-up, and the tokenizer built
    for _ in range(args.reps):
        done = finished(lm, GenerationSettings(max_new_tokens=args.tokens, constraint=constraint))
        free = finished(free_lm, GenerationSettings(max_new_tokens=done.new_tokens))
        for name, event in (("constrained", done), ("free", free)):
            rates[name].append((event.new_tokens - 1) / event.decode_seconds)
        shares.append(done.constraint_seconds / (done.prefill_seconds + done.decode_seconds))
        counts.append(done.new_tokens)
    free, constrained = statistics.median(rates["free"]), statistics.median(rates["constrained"])
    print(f"model {lm.path}, --json-schema {args.json_schema}: {statistics.median(counts):.0f} new tokens (median), "
          f"greedy, {args.reps} pairs of runs (medians)")
    print(f"free        {free:7.1f} tokens/s")
    print(f"constrained {constrained:7.1f} tokens/s  {constrained / free:.1%} of free; "
          f"masks {statistics.median(shares):.1%} of the constrained run's time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: lmgen's default model)")
    parser.add_argument("--dtype", default="float32", help="lmgen's --dtype (float32, bfloat16, q8, q4)")
    parser.add_argument("--reference-dtype", default="float32", help="transformers' dtype")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--reps", type=int, default=5, help="timed runs of each")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both")
    parser.add_argument("--loaded", action="store_true", help="quiet vs beside one busy process per core")
    parser.add_argument("--busy", type=int, help="with --loaded: busy processes (default: one per core)")
    parser.add_argument("--variant", action="append", default=[], help="with --loaded: NAME:VAR=VALUE,...")
    parser.add_argument("--dtypes", help="compare these lmgen dtypes (and 'stored') instead of transformers")
    parser.add_argument("--json-schema", help="compare decoding with this schema (a file or inline JSON) to none")
    args = parser.parse_args()
    if args.json_schema:
        return compare_constraint(args)
    if args.loaded:
        return loaded(args)
    if args.dtypes:
        return compare_dtypes(args)

    import transformers

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    if path.suffix == ".gguf":  # transformers loads its fp32 expansion
        from lmgen.formats.gguf.index import expanded

        path = expanded(path)
    lm = lmgen.load(path, dtype=args.dtype)
    lm = dataclasses.replace(lm, eos_ids=frozenset())  # always generate --tokens tokens
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, args.reference_dtype)
    ).eval()
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])

    run_lmgen(lm, 8), run_transformers(reference, ids, 8)  # warm-up
    results: dict[str, list[Run]] = {"lmgen": [], "transformers": []}
    for _ in range(args.reps):
        results["lmgen"].append(run_lmgen(lm, args.tokens))
        results["transformers"].append(run_transformers(reference, ids, args.tokens))

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[name])

    bytes_per_token = lm.model.weight_bytes_per_token()
    print(f"model {path}  prompt {ids.shape[1]} tokens, {args.tokens} new tokens, greedy, "
          f"{args.threads} threads, {args.reps} runs each (medians)")
    print(f"lmgen --dtype {args.dtype}; transformers dtype {args.reference_dtype}; "
          f"lmgen reads {bytes_per_token / 1e6:.0f} MB of weights per token")
    print(f"{'':14}{'TTFT ms':>10}{'prefill tok/s':>15}{'decode tok/s':>14}{'weights GB/s':>14}")
    for name in results:
        decode = median(name, "decode_rate")
        gbps = f"{decode * bytes_per_token / 1e9:14.1f}" if name == "lmgen" else f"{'':14}"
        print(f"{name:14}{median(name, 'ttft') * 1000:10.0f}{median(name, 'prefill_rate'):15.1f}{decode:14.1f}{gbps}")
    ratio = {f: median("lmgen", f) / median("transformers", f) for f in ("decode_rate", "prefill_rate", "ttft")}
    print(f"ratios lmgen/transformers: decode {ratio['decode_rate']:.2f}x, prefill {ratio['prefill_rate']:.2f}x, "
          f"time to first token {ratio['ttft']:.2f}x")


if __name__ == "__main__":
    main()
