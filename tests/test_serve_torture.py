"""``lmgen serve`` as a careless crowd uses it: 64 streaming clients at once, a third of them
leaving mid-stream, some reading slowly, and SIGTERM while they stream.

Invariant: every client that stays gets a well-formed ending — its stream closes with a
``finish_reason`` (``stop``, ``length``, or ``abort`` when the drain ran out) and ``[DONE]``, or,
queued when the server began to stop, an error object then ``[DONE]`` — never a cut chunked body;
the server exits 0 within its drain, with no traceback in its log.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time

from test_serve import MODEL, Served

CLIENTS = 64


def stream_chat(port: int, seed: int, leave_after: int | None, slow: bool, started: threading.Event,
                tokens: threading.Semaphore) -> dict:
    """One client's stream: what it saw (finish reasons, errors, [DONE]) or that it left."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell story {seed}."}], "max_tokens": 24,
            "temperature": 0.8, "seed": seed, "stream": True}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    seen = {"status": response.status, "reasons": [], "errors": [], "done": False, "left": False, "cut": False}
    events = 0
    try:
        for line in response:
            if not line.strip():
                continue
            started.set()
            assert line.startswith(b"data: "), line
            data = line[6:].strip()
            if data == b"[DONE]":
                seen["done"] = True
                continue
            event = json.loads(data)
            if "error" in event:
                seen["errors"].append(event["error"])
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    tokens.release()
                if choice.get("finish_reason"):
                    seen["reasons"].append(choice["finish_reason"])
            events += 1
            if leave_after is not None and events >= leave_after:
                seen["left"] = True
                break
            if slow:
                time.sleep(0.05)
    except http.client.IncompleteRead:
        seen["cut"] = True
    finally:
        connection.close()
    return seen


def test_64_clients_leaving_reading_slowly_then_sigterm_all_end_well_formed():
    served = Served("--max-batch", "8", "--queue", "64", "--drain-seconds", "2")
    rng = random.Random(7)
    results: list[dict] = [{} for _ in range(CLIENTS)]
    started = [threading.Event() for _ in range(CLIENTS)]
    tokens = threading.Semaphore(0)  # released for each token any client receives

    def client(i: int) -> None:
        leave = rng.randint(1, 6) if i % 3 == 0 else None
        results[i] = stream_chat(served.port, i, leave, slow=i % 5 == 1, started=started[i], tokens=tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for event in started:  # every client is in (its first event arrived) before the signal
        assert event.wait(120)
    for _ in range(16):  # and rows are decoding
        assert tokens.acquire(timeout=120)
    served.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    for t in threads:
        t.join(120)
    code = served.proc.wait(timeout=60)
    took = time.monotonic() - start
    log = served.proc.stderr.read().decode()
    assert code == 0, log[-2000:]
    assert "Traceback" not in log and took < 2 + 5 + 10
    stayed = [r for r in results if not r["left"]]
    assert stayed
    for seen in stayed:
        assert seen["status"] == 200 and seen["done"] and not seen["cut"], seen
        if seen["errors"]:  # queued when the server began to stop: told so
            assert all(e["code"] == "overloaded" and e["type"] == "server_error" for e in seen["errors"]), seen
        else:
            assert seen["reasons"] and set(seen["reasons"]) <= {"stop", "length", "abort"}, seen
    assert any(r["reasons"] for r in stayed)  # some were served to their end before the stop
