"""lmgen serve's peak memory with many streams at once, each allowed the whole context.

    python scripts/bench_serve_memory.py --model /tmp/mixes/llama-1b-q4_k_m.gguf
    python scripts/bench_serve_memory.py --model FILE --streams 16 --tokens 256 -- --kv-cache-mib 1024

Starts ``lmgen serve -m FILE --max-batch STREAMS`` (arguments after ``--`` are passed on), sends
STREAMS streaming completions at once, each with ``max_tokens`` the whole context left after its
prompt, reads --tokens tokens of each and closes them, then reports the server's peak resident
memory (VmHWM) beside the file's size, and the streams' aggregate tokens/s. ``LMGEN_SOURCE``
runs another checkout of lmgen (``PYTHONPATH``), for a before/after. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_healthy(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"lmgen serve did not start: {proc.stderr.read().decode()[-2000:]}")


def stream(url: str, prompt: str, max_tokens: int, tokens: int, counts: list, i: int) -> None:
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        for line in response:
            if line.startswith(b"data: {"):
                counts[i] += 1
                if counts[i] >= tokens:
                    return  # closing the connection ends the request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="tokens read from each stream before closing it")
    parser.add_argument("--context", type=int, help="the model's context (default: read with lmgen inspect)")
    parser.add_argument("serve_args", nargs="*", help="more arguments for lmgen serve (after --)")
    args = parser.parse_args()
    env = dict(os.environ)
    if os.environ.get("LMGEN_SOURCE"):
        env["PYTHONPATH"] = os.environ["LMGEN_SOURCE"]
    context = args.context or json.loads(subprocess.run(
        [sys.executable, "-m", "lmgen", "inspect", "--json", args.model], capture_output=True, env=env, check=True,
        text=True).stdout)["config"]["max_context"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "lmgen", "serve", "-m", args.model, "--port", str(port),
                             "--max-batch", str(args.streams), "--prefix-cache", "0", *args.serve_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_healthy(url, proc)
        prompts = [f"Story number {i}: once upon a time, in a land far away," for i in range(args.streams)]
        counts = [0] * args.streams
        threads = [threading.Thread(target=stream, args=(url, p, context - 64, args.tokens, counts, i))
                   for i, p in enumerate(prompts)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        peak, size = peak_rss(proc.pid), Path(args.model).stat().st_size
        print(f"{args.streams} streams of max_tokens {context - 64} (context {context}), {args.tokens} tokens read "
              f"from each: {sum(counts) / seconds:.1f} tokens/s in all")
        print(f"peak RSS {peak / 1e9:.2f} GB; file {size / 1e9:.2f} GB; peak - file {(peak - size) / 1e9:.2f} GB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
