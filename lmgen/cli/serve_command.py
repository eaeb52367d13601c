"""``lmgen serve``: the OpenAI-compatible HTTP server (``lmgen.serve``; the ``serve`` extra)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import prepare
from lmgen.cli.options import DEVICE_OPTION, DTYPE_OPTION, KV_DTYPE_OPTION, THREADS_OPTION, check_api_key
from lmgen.errors import EnvironmentFailure, InputError, LmgenError
from lmgen.serve.origins import cors_origins as cors_origins_of
from lmgen.serve.origins import is_loopback


@app.command()
def serve(
    model: Optional[list[str]] = typer.Option(
        None, "--model", "-m", help="A model to serve (repeatable): checkpoint directory, GGUF file or Hub name "
        "(ORG/REPO[:QUANT]); a request's \"model\" picks one by the name /v1/models lists (default: $LMGEN_MODEL, "
        "else SmolLM2-135M-Instruct)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", metavar="DIR",
                                              help="Also serve every GGUF file and checkpoint directory in DIR."),
    max_loaded: int = typer.Option(0, "--max-loaded", metavar="N",
                                   help="Models loaded at once at most: the least recently used idle one is "
                                        "unloaded for another (0: all)."),
    max_memory: int = typer.Option(0, "--max-memory", metavar="MIB",
                                   help="The loaded models' weights at most, as their files weigh: the least recently "
                                        "used idle model is unloaded for another (0: no budget)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (on loopback, requests must name a loopback Host)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LMGEN_API_KEY", callback=check_api_key,
                                          help="Require Authorization: Bearer KEY on every route but /health."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows decoded together."),
    queue: int = typer.Option(64, "--queue", help="Requests waiting beyond those rows before 503."),
    max_body: int = typer.Option(1 << 20, "--max-body", help="Largest request body, in bytes (413 beyond)."),
    kv_cache: int = typer.Option(0, "--kv-cache-mib", metavar="MIB",
                                 help="KV cache the rows share, in pages taken as they grow: a request is admitted "
                                      "when its prompt fits, and rows that outgrow it wait and resume (0: every "
                                      "row's whole context, or half the memory free at start if less)."),
    prefix_cache: int = typer.Option(256, "--prefix-cache", metavar="MIB",
                                     help="Memory for the keys and values of recent requests, reused by the next "
                                          "that starts the same way (0: none)."),
    cors_origins: Optional[str] = typer.Option(
        None, "--cors-origins", metavar="ORIGINS",
        help="Web pages that may call the server (comma-separated scheme://host[:port], or *): they get CORS "
             "headers and preflight answers. A request from any other page (an Origin header) is 403, except "
             "from http://localhost and http://127.0.0.1 pages."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", metavar="SECONDS",
                                         help="Close a connection that has not sent a request's headers in time."),
    max_connections: int = typer.Option(256, "--max-connections",
                                        help="Open connections at most; one more is answered 503 and closed."),
    drain_seconds: float = typer.Option(10.0, "--drain-seconds", metavar="SECONDS",
                                        help="On SIGTERM or Ctrl-C, how long requests in flight may run on "
                                             "before they are ended."),
    dtype: str = DTYPE_OPTION,
    kv_dtype: Optional[str] = KV_DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Serve models over HTTP: OpenAI's chat completions (with tools), completions, Responses and embeddings, and Anthropic's Messages."""
    try:
        from lmgen.serve.app import ServeOptions, create_app
        from lmgen.serve.http import serve_forever
    except ImportError:
        raise EnvironmentFailure('lmgen serve needs the serve extra: pip install "lmgen[serve]"') from None
    for name, value, low in (("max-batch", max_batch, 1), ("queue", queue, 0), ("max-body", max_body, 1),
                             ("prefix-cache", prefix_cache, 0), ("kv-cache-mib", kv_cache, 0), ("max-connections", max_connections, 1),
                             ("drain-seconds", drain_seconds, 0), ("max-loaded", max_loaded, 0), ("max-memory", max_memory, 0)):
        if not value >= low:  # (NaN too)
            raise InputError(f"{name} must be >= {low}, got {value}")
    if not 0 < header_timeout <= 3600:
        raise InputError(f"header-timeout must be more than 0 and at most 3600 seconds, got {header_timeout}")
    if not drain_seconds <= 3600:
        raise InputError(f"drain-seconds must be at most 3600, got {drain_seconds}")
    from lmgen.engine.settings import MAX_ROWS

    if max_batch > MAX_ROWS:
        raise InputError(f"max-batch must be at most {MAX_ROWS}, got {max_batch}")
    from lmgen.engine.load import parse_kv_dtype

    parse_kv_dtype(kv_dtype)  # before listening: the models load on a thread
    origins = cors_origins_of(cors_origins)
    if not 0 < port < 65536:
        raise InputError(f"port must be from 1 to 65535, got {port}")
    specs = served_models(model or [], models_dir, dtype, device, threads)  # a bad model fails here, before listening
    if not is_loopback(host) and not api_key:
        sys.stderr.write(f"lmgen: warning: listening on {host} without --api-key: anyone who reaches it can use it\n")
    for name, value, high in (("prefix-cache", prefix_cache, 1 << 20), ("kv-cache-mib", kv_cache, 1 << 24)):
        if value > high:
            raise InputError(f"{name} must be at most {high} MiB, got {value}")
    options = ServeOptions(tuple(specs), dtype, device, api_key, max_batch, queue, max_body, prefix_cache,
                           cors_origins=origins, host=host, drain_seconds=drain_seconds, max_loaded=max_loaded,
                           max_memory_mib=max_memory, kv_dtype=kv_dtype, kv_cache_mib=kv_cache)
    # A client that closes its socket before the answer is written must not end the server: main
    # restores SIGPIPE's default (end quietly, for `lmgen generate | head`), so it is ignored
    # here, and a write to a closed socket is an error uvicorn handles.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    app = create_app(options)
    server = app.state.server
    server.on_fatal = lambda: os.kill(os.getpid(), signal.SIGTERM)  # from any thread: the same way out
    serve_forever(app, host, port, header_timeout=header_timeout, max_connections=max_connections,
                  drain_seconds=drain_seconds, on_signal=lambda: _stopping(server, drain_seconds))
    if server.fatal is not None:  # the engine gave up: not a clean stop
        raise server.fatal if isinstance(server.fatal, LmgenError) else EngineFailure(server.failed)
    sys.stderr.write("lmgen: stopped\n")


def served_models(given: list[str], models_dir: Optional[Path], dtype, device, threads) -> list:
    """Each --model (and each model in --models-dir) resolved and its config read now: a bad one
    is refused before the server listens. None given: the default model."""
    from lmgen.serve.models import check_unique, spec_of

    names: list[str | None] = list(given)
    if models_dir is not None:
        if not models_dir.is_dir():
            raise InputError(f"--models-dir {models_dir} is not a directory")
        names += [str(p) for p in sorted(models_dir.iterdir())
                  if (p.is_file() and p.suffix.lower() == ".gguf") or (p / "config.json").is_file()]
    specs = []
    for name in names or [None]:
        path, _ = prepare(name, dtype, device, threads)
        specs.append(spec_of(name, path))
    check_unique(specs)
    return specs


class EngineFailure(Exception):
    """The engine failed step after step (a bug: the CLI reports it as one and exits 1)."""


def _stopping(server, drain_seconds: float) -> None:
    """The first SIGTERM or Ctrl-C (on the event loop): say so, and let requests in flight end."""
    sys.stderr.write(f"lmgen: stopping: no new connections; requests in flight have {drain_seconds:g} s\n")
    server.drain()
