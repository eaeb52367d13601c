"""Whole-process start-up of the lmgen command, side by side with its floor.

    python scripts/bench_startup.py                  # 7 rounds
    python scripts/bench_startup.py --reps 11 --transformers

Each round runs, one after another, fresh processes of:
  torch        python -c "import torch": no command that runs a model can beat this
  help         lmgen --help
  inspect      lmgen inspect MODEL
  generate     lmgen generate "The cat sat" -n 1 (the default model: its Q4_1 GGUF file as
               stored): seconds to the first byte of the generated text on stdout, and to the
               process's exit
  generate fp32  the same with --dtype float32 (the file's fp32 expansion)
  transformers (with --transformers) the same one token with transformers: load model and
               tokenizer from the same directory, generate, print; first byte and exit
and prints the medians. The last line gives the first token's time and the ratio to the
torch import, which the machine's noise moves together. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmgen.formats.paths import resolve_model  # noqa: E402

PROMPT = "The cat sat"
TRANSFORMERS_ONE_TOKEN = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
ids = tokenizer(sys.argv[2], return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=1, do_sample=False)
sys.stdout.write(tokenizer.decode(out[0, ids.shape[1]:]))
sys.stdout.flush()
"""


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to exit) of a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = process.stdout.read(1)
    first_at = time.perf_counter() - start
    process.stdout.read()
    if process.wait() != 0 or not first:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode})")
    return first_at, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or GGUF file (default: lmgen's default model)")
    parser.add_argument("--reps", type=int, default=7, help="rounds")
    parser.add_argument("--transformers", action="store_true", help="also time transformers")
    args = parser.parse_args()
    model = str(resolve_model(args.model))
    lmgen = str(Path(sys.executable).parent / "lmgen")
    commands = {
        "torch": [sys.executable, "-c", "import torch; print('ok')"],
        "help": [lmgen, "--help"],
        "inspect": [lmgen, "inspect", model],
        "generate": [lmgen, "generate", PROMPT, "-n", "1", "--model", model],
        "generate fp32": [lmgen, "generate", PROMPT, "-n", "1", "--model", model, "--dtype", "float32"],
    }
    if args.transformers:
        from lmgen.formats.gguf.index import expanded

        checkpoint = str(expanded(Path(model))) if model.endswith(".gguf") else model
        commands["transformers"] = [sys.executable, "-c", TRANSFORMERS_ONE_TOKEN, checkpoint, PROMPT]
    print(f"model {model}, {os.cpu_count()} CPUs, {args.reps} rounds (+1 warm-up), medians in seconds")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for round_ in range(args.reps + 1):
        for name, command in commands.items():
            result = timed(command)
            if round_:
                results[name].append(result)
    median = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
              for name, runs in results.items()}
    for name, (first, total) in median.items():
        print(f"{name:13s} first output {first:6.3f}   exit {total:6.3f}")
    torch_s, (first_token, _) = median["torch"][0], median["generate"]
    line = f"first token {first_token:.2f} s; first token / import torch {first_token / torch_s:.2f}"
    if args.transformers:
        line += f"; transformers / lmgen first token {median['transformers'][0] / first_token:.2f}"
    print(line)


if __name__ == "__main__":
    main()
