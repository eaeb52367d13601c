"""lmgen serve's latency while others' work arrives: a long prompt joining running streams, and
/health while a huge prompt is tokenized.

    python scripts/bench_serve_latency.py                  # the default model
    python scripts/bench_serve_latency.py --long 3000 --streams 4 --health-streams 32

1. ``--streams`` clients stream greedy tokens; once each has its first token, a ``--long``-token
   prompt is sent. Reported: the streams' largest gap between two tokens while the long prompt
   is prefilled, and the long prompt's time to first token — against the same prompt sent to the
   idle server (its time alone), in the same run.
2. ``--health-streams`` clients stream while a 1 MB prompt is posted (refused: too long for
   the context, after it is tokenized); /health is polled throughout: its p50/p99/max.

Starts its own ``lmgen serve`` (``--serve-args`` for more options). It reports; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import start_server  # noqa: E402 (it honours LMGEN_EXE: another build)


def post(url: str, body: dict, timeout: float = 900):
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def stream(url: str, prompt: str, tokens: int, stamps: list, started: threading.Event | None = None,
           stop: threading.Event | None = None) -> None:
    """Stream a completion, stamping each chunk's arrival; leave once ``stop`` is set."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    with post(url, body) as response:
        for line in response:
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"]:
                stamps.append(time.perf_counter())
                if started is not None:
                    started.set()
            if stop is not None and stop.is_set():
                return


def time_to_first_token(url: str, prompt: str) -> float:
    stamps: list = []
    start = time.perf_counter()
    stream(url, prompt, 1, stamps)
    return stamps[0] - start


def long_prompt_round(url: str, streams: int, long_prompt: str) -> dict:
    alone = time_to_first_token(url, long_prompt + " alone")
    stamps = [[] for _ in range(streams)]
    events, stop = [threading.Event() for _ in range(streams)], threading.Event()
    threads = [threading.Thread(target=stream, args=(url, f"Story {i}: once upon a time", 4000, stamps[i], events[i],
                                                     stop))
               for i in range(streams)]
    for t in threads:
        t.start()
    for e in events:
        e.wait()
    start = time.perf_counter()
    joined = time_to_first_token(url, long_prompt + " joined")
    end = time.perf_counter()
    stop.set()
    for t in threads:
        t.join()
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:]) if b >= start and a <= end]
    return {"alone": alone, "joined": joined, "max_gap": max(gaps)}


def health_round(url: str, streams: int, tokens: int) -> list[float]:
    threads = [threading.Thread(target=stream, args=(url, f"Tale {i}", tokens, [])) for i in range(streams)]
    for t in threads:
        t.start()
    huge = threading.Thread(target=lambda: _refused(url, "word " * 200_000))
    times, done = [], threading.Event()
    huge.start()
    waiter = threading.Thread(target=lambda: (huge.join(), [t.join() for t in threads], done.set()))
    waiter.start()
    while not done.is_set():
        start = time.perf_counter()
        urllib.request.urlopen(url + "/health", timeout=30).read()
        times.append(time.perf_counter() - start)
        time.sleep(0.01)
    return sorted(times)


def _refused(url: str, prompt: str) -> None:
    try:
        post(url, {"prompt": prompt, "max_tokens": 1}).read()
    except urllib.error.HTTPError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", type=int, default=3000, help="tokens of the long prompt (about)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--health-streams", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-args", default="")
    args = parser.parse_args()
    server, url = start_server("--max-batch", str(max(args.health_streams, 8)), "--max-body", str(4 << 20),
                               "--prefix-cache", "0", *args.serve_args.split())
    try:
        long_prompt = " ".join(f"w{i % 97}" for i in range(args.long // 2))
        with post(url, {"prompt": long_prompt, "max_tokens": 1}) as response:
            print(f"long prompt: {json.load(response)['usage']['prompt_tokens']} tokens", flush=True)
        time_to_first_token(url, "warm-up " + long_prompt)  # (a fresh server's first long prompt runs slower)
        rounds = []
        for r in range(args.rounds):
            result = long_prompt_round(url, args.streams, f"{r} {long_prompt}")
            rounds.append(result)
            print(f"round {r}: long prompt alone {result['alone']:.2f} s, joining {args.streams} streams "
                  f"{result['joined']:.2f} s ({result['joined'] / result['alone']:.2f}x); streams' largest gap "
                  f"{result['max_gap'] * 1000:.0f} ms", flush=True)
        ratio = statistics.median(r["joined"] / r["alone"] for r in rounds)
        gap = statistics.median(r["max_gap"] for r in rounds)
        print(f"median: joined/alone {ratio:.2f}x, largest gap {gap * 1000:.0f} ms")
        times = health_round(url, args.health_streams, 64)
        pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
        print(f"/health during {args.health_streams} streams and a 1 MB prompt: {len(times)} polls, "
              f"p50 {pick(0.5) * 1000:.1f} ms, p99 {pick(0.99) * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
