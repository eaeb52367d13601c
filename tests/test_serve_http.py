"""``lmgen serve`` at the HTTP level: the gate in front of the routes (``lmgen.serve.guard``:
Host and Origin, the key, media type, body size, failures as OpenAI's error object), and the
server's edges (``lmgen.serve.http``: binding, header deadline, connection cap, SIGPIPE, hostile
bodies, a clean stop). Bodies and logprobs below HTTP: test_serve_bodies.py.

The gate is driven in this process (Starlette's TestClient, or raw ASGI calls where the test
must see what was read); the edges need a real process, started once for the module."""

import asyncio
import json
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from test_serve import EXE, MODEL, Served, free_port

from lmgen.serve.app import ServeOptions, create_app
from lmgen.serve.models import ModelSpec
from lmgen.serve.guard import Guard, read_body
from lmgen.serve.metrics import Metrics

LOCAL = "http://127.0.0.1"


def error_of(response, status: int) -> dict:
    """The OpenAI error object of a response that must have this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def guarded(routes, **options) -> tuple[TestClient, SimpleNamespace]:
    """A tiny Starlette app behind the Guard, as create_app wires it (the model is never loaded)."""
    server = SimpleNamespace(options=ServeOptions((ModelSpec("unused", "unused"),), **options), metrics=Metrics())
    app = Starlette(routes=routes)
    app.add_middleware(Guard, server=server, routes=("/boom", "/echo"))
    return TestClient(app, base_url=LOCAL, raise_server_exceptions=False), server


def requests_metric(server, route: str, status: str) -> float:
    return server.metrics.registry.get_sample_value("lmgen_requests_total", {"route": route, "status": status}) or 0


# ------------------------------------------------------------------------------ the gate, in process


@pytest.fixture
def app_client():
    """create_app's own app, its model not loaded (no lifespan runs): the gate answers first."""
    return TestClient(create_app(ServeOptions((ModelSpec("unused", "unused"),), api_key="s3cret")), base_url=LOCAL)


def test_unknown_routes_and_methods_are_openai_errors(app_client):
    key = {"Authorization": "Bearer s3cret"}
    assert error_of(app_client.get("/v1/nothing", headers=key), 404)["message"] == "Invalid URL (GET /v1/nothing)"
    refused = app_client.get("/v1/chat/completions", headers=key)
    error_of(refused, 405)
    assert refused.headers["allow"] == "POST"


def test_the_key_guards_metrics_too_and_its_scheme_is_any_case(app_client):
    assert app_client.get("/health").status_code == 503  # open: loading
    assert error_of(app_client.get("/metrics"), 401)["code"] == "invalid_api_key"
    assert error_of(app_client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    assert error_of(app_client.get("/metrics", headers={"Authorization": "Basic s3cret"}), 401)
    assert error_of(app_client.get("/metrics", headers={"Authorization": "s3cret"}), 401)
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert app_client.get("/metrics", headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
    assert app_client.get("/v1/models", headers={"Authorization": "bearer  s3cret "}).status_code == 200


@pytest.mark.parametrize("content_type, status", [
    (None, 415), ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("application/jsonx", 415),
    ("application/json", 503), ("Application/JSON; charset=utf-8", 503),  # past the gate: the model is loading
])
def test_a_post_must_be_json(app_client, content_type, status):
    headers = {"Authorization": "Bearer s3cret", **({"Content-Type": content_type} if content_type else {})}
    response = app_client.post("/v1/completions", content=b'{"prompt": "Hi"}', headers=headers)
    error = error_of(response, status)
    assert (error["code"] == "unsupported_media_type") == (status == 415)


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("127.0.0.1:8000", True), ("localhost:8000", True), ("LOCALHOST", True), ("[::1]:8000", True),
    ("127.0.0.2", True), ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example:8000", False), ("0.0.0.0:8000", False),
])
def test_a_loopback_server_answers_only_a_loopback_host(host, allowed):
    """DNS rebinding: the attacker's page reaches 127.0.0.1 under its own name, sent in Host."""
    client, _ = guarded([Route("/echo", lambda r: JSONResponse({}))])
    response = client.get("/echo", headers={"Host": host})
    if allowed:
        assert response.status_code == 200
    else:
        assert error_of(response, 403)["code"] == "host_not_allowed"


def test_a_server_bound_elsewhere_answers_any_host_but_still_checks_origins():
    client, _ = guarded([Route("/echo", lambda r: JSONResponse({}))], host="0.0.0.0")
    assert client.get("/echo", headers={"Host": "my-box.lan:8000"}).status_code == 200
    assert error_of(client.get("/echo", headers={"Origin": "http://evil.example"}), 403)["code"] == "origin_not_allowed"


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost:5173", True), ("http://127.0.0.1:3000", True), ("http://[::1]:8080", True),
    ("http://localhost", True), ("https://app.example", True), ("https://APP.example/", True),
    ("http://app.example", False), ("https://app.example:444", False), ("https://evil.example", False),
    ("null", False), ("http://localhost.evil.example", False), ("file://", False),
])
def test_pages_from_other_sites_are_refused_unless_listed(origin, allowed):
    client, _ = guarded([Route("/echo", lambda r: JSONResponse({}))], cors_origins=("https://app.example",))
    response = client.get("/echo", headers={"Origin": origin})
    if allowed:
        assert response.status_code == 200
    else:
        assert error_of(response, 403)["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in response.headers


def test_listed_origins_get_cors_headers_and_preflight_answers_even_with_a_key():
    client, _ = guarded([Route("/echo", lambda r: JSONResponse({}), methods=["POST"])],
                        cors_origins=("https://app.example",), api_key="k")
    preflight = client.options("/echo", headers={"Origin": "https://app.example",
                                                 "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    post = client.post("/echo", json={}, headers={"Origin": "https://app.example", "Authorization": "Bearer k"})
    assert post.status_code == 200 and post.headers["access-control-allow-origin"] == "https://app.example"
    refusal = client.post("/echo", json={}, headers={"Origin": "https://app.example"})  # the page can read why
    assert error_of(refusal, 401) and refusal.headers["access-control-allow-origin"] == "https://app.example"
    local = client.post("/echo", json={}, headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"})
    assert local.status_code == 200 and "access-control-allow-origin" not in local.headers  # allowed, not listed
    anyone, _ = guarded([Route("/echo", lambda r: JSONResponse({}))], cors_origins=("*",))
    assert anyone.get("/echo", headers={"Origin": "https://x.example"}).headers["access-control-allow-origin"] == "*"


def test_an_unexpected_exception_is_a_500_error_object_and_one_log_line(capsys):
    async def boom(request):
        raise RuntimeError("the engine\nexploded")

    client, server = guarded([Route("/boom", boom)])
    error = error_of(client.get("/boom"), 500)
    assert error["type"] == "server_error"
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "lmgen: error: GET /boom: RuntimeError: the engine\\nexploded" and "Traceback" not in "".join(err)
    assert len(err) == 2 and err[1].startswith("lmgen: GET /boom 500 ")  # and its access line
    assert requests_metric(server, "/boom", "500") == 1


def test_a_stream_that_fails_midway_is_ended_with_what_was_sent(capsys):
    async def pieces():
        yield "data: one\n\n"
        raise ValueError("lost the engine")

    client, server = guarded([Route("/boom", lambda r: StreamingResponse(pieces(), media_type="text/event-stream"))])
    response = client.get("/boom")
    assert response.status_code == 200 and response.text == "data: one\n\n"
    err = capsys.readouterr().err
    assert "lmgen: error: GET /boom: ValueError: lost the engine" in err and "Traceback" not in err
    assert requests_metric(server, "/boom", "200") == 1


def asgi_post(app, headers: list[tuple[bytes, bytes]], chunks) -> tuple[int, dict, int]:
    """POST /echo straight to an ASGI app: (status, JSON body, body messages the app took)."""
    taken, sent = [0], []
    source = iter(chunks)

    async def receive():
        taken[0] += 1
        chunk = next(source, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/echo", "raw_path": b"/echo", "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                                                     *headers]}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), taken[0]


def endless(size: int = 65536):
    """Body chunks for 6.5 MB: more than any limit here, few enough that a test fails, not hangs."""
    for _ in range(100):
        yield b" " * size


def test_a_body_too_large_is_refused_from_its_length_before_a_byte_is_read():
    async def echo(request):
        return JSONResponse({"size": len(await read_body(request, 1000))})

    client, _ = guarded([Route("/echo", echo, methods=["POST"])], max_body=1000)
    status, body, taken = asgi_post(client.app, [(b"content-length", b"400000000")], endless())
    assert status == 413 and taken == 0 and "larger than 1000 bytes" in body["error"]["message"]
    assert asgi_post(client.app, [(b"content-length", b"9" * 5000)], endless())[0] == 413  # not int()'s ValueError
    assert asgi_post(client.app, [(b"content-length", b"2")], [b"{}"])[:2] == (200, {"size": 2})


@pytest.mark.parametrize("reader", ["read_body", "request.body"])
def test_a_body_without_a_length_is_read_only_up_to_the_limit(reader):
    """Chunked (no Content-Length): the reader stops at the limit; and should a route read the
    whole body its own way, the gate's receive stops it there too."""
    async def echo(request):
        data = await (read_body(request, 200_000) if reader == "read_body" else request.body())
        return JSONResponse({"size": len(data)})

    client, _ = guarded([Route("/echo", echo, methods=["POST"])], max_body=200_000)
    status, body, taken = asgi_post(client.app, [], endless())  # 400 MB would come in 6000 of these
    assert status == 413 and body["error"]["message"] == "the request body is larger than 200000 bytes"
    assert taken == 4  # 3 × 64 KiB fit, the 4th crosses the limit: nothing more is read
    assert asgi_post(client.app, [], [b"{", b"}"])[:2] == (200, {"size": 2})


# ------------------------------------------------------------------------- command-line checks


@pytest.mark.parametrize("option, value, message", [
    ("--header-timeout", "0", "header-timeout must be more than 0"), ("--header-timeout", "nan", "header-timeout"),
    ("--max-connections", "0", "max-connections must be >= 1"), ("--drain-seconds", "-1", "drain-seconds must be >= 0"),
    ("--cors-origins", "example.com", "is not an origin"),
    ("--cors-origins", "https://a.example/path", "is not an origin"),
])
def test_bad_new_serve_options_are_one_line(cli, option, value, message):
    result = cli("serve", option, value)
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1 and message in err, err


# ---------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def served():
    served = Served("--header-timeout", "1", "--max-connections", "6", "--max-body", "100000")
    yield served
    served.stop()


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer ends it too)."""
    received = b""
    try:
        while chunk := s.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def get(served, path: str = "/health", headers: str = "Host: 127.0.0.1\r\n") -> bytes:
    """A raw GET on a fresh connection, and all of the answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode())
        return read_all(s)


def healthy(served) -> bool:
    """/health answers 200 (within 10 s: connections just closed count against the cap until the
    server has seen them go)."""
    deadline = time.monotonic() + 10
    while not get(served).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline and served.proc.poll() is None, "the server is gone or stuck"
        time.sleep(0.05)
    return True


def post(served, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(served.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_clients_that_hang_up_at_once_never_end_the_server(served):
    """SIGPIPE: main restores its default (end the process) for every command; serve ignores it."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for reset in (False, True) * 10:
        s = socket.create_connection(("127.0.0.1", served.port))
        if reset:  # close with RST, not FIN: the server's next write fails at once
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(request)
        s.close()
    assert healthy(served) and served.proc.poll() is None


def test_headers_not_sent_in_time_close_the_connection(served):
    for start_of_a_request in (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b""):  # no blank line; nothing
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            start = time.monotonic()
            s.sendall(start_of_a_request)
            assert read_all(s) == b""
            assert 0.8 < time.monotonic() - start < 5
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:  # kept alive, then slow
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += s.recv(65536)
        s.sendall(b"GET /health HTTP/1.1\r\n")
        start = time.monotonic()
        assert s.recv(65536) == b""
        assert time.monotonic() - start < 4  # the header deadline (1 s), not keep-alive's 5 s
    assert healthy(served)


def test_connections_beyond_the_cap_are_answered_503_and_closed(served):
    idle = []
    try:
        for _ in range(6):  # (each would be closed after the header timeout, 1 s)
            idle.append(socket.create_connection(("127.0.0.1", served.port)))
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            answer = read_all(s)  # at once, before it sent anything
        assert answer.startswith(b"HTTP/1.1 503") and b'"code": "overloaded"' in answer
    finally:
        for s in idle:
            s.close()
    assert healthy(served)  # the closed connections are counted out


def test_a_real_server_checks_host_and_origin(served):
    assert get(served, headers="Host: rebound.example:8000\r\n").startswith(b"HTTP/1.1 403")
    assert get(served, headers="Host: localhost\r\nOrigin: https://evil.example\r\n").startswith(b"HTTP/1.1 403")
    assert get(served, headers="Host: localhost\r\nOrigin: http://localhost:5173\r\n").startswith(b"HTTP/1.1 200")


def test_hostile_bodies_are_400s_never_500s(served):
    assert post(served, b"[" * 90_000)[0] == 400
    status, body = post(served, b'{"model": "' + MODEL.encode() + b'", "seed": ' + b"7" * 5000 + b', "messages": []}')
    assert status == 400 and "digits" in body["error"]["message"]
    status, body = post(served, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                            "response_format": {"type": "json_schema",
                                                                "json_schema": {"schema": 5}}}).encode())
    assert status == 400 and body["error"]["param"] == "response_format"
    status, body = post(served, b" " * 200_000)
    assert status == 413
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:  # uvicorn's own 400 (and log line)
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 400")


def test_a_port_in_use_is_one_line_and_exit_4(served):
    result = subprocess.run([EXE, "serve", "--port", str(served.port)], capture_output=True, timeout=120)
    assert result.returncode == 4
    assert result.stderr.decode().splitlines() == [
        f"lmgen: error: cannot listen on 127.0.0.1:{served.port}: Address already in use"]
    nowhere = subprocess.run([EXE, "serve", "--host", "192.0.2.1", "--api-key", "k", "--port", str(free_port())],
                             capture_output=True, timeout=120)  # an address this machine does not have
    assert nowhere.returncode == 4
    assert nowhere.stderr.decode().startswith("lmgen: error: cannot listen on 192.0.2.1:")
    assert len(nowhere.stderr.splitlines()) == 1


def test_sigterm_says_it_is_stopping_and_the_log_has_no_traceback(served):
    """Last: it stops the module's server, after all the above was done to it."""
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    err = served.proc.stderr.read().decode()
    assert "Traceback" not in err and "lmgen: stopping: " in err and err.endswith("lmgen: stopped\n")
    assert all(line.startswith("lmgen: ") for line in err.splitlines()), err
