"""``lmgen serve``'s HTTP server: uvicorn, run by hand so that its edges are lmgen's.

- The socket is bound here, before "listening on" is printed: a port in use, an unknown host or
  a privileged port is one ``lmgen: error: cannot listen on HOST:PORT: reason`` line and exit 4
  (an EnvironmentFailure), not uvicorn's log line and its exit 3.
- A connection must send complete request headers within ``header_timeout`` seconds of opening,
  or of the first byte of its next request (a slow client holding sockets open is closed);
  between requests uvicorn's keep-alive timeout (5 s) applies.
- At most ``max_connections`` are open: one more is answered 503 and closed at once. (uvicorn's
  ``limit_concurrency`` answers 503 only once a request has arrived, so idle sockets would still
  pile up.)
- uvicorn's and asyncio's log records are one ``lmgen: warning:`` or ``lmgen: error:`` line
  each, never a traceback; a client that goes away is not logged at all.
- On SIGTERM or SIGINT, ``on_signal`` is called once on the event loop, before uvicorn's
  graceful shutdown (no new connections, requests in flight given ``drain_seconds`` + 5 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lmgen.errors import EnvironmentFailure, printable

KEEP_ALIVE_SECONDS = 5  # idle time between requests on one connection
DRAIN_GRACE_SECONDS = 5  # beyond the drain, for the last bytes of ended streams to go out
BACKLOG = 2048
_BUSY = json.dumps({"error": {"message": "the server has too many open connections; try again shortly",
                              "type": "server_error", "param": None, "code": "overloaded"}}).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                 b"connection: close\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (the first address the name resolves to, IPv4 first, as
    clients of "localhost" try it first), or one EnvironmentFailure line naming the reason."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = sorted(found, key=lambda info: info[0] != socket.AF_INET)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:  # socket.gaierror included: an unknown name
        raise EnvironmentFailure(f"cannot listen on {authority(host, port)}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart binds while old sockets linger
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise EnvironmentFailure(f"cannot listen on {authority(host, port)}: {exc.strerror or exc}") from None
    return sock


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers and a cap on open connections
    (the subclass made by ``protocol_class`` sets both)."""

    header_timeout = 10.0
    max_connections = 256
    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first bytes of a next request: its headers are due in time too
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in (or it ended)
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400 for bytes h11 refuses — which may come mid-body, while the app is
        already answering the request: the app is told its client is gone (its answer is
        dropped, not a protocol error in the log), and the 400 goes out only if h11 still can
        send one (not after a HEAD's answer, say); the connection closes either way."""
        cycle = getattr(self, "cycle", None)
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        try:
            super().send_400_response(msg)
        except h11.LocalProtocolError:
            pass
        self.transport.close()

    def _arm(self) -> None:
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_class(header_timeout: float, max_connections: int) -> type[GuardedProtocol]:
    return type("LmgenProtocol", (GuardedProtocol,), {"header_timeout": header_timeout,
                                                      "max_connections": max_connections})


class OneLine(logging.Formatter):
    """A log record as one lmgen line: the exception's type and message, never its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = f"{text.rstrip()}: {type(exc).__name__}: {exc}"
        level = "error" if record.levelno >= logging.ERROR else "warning"
        return f"lmgen: {level}: {printable(text, 300)}"


class NoWebSocketAdvice(logging.Filter):
    """uvicorn follows "Unsupported upgrade request" with advice to install a WebSocket library:
    lmgen serves no WebSockets, so the advice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No supported WebSocket library")


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"()": OneLine}},
    "filters": {"advice": {"()": NoWebSocketAdvice}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr",
                            "filters": ["advice"]}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},  # the Guard logs requests
        "asyncio": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


def _loop_exception(loop, context: dict) -> None:
    """asyncio's unhandled errors as one line; a client's connection failing is not worth one."""
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    try:
        sys.stderr.write(f"lmgen: warning: {printable(str(context.get('message', 'asyncio')) + detail, 300)}\n")
    except OSError:
        pass


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_signal`` on the loop before its graceful shutdown begins."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None] | None):
        super().__init__(config)
        self.on_signal, self.signalled, self.loop = on_signal, False, None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(_loop_exception)
        await super().startup(sockets=sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.signalled or self.loop is None or self.on_signal is None:
            return super().handle_exit(sig, frame)  # a second signal (SIGINT: stop at once), or too early
        self.signalled = True
        self.loop.call_soon_threadsafe(self._begin_stop, sig, frame)  # not in the signal handler itself

    def _begin_stop(self, sig, frame) -> None:
        try:
            self.on_signal()
        except Exception as exc:  # the shutdown goes on regardless
            _loop_exception(self.loop, {"message": "on_signal failed", "exception": exc})
        super().handle_exit(sig, frame)


def serve_forever(app, host: str, port: int, *, header_timeout: float = 10.0, max_connections: int = 256,
                  drain_seconds: float = 10.0, on_signal: Callable[[], None] | None = None) -> None:
    """Listen on host:port (an EnvironmentFailure if it cannot), say so on stderr, and serve
    ``app`` until SIGTERM or SIGINT; then return (the process exits 0)."""
    sock = listen(host, port)
    sys.stderr.write(f"lmgen: listening on http://{authority(host, port)} (OpenAI API under /v1)\n")
    config = uvicorn.Config(app, http=protocol_class(header_timeout, max_connections), ws="none", lifespan="on",
                            log_config=LOG_CONFIG, log_level="warning", access_log=False,
                            timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            timeout_graceful_shutdown=drain_seconds + DRAIN_GRACE_SECONDS)
    # uvicorn raises the signal again after its shutdown, for the handler it found: one that does
    # nothing, so that the process goes on to exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    _Server(config, on_signal).run(sockets=[sock])
