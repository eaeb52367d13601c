"""lmgen serve under load: 1, 4, 16 and 32 concurrent clients, each streaming 64 new tokens.

    python scripts/bench_serve.py                 # the default model
    python scripts/bench_serve.py --clients 1,16 --tokens 32

Starts ``lmgen serve`` on a free port (--max-batch the largest client count), then for each
count runs that many streaming completions at once (greedy, distinct prompts) and reports the
aggregate tokens/s, the p50/p95 time to first token and the p50/p95 time between tokens; then
the whole-process time to the first byte of ``lmgen generate --server`` against running the
same command locally (medians of --reps). It reports; it asserts nothing. Run it on a quiet
machine: the ratios are what carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmgen.cli.remote import chunks  # noqa: E402

EXE = os.environ.get("LMGEN_EXE") or str(Path(sys.executable).parent / "lmgen")  # LMGEN_EXE: another build


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*options: str) -> tuple[subprocess.Popen, str]:
    """``lmgen serve`` (LMGEN_EXE's build) on a free port with ``options``, once healthy; and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([EXE, "serve", "--port", str(port), *options], stderr=subprocess.DEVNULL,
                              env={**os.environ, "LMGEN_API_KEY": ""})
    while True:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return server, url
        except OSError:
            time.sleep(0.2)


def one_stream(url: str, prompt: str, tokens: int, out: list) -> None:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start, stamps, generated = time.perf_counter(), [], 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for chunk in chunks(response):
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    out.append((stamps[0] - start if stamps else float("nan"), [b - a for a, b in zip(stamps, stamps[1:])], generated))


def load_round(url: str, clients: int, tokens: int) -> dict:
    results: list = []
    threads = [threading.Thread(target=one_stream, args=(url, f"Story number {i}: once upon a time", tokens, results))
               for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    firsts = sorted(r[0] for r in results)
    gaps = sorted(g for r in results for g in r[1])
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
    return {"clients": clients, "tokens_per_s": sum(r[2] for r in results) / wall,
            "ttft_p50": pick(firsts, 0.5), "ttft_p95": pick(firsts, 0.95), "itl_p50": pick(gaps, 0.5),
            "itl_p95": pick(gaps, 0.95)}


def first_byte(command: list[str]) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process.stdout.read(1)
    first = time.perf_counter() - start
    process.stdout.read()
    process.wait()
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7, help="rounds of the client start-up comparison")
    parser.add_argument("--serve-args", default="", help="more options for lmgen serve, e.g. '--threads 1'")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    server, url = start_server("--max-batch", str(max(counts)), *args.serve_args.split())
    try:
        load_round(url, 1, 8)  # warm-up
        rows = [load_round(url, c, args.tokens) for c in counts]
        for r in rows:
            print(f"{r['clients']:3d} clients: {r['tokens_per_s']:7.1f} tokens/s; time to first token p50 "
                  f"{r['ttft_p50'] * 1000:6.0f} ms, p95 {r['ttft_p95'] * 1000:6.0f} ms; between tokens p50 "
                  f"{r['itl_p50'] * 1000:5.1f} ms, p95 {r['itl_p95'] * 1000:5.1f} ms")
        client = [EXE, "generate", "--server", url, "-n", "64", "The cat sat"]
        local = [EXE, "generate", "-n", "64", "The cat sat"]
        times = {"server": [], "local": []}
        for _ in range(args.reps):
            times["server"].append(first_byte(client))
            times["local"].append(first_byte(local))
        server_first, local_first = statistics.median(times["server"]), statistics.median(times["local"])
        print(f"whole-process first byte: generate --server {server_first:.3f} s, locally {local_first:.3f} s")
        by = {r["clients"]: r for r in rows}
        if 1 in by and 16 in by:
            print(f"16 clients / 1: {by[16]['tokens_per_s'] / by[1]['tokens_per_s']:.2f}x aggregate tokens/s")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
