"""The gate in front of ``lmgen serve``'s routes (a pure ASGI middleware, outermost): what a
request must be before any route sees it, OpenAI's error object for every refusal and failure,
and one access-log line and one ``lmgen_requests`` count per response.

In order: a loopback server answers only a loopback ``Host``, and a page only from an allowed
``Origin`` (403, ``origins``); a CORS preflight is answered for the ``--cors-origins``; with
``--api-key`` every route but ``/health`` needs ``Authorization: Bearer KEY`` or Anthropic's
``x-api-key: KEY`` (401); a POST
must be ``application/json`` (415) and no longer than ``--max-body`` (413, from
``Content-Length`` before a byte is read, and again while the body is read, which stops at the
limit). An exception no route caught becomes a 500 and one ``lmgen: error:`` line, never a
traceback; if the response had already begun (a stream) it is ended where it stands.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import sys
import time

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import compile_path

from lmgen.errors import printable
from lmgen.serve import openai_api as api
from lmgen.serve.origins import host_allowed, normalized, origin_allowed

OPEN = ("/health",)  # answered without the API key (a load balancer's probe has none)
CLIENT_GONE = 499  # nginx's status for a request its client abandoned before the answer


def error_response(exc: api.APIError) -> JSONResponse:
    """An APIError as OpenAI's error object (503s say when to try again)."""
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def refused(request: Request, exc: api.APIError) -> JSONResponse:
    """Starlette's handler for an APIError a route raised."""
    return error_response(exc)


async def not_routed(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's 404 and 405 (plain text by default) as OpenAI's error object."""
    where = f"{request.method} {printable(request.url.path, 200)}"
    message = f"Invalid URL ({where})" if exc.status_code == 404 else f"{where}: {exc.detail}"
    error = api.APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def too_large(limit: int) -> api.APIError:
    return api.APIError(413, f"the request body is larger than {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read as it arrives and refused (413) as soon as it passes ``limit`` bytes: a
    400 MB upload is never held, only the chunk that crossed the line."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def header(scope, name: bytes) -> str | None:
    """A request header's first value (latin-1, as HTTP's bytes are), None if absent."""
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


class Exchange:
    """One response on its way out: its status (for the log and the metric), whether it has
    begun and ended (a failure after the start can only end it), and the CORS header for an
    origin that gets one, on every answer, refusals included (a page can read why)."""

    def __init__(self, send, allow_origin: str | None):
        self.raw_send, self.allow_origin = send, allow_origin
        self.status, self.started, self.ended = 0, False, False

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.started = message["status"], True
            if self.allow_origin and not any(k == b"access-control-allow-origin" for k, _ in message["headers"]):
                message = {**message, "headers": [*message["headers"], (b"vary", b"Origin"),
                                                  (b"access-control-allow-origin", self.allow_origin.encode())]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self.raw_send(message)

    async def answer(self, exc: api.APIError, scope, receive) -> None:
        if self.started:
            return await self.end()
        await error_response(exc)(scope, receive, self.send)

    async def end(self) -> None:
        """Close a response that has begun: what was sent stands, the client sees it end."""
        if self.started and not self.ended:
            with contextlib.suppress(Exception):  # the connection may be gone too
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class Guard:
    """Pure ASGI middleware (see the module's docstring); ``server`` gives the options and metrics,
    ``routes`` the paths counted under their own name (any other is "other")."""

    def __init__(self, app, server, routes: tuple[str, ...]):
        self.server, self.routes, self.options = server, routes, server.options
        # routes with parameters: (their pattern, the name counted: /v1/models/{id})
        self.templates = [compile_path(route)[:2] for route in routes if "{" in route]
        self.cors = tuple(normalized(origin) for origin in self.options.cors_origins)
        self.app = CORSMiddleware(app, allow_origins=self.cors, allow_methods=["GET", "POST"],
                                  allow_headers=["*"]) if self.cors else app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, exchange = time.perf_counter(), Exchange(send, self._cors_origin(scope))
        try:
            self._admit(scope)
            await self.app(scope, self._bounded(receive), exchange.send)
        except api.APIError as exc:
            await exchange.answer(exc, scope, receive)
        except ClientDisconnect:
            exchange.status = exchange.status or CLIENT_GONE
        except Exception as exc:  # a bug, not the client's doing: one line, and the client still hears
            _error_line(f"{scope['method']} {scope['path']}: {type(exc).__name__}: {exc}")
            await exchange.answer(api.APIError(500, "the server failed; see its log", kind="server_error"),
                                  scope, receive)
        finally:
            self._record(scope, exchange.status, start)

    def _record(self, scope, status: int, start: float) -> None:
        route = self._route(scope["path"])
        self.server.metrics.requests.labels(route, str(status)).inc()
        with contextlib.suppress(OSError):  # stderr gone: the request was still served
            sys.stderr.write(f"lmgen: {scope['method']} {printable(scope['path'], 200)} {status} "
                             f"{(time.perf_counter() - start) * 1000:.0f} ms\n")

    def _route(self, path: str) -> str:
        """The route a path is counted under: its own, its template's, else "other" (a scan of
        paths never grows the metric)."""
        if path in self.routes:
            return path
        return next((name for pattern, name in self.templates if pattern.match(path)), "other")

    def _cors_origin(self, scope) -> str | None:
        """What Access-Control-Allow-Origin says to this request's page (None: no header)."""
        origin = header(scope, b"origin")
        if origin is None or not self.cors:
            return None
        return "*" if "*" in self.cors else origin if normalized(origin) in self.cors else None

    def _admit(self, scope) -> None:
        if not host_allowed(header(scope, b"host"), self.options.host):
            raise api.APIError(403, "this server answers only requests to a loopback host name (127.0.0.1, "
                               "localhost, [::1])", kind="permission_error", code="host_not_allowed")
        origin = header(scope, b"origin")
        if origin is not None and not origin_allowed(origin, self.cors):
            raise api.APIError(403, f"requests from the web page {printable(origin, 100)!r} are not allowed "
                               "(see --cors-origins)", kind="permission_error", code="origin_not_allowed")
        if self.cors and scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method"):
            return  # a CORS preflight: CORSMiddleware answers it, and it never carries a key
        self._authorize(scope)
        if scope["method"] == "POST":
            self._check_body(scope)

    def _authorize(self, scope) -> None:
        key = self.options.api_key
        if not key or scope["path"] in OPEN:
            return
        scheme, _, given = (header(scope, b"authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer":  # Anthropic's clients send theirs as x-api-key
            given = header(scope, b"x-api-key") or ""
        digest = hashlib.sha256  # equal lengths: the comparison's time says nothing about the key
        if not hmac.compare_digest(digest(given.strip().encode()).digest(), digest(key.encode()).digest()):
            raise api.APIError(401, "invalid API key: send Authorization: Bearer <key> (or x-api-key: <key>)",
                               kind="authentication_error", code="invalid_api_key")

    def _check_body(self, scope) -> None:
        media = (header(scope, b"content-type") or "").partition(";")[0].strip().lower()
        if media != "application/json":
            raise api.APIError(415, "the request body must be JSON, sent with Content-Type: application/json",
                               code="unsupported_media_type")
        length = (header(scope, b"content-length") or "").strip()
        if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > self.options.max_body):
            raise too_large(self.options.max_body)  # (a malformed length is h11's to refuse)

    def _bounded(self, receive):
        """``receive``, refusing (413) the message that takes the body past ``--max-body``: however
        a route reads its body, it never holds more."""
        limit, seen = self.options.max_body, [0]

        async def bounded():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise too_large(limit)
            return message

        return bounded


def _error_line(text: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"lmgen: error: {printable(text, 300)}\n")
