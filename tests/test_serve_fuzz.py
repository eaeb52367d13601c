"""A seeded HTTP fuzzer against a real ``lmgen serve``, over raw sockets (so that requests may be
malformed): LMGEN_HTTP_FUZZ_SEED (default 29), LMGEN_HTTP_FUZZ_ITERATIONS (default 2000, about 20 s
on 2 cores; 5000: about 40 s); 6 clients at once, so that the server fills up now and then. Any method,
path and header (right, wrong, duplicated, long, malformed), framing, OpenAI bodies whose fields take
every JSON type (max_tokens 1-4), hostile bodies, gzip, streams, clients that hang up.

Per answer: no 5xx but 503 (with Retry-After); every 4xx/5xx is OpenAI's error object, but for
uvicorn's plain 400 "Invalid HTTP request received.", accepted only for bytes that h11 itself refuses
(``h11_verdict``: a bad request line, header or Content-Length, no Host on HTTP/1.1, a
Transfer-Encoding but chunked, broken chunks) or whose head outgrows its 16 KiB buffer; a complete
request is answered; a 200 completion has OpenAI's shape; a stream is ``data: {...}`` events ending
with ``data: [DONE]`` (an error event may come just before it). After the run: the server lives, frees
every row, answers /health in under 100 ms, and logs no traceback and no error. A failure names the
seed, the case's index and its bytes (``make_case(index, port)`` rebuilds it).
"""

import collections
import contextlib
import gzip
import http.client
import json
import os
import random
import re
import socket
import statistics
import struct
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h11
import pytest
from test_serve import MODEL, Served, rows_in_flight

ITERATIONS = int(os.environ.get("LMGEN_HTTP_FUZZ_ITERATIONS", "2000"))
SEED = int(os.environ.get("LMGEN_HTTP_FUZZ_SEED", "29"))
STALLED = threading.Event()  # a request went unanswered (20 s): the rest are skipped, not waited on
KEY, MAX_BODY, CLIENTS, H11_BUFFER = "fuzz-key", 65536, 6, 16 * 1024
H11_400 = b"Invalid HTTP request received."  # uvicorn's answer to what h11 refuses
ROUTES = ["/health", "/metrics", "/v1/models", "/v1/responses", "/v1/messages", "/v1/chat/completions",
          "/v1/completions"]
AGENT_ROUTES = ("/v1/responses", "/v1/messages")  # the other APIs' adapters: their bodies from a chat's
PATHS = ["/", "/v1", "/v1/nothing", "/health/", "//health", "/v1/%63hat/completions", "/v1/completions%00",
         "/%ff%fe%ed%a0%80", "/v1/models?limit=1&x=%zz", "/v1/completions?stream=true", "/health?" + "q" * 300,
         "/" + "a" * 9000, "/..%2f..%2fetc%2fpasswd", "*", "http://127.0.0.1/health", "/a b", "/caf\xe9", "/\x7f"]
METHODS = ["PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "FUZZ", "get", "G(T", "P\x01", ""]
VERSIONS = ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/1.1 "]
TEXTS = ["hi", "The capital of France is", "é漢字🙂", " ", "\n\n"]
ODD_TEXTS = ["<|im_start|>system\n", "\ud800", "a\udfffb", "\x00\x1b[31m", "", "\u2028\ufeff"]
NUMBERS = [0, 1, -1, 4, 17, 2**64, -(10**30), 0.0, 0.5, -2.5, 1e308, 5e-324]
FIELDS = {  # each known field's sensible values (any JSON value is tried too)
    "temperature": [0, 0.7, 2], "top_p": [0.1, 1], "top_k": [0, 1, 40], "min_p": [0, 0.05],
    "repetition_penalty": [1, 1.3], "frequency_penalty": [0, 0.5], "presence_penalty": [-0.5],
    "seed": [0, 7, 2**64 - 1], "n": [1, 2, 4, 5], "stop": ["\n", [".", "!"], []], "stream": [True, False],
    "stream_options": [{"include_usage": True}], "logprobs": [True, False, 0, 2], "top_logprobs": [0, 3],
    "response_format": [{"type": "text"}, {"type": "json_object"},
                        {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}],
    "lookup": [0, 4], "model": ["m"], "user": ["u"], "tools": [[], [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]],
    "tool_choice": ["none", "auto", "required", {"type": "function", "function": {"name": "f"}}],
    "parallel_tool_calls": [True, False], "chat_template_kwargs": [{"enable_thinking": False}]}
BAD_LIMITS = [0, -1, 1.5, "4", True, [], {}, "", 10**200]  # (a null or a large max_tokens would run long)


@dataclass
class Case:
    index: int
    method: str
    path: str
    raw: bytes
    split: int  # the head is sent in two writes, cut here: h11 must join them
    hang_up: int | None  # the client sends this many bytes and goes (None: it reads the answer)
    may_refuse: bool  # h11 refuses these bytes (or may: a head past its buffer): uvicorn's plain 400 is fine

    def __str__(self) -> str:
        shown = re.sub(rb"(.)\1{40,}", lambda m: m[1] + b"<%d times>" % len(m[0]), self.raw)
        return f"case {self.index} (LMGEN_HTTP_FUZZ_SEED={SEED}), hang-up {self.hang_up}: {shown[:3000]!r}"


class Dice(random.Random):
    """One request's random source, and how wild the request is: the chance of each odd choice
    (0: a well-formed request, whose body fields may still be odd)."""

    wild = 0.0

    def odd(self) -> bool:
        return self.random() < self.wild

    def pick(self, usual, others: list):
        return self.choice(others) if self.odd() else usual


def text(rng: Dice) -> str:
    return "".join(rng.choice(ODD_TEXTS if rng.odd() else TEXTS) for _ in range(rng.randint(1, 3)))


def any_json(rng: Dice, depth: int = 0):
    kinds = [lambda: None, lambda: rng.random() < 0.5, lambda: rng.choice(NUMBERS), lambda: text(rng),
             lambda: [any_json(rng, depth + 1) for _ in range(rng.randint(0, 3))],
             lambda: {rng.choice(["type", "role", "content", text(rng)]): any_json(rng, depth + 1)
                      for _ in range(rng.randint(0, 3))}]
    return rng.choice(kinds[:4] if depth > 2 else kinds)()


def openai_body(rng: Dice, chat: bool) -> dict:
    """A chat or completions body: messages or prompts, max_tokens 1-4, a few fields, sensible or not."""
    body = {"model": MODEL, "max_tokens": rng.randint(1, 4), "stream": rng.random() < 0.4}
    if chat:
        content = lambda: rng.pick(text(rng), [[{"type": "text", "text": text(rng)}], any_json(rng)])  # noqa: E731
        roles = ["system", "assistant", "developer", "tool", None, 1]
        body["messages"] = rng.pick([{"role": rng.pick("user", roles), "content": content()}
                                     for _ in range(rng.randint(1, 3))], [any_json(rng), []])
    else:
        prompts = [text(rng) for _ in range(rng.randint(1, 6))]  # a ticket each: now and then the server is full
        prompt = prompts if rng.random() < 0.25 else prompts[0]
        body["prompt"] = rng.pick(prompt, [any_json(rng), "word " * 9000])  # (the last: longer than the context)
    for name in rng.sample(sorted(FIELDS), rng.randint(0, 5)):
        body[name] = any_json(rng) if rng.random() < max(rng.wild, 0.05) else rng.choice(FIELDS[name])
    if rng.odd():
        body[rng.choice(["max_tokens", "max_completion_tokens"])] = rng.choice(BAD_LIMITS)
    return body


def agent_body(rng: Dice, path: str) -> dict:
    """A Responses or Messages body made from a chat body's parts, sensible or not."""
    chat = openai_body(rng, True)
    tool = {"type": "object", "properties": {"x": {"type": "integer"}}}
    if path == "/v1/responses":
        body = {"model": MODEL, "input": rng.pick(chat["messages"] if rng.random() < 0.5 else text(rng),
                                                  [any_json(rng), [{"type": "function_call_output"}]]),
                "max_output_tokens": chat["max_tokens"], "stream": chat["stream"]}
        if rng.random() < 0.3:
            body.update(tools=[{"type": "function", "name": "f", "parameters": tool}],
                        tool_choice=rng.choice(["auto", "required", "none", {"type": "function", "name": "f"}]))
        if rng.random() < 0.2:
            body["text"] = rng.pick({"format": {"type": "json_schema", "name": "s", "schema": tool}}, [any_json(rng)])
    else:
        blocks = [{"type": "text", "text": text(rng)}, {"type": "tool_result", "tool_use_id": "t", "content": "ok"}]
        body = {"model": MODEL, "max_tokens": chat["max_tokens"], "stream": chat["stream"],
                "messages": rng.pick([{"role": "user", "content": rng.choice([text(rng), blocks[:1]])}],
                                     [any_json(rng), [{"role": "user", "content": blocks}]])}
        if rng.random() < 0.3:
            body.update(tools=[{"name": "f", "input_schema": tool}],
                        tool_choice=rng.pick({"type": rng.choice(["auto", "any", "none"])}, [any_json(rng)]))
        if rng.random() < 0.2:
            body["system"] = rng.pick(text(rng), [any_json(rng)])
    for name in rng.sample(["temperature", "seed", "top_p", "stop"], rng.randint(0, 2)):
        body[name] = any_json(rng) if rng.odd() else rng.choice(FIELDS[name])
    return body


def hostile_body(rng: Dice, valid: bytes) -> bytes:
    depth = rng.choice([63, 64, 65, 1000, 20000])
    return rng.choice([
        lambda: b"", lambda: b"{", lambda: json.dumps(any_json(rng)).encode(),
        lambda: b'{"a":' * depth + b"1" + b"}" * depth, lambda: b"[" * depth,
        lambda: b'{"max_tokens": 1, "prompt": "x", "seed": ' + b"9" * rng.choice([100, 101, 5000]) + b"}",
        lambda: b'{"max_tokens": 1, "prompt": "x", "temperature": ' + rng.choice([b"NaN", b"-Infinity"]) + b"}",
        lambda: b'{"max_tokens": 1, "prompt": "\xff\xfe\x80"}', lambda: rng.randbytes(40),
        lambda: valid.decode().encode("utf-16"), lambda: valid[:rng.randrange(len(valid))],
        lambda: b'{"max_tokens": 1, "prompt": "' + b"x" * (MAX_BODY + rng.choice([0, 1, 5000])) + b'"}',
    ])()


def body_of(rng: Dice, method: str, path: str) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and the headers that say what it is (Content-Type, Content-Encoding)."""
    if method != "POST" and not rng.odd():
        return b"", []
    valid = json.dumps(agent_body(rng, path) if path in AGENT_ROUTES else
                       openai_body(rng, "chat" in urllib.parse.unquote(path))).encode()
    body, headers = (hostile_body(rng, valid) if rng.odd() else valid), []
    if rng.odd() and rng.odd():  # lmgen takes no Content-Encoding: never JSON
        body = gzip.compress(valid) if rng.random() < 0.5 else b"\x1f\x8b" + rng.randbytes(30)
        headers.append(("Content-Encoding", "gzip"))
    types = ["application/json; charset=utf-8", "Application/JSON ;x=1", "text/plain", "", "application/json\x80",
             "application/x-www-form-urlencoded", None]
    content_type = rng.pick("application/json", types)
    return body, headers + ([("Content-Type", content_type)] if content_type is not None else [])


def framing(rng: Dice, body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Content-Length (mostly) or chunks, right (mostly) or wrong."""
    size = len(body)
    if rng.random() < 0.15:
        chunks, at = b"", 0
        while at < size:
            step = rng.randint(1, max(1, size // 2))
            chunks, at = chunks + b"%x\r\n" % step + body[at:at + step] + b"\r\n", at + step
        chunks += b"0\r\n\r\n"
        chunks = rng.pick(chunks, [chunks[:-5], chunks.replace(b"\r\n", b"\n", 1), b"zz\r\n" + chunks, b"5\r\nab\r\n"])
        length = [("Content-Length", str(size))] if rng.odd() else []
        return [("Transfer-Encoding", rng.pick("chunked", ["gzip", "chunked, chunked"]))] + length, chunks
    wrong = [str(size + 7), str(max(0, size - 3)), "-1", "abc", "", "1e3", " 12 ", "99999999999", "9" * 19,
             "9" * 25, f"{size}, {size}", None]
    length = rng.pick(str(size) if body or rng.random() < 0.5 else None, wrong)
    headers = [("Content-Length", length)] if length is not None else []
    return headers + ([("Content-Length", str(size + rng.choice([0, 1])))] if rng.odd() else []), body


def headers_of(rng: Dice, port: int) -> list[tuple[str, str | None]]:
    """Host, Authorization, Connection, and now and then others: duplicated, long, odd or malformed."""
    headers = [("Host", rng.pick(f"127.0.0.1:{port}", ["localhost", f"[::1]:{port}", "evil.example", "", None])),
               ("Authorization", rng.pick(f"Bearer {KEY}", [f"bearer  {KEY} ", "Bearer wrong", "Basic Zm9v", KEY,
                                                             "", "Bearer " + "k" * 5000, None])),
               ("Connection", rng.pick("close", ["keep-alive", "Upgrade", None]))]
    if rng.odd():
        headers.append(("Origin", rng.choice(["http://localhost:5173", "https://evil.example", "null", "\xff"])))
    extras = [("Upgrade", "websocket"), ("Upgrade", "h2c"), ("Expect", "100-continue"), ("Accept", "*/*"),
              ("X-Long", "x" * rng.choice([1000, 8000, 20000])), ("Bad Name", "x"), ("X-Ctl", "a\x00b"),
              ("X-Obs", "caf\xe9"), (" folded", "x"), ("NoColon", None)]
    headers += rng.sample(extras, sum(rng.odd() for _ in range(3)))
    if rng.odd():
        headers.append(rng.choice(headers))  # a duplicate
    return [(name, value) for name, value in headers if value is not None or name == "NoColon"]


def h11_verdict(raw: bytes) -> tuple[bool, bool]:
    """(h11 refuses these bytes, they hold a whole request), as the server's h11 judges them."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            if isinstance(event, h11.EndOfMessage):
                return False, True
    except h11.RemoteProtocolError:
        return True, True
    return False, False


def make_case(index: int, port: int) -> Case:
    """Case ``index`` of the run, from its own Dice (seeded by the run's seed and the index)."""
    rng = Dice(SEED * 1_000_003 + index)
    rng.wild = rng.choice([0, 0, 0.03, 0.1, 0.3])
    path = rng.pick(rng.choice(ROUTES + ROUTES[-2:] * 3), PATHS)  # completions mostly
    method = rng.pick("POST" if path.endswith("completions") or path in AGENT_ROUTES else "GET", METHODS)
    body, body_headers = body_of(rng, method, path)
    frame_headers, body = framing(rng, body)
    headers = headers_of(rng, port) + body_headers + frame_headers
    rng.shuffle(headers)
    lines = [f"{method} {path} {rng.pick('HTTP/1.1', VERSIONS)}"] + [name if value is None else f"{name}: {value}"
                                                                      for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    raw = head + body
    refused, complete = h11_verdict(raw)
    hang_up = None if complete and rng.random() < 0.95 else rng.randrange(len(raw) + 1)
    return Case(index, method, path, raw, rng.randrange(1, len(head)), hang_up, refused or len(head) > H11_BUFFER)


def error_problem(body: bytes) -> str | None:
    """What keeps this body from being OpenAI's error object (None: nothing)."""
    try:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, "not the four keys"
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        return f"not an OpenAI error object ({type(exc).__name__}: {exc}): {body[:300]!r}"
    return None


def counts_ok(usage: dict) -> bool:
    counts = [usage[name] for name in ("prompt_tokens", "completion_tokens", "total_tokens")]
    return all(isinstance(count, int) and count >= 0 for count in counts)


def completion_problem(body: bytes, chat: bool) -> str | None:
    reply = json.loads(body)
    if reply["object"] != ("chat.completion" if chat else "text_completion") or not reply["choices"]:
        return "not a completion"
    for choice in reply["choices"]:
        content = choice["message"]["content"] if chat else choice["text"]
        if content is None and chat and choice["message"].get("tool_calls"):  # a reply of calls only
            content = ""
        if not isinstance(content, str) or not isinstance(choice["index"], int) or not choice["finish_reason"]:
            return f"a bad choice: {choice}"
    return None if counts_ok(reply["usage"]) else f"bad usage: {reply['usage']}"


def stream_problem(body: bytes, chat: bool) -> str | None:
    events = body.decode().split("\n\n")
    if events[-2:] != ["data: [DONE]", ""]:
        return f"the stream does not end with data: [DONE]: ...{body[-300:]!r}"
    for i, event in enumerate(events[:-2]):
        data = json.loads(event.removeprefix("data: ")) if event.startswith("data: ") else None
        if isinstance(data, dict) and "error" in data:
            return error_problem(event[6:].encode()) or (None if i == len(events) - 3 else "events after an error")
        if not isinstance(data, dict) or data["object"] != ("chat.completion.chunk" if chat else "text_completion"):
            return f"not a chunk: {event[:300]!r}"
        if any(not isinstance(c["delta"].get("content", "") if chat else c["text"], str) for c in data["choices"]):
            return f"a bad chunk: {event[:300]!r}"
        if "usage" in data and not counts_ok(data["usage"]):
            return f"bad usage: {data['usage']}"
    return None


def agent_problem(body: bytes, path: str, stream: bool) -> str | None:
    """What keeps a Responses or Messages reply from its API's shape (None: nothing)."""
    if stream:
        kinds = [line.removeprefix("event: ") for line in body.decode().split("\n") if line.startswith("event: ")]
        last = {"/v1/responses": ("response.completed", "response.incomplete", "error"),
                "/v1/messages": ("message_stop", "error")}[path]
        return None if kinds and kinds[-1] in last else f"the stream ends with {kinds[-1:]}: {body[-300:]!r}"
    reply = json.loads(body)
    if path == "/v1/responses":
        usage = reply["usage"]
        ok = reply["object"] == "response" and isinstance(reply["output"], list) and usage["output_tokens"] >= 0
    else:
        ok = reply["type"] == "message" and isinstance(reply["content"], list) and reply["stop_reason"]
    return None if ok else f"not the API's shape: {body[:300]!r}"


def anthropic_error_problem(body: bytes) -> str | None:
    try:
        error = json.loads(body)
        assert error["type"] == "error" and error["error"]["message"] and error["error"]["type"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return error_problem(body)  # the guard's refusals (401, 413, 415) are OpenAI's
    return None


def answer_problem(case: Case, response: http.client.HTTPResponse, body: bytes) -> str | None:
    """What is wrong with this answer to this case (None: nothing)."""
    status = response.status
    if status == 400 and body == H11_400:
        return None if case.may_refuse else "uvicorn's plain 400 for bytes h11 accepts"
    if status >= 500 and status != 503:
        return f"a {status}: {body[:300]!r}"
    if status == 503 and not response.getheader("retry-after"):
        return "a 503 without Retry-After"
    route = urllib.parse.unquote(case.path)
    if status >= 400:
        return None if case.method == "HEAD" else (anthropic_error_problem if route == "/v1/messages"
                                                   else error_problem)(body)
    if case.method == "POST" and status == 200:  # only the completion routes take a POST
        chat = "chat" in route
        stream = (response.getheader("content-type") or "").startswith("text/event-stream")
        if route in AGENT_ROUTES:
            try:
                return agent_problem(body, route, stream)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return f"not the API's shape ({type(exc).__name__}: {exc}): {body[:300]!r}"
        try:
            return (stream_problem if stream else completion_problem)(body, chat)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"not OpenAI's shape ({type(exc).__name__}: {exc}): {body[:300]!r}"
    return None


def send(case: Case, port: int) -> tuple[int | str, str | None]:
    """(the status, or what happened instead; what is wrong, or None)."""
    if STALLED.is_set():
        return "skipped", None
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if case.hang_up is not None:  # sent in part or whole, then gone (with a reset half the time)
            with contextlib.suppress(OSError):  # the server may have answered and closed already
                sock.sendall(case.raw[:case.hang_up])
            if case.index % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "hung up", None
        with contextlib.suppress(OSError):  # an answer before the whole body (a 413, a 400) may close first
            sock.sendall(case.raw[:case.split])
            sock.sendall(case.raw[case.split:])
        response = http.client.HTTPResponse(sock, method="HEAD" if case.method == "HEAD" else "GET")
        try:
            response.begin()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:  # a timeout too
            if isinstance(exc, TimeoutError):
                STALLED.set()
            # The server may answer and close before it has read all (h11 refused the bytes, or a long
            # request's end was not in yet): the kernel then resets, and the answer may be lost.
            lost = isinstance(exc, ConnectionResetError) and (case.may_refuse or len(case.raw) > 60000)
            return type(exc).__name__, None if lost else f"no complete answer ({type(exc).__name__}: {exc})"
        return response.status, answer_problem(case, response, body)


def drained(served: Served) -> list[bytes]:
    """The server's stderr lines, read on a thread as they come (a full pipe would stall it)."""
    lines: list[bytes] = []
    threading.Thread(target=lambda: lines.extend(served.proc.stderr), daemon=True).start()  # (appends each line)
    return lines


def health_ms(port: int) -> float:
    time.sleep(0.1)  # tries spaced a little
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    status = conn.getresponse().status
    conn.close()
    assert status == 200, f"/health answered {status}"
    return (time.perf_counter() - start) * 1000


@pytest.fixture(scope="module")
def run():
    """The whole fuzz run against one server, shared by the tests below: (server, log, cases, outcomes)."""
    served = Served("--max-batch", "4", "--queue", "8", "--max-body", str(MAX_BODY), "--header-timeout", "2",
                    "--api-key", KEY)
    log = drained(served)
    cases = [make_case(i, served.port) for i in range(ITERATIONS)]
    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(lambda case: send(case, served.port), cases))
    print(f"\n{ITERATIONS} requests (LMGEN_HTTP_FUZZ_SEED={SEED}) in {time.monotonic() - start:.1f} s:",
          dict(collections.Counter(str(status) for status, _ in outcomes).most_common()))
    yield served, log, cases, outcomes
    if served.proc.poll() is None:
        served.stop()


def test_every_answer_is_an_openai_reply_or_error_and_never_a_500(run):
    _, _, cases, outcomes = run
    failures = [f"{problem} [{status}] for {case}" for case, (status, problem) in zip(cases, outcomes) if problem]
    assert not failures, f"{len(failures)} bad answers; the first:\n" + "\n".join(failures[:5])


def test_the_server_lives_frees_every_row_and_answers_health_at_once(run):
    served = run[0]
    assert served.proc.poll() is None, "the server is gone"
    deadline = time.monotonic() + 10
    while rows_in_flight(served) != 0:
        assert time.monotonic() < deadline, "rows are still held 10 s after the last request"
        time.sleep(0.1)
    times = [health_ms(served.port) for _ in range(5)]
    assert min(times[:3]) < 100 and statistics.median(times) < 100, f"/health took {times} ms"


def test_the_log_holds_no_traceback_and_no_error(run):
    """Last: it stops the server. No request was the server's failure: no "lmgen: error:" line."""
    served, log, _, _ = run
    assert served.stop() == 0
    text = b"".join(log).decode(errors="replace")
    assert "Traceback" not in text, text[-5000:]
    errors = collections.Counter(line for line in text.splitlines() if line.startswith("lmgen: error:"))
    assert not errors, "\n".join(f"{count} x {line}" for line, count in errors.most_common(10))
