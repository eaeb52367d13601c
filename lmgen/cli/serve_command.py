"""``lmgen serve``: the OpenAI-compatible HTTP server (``lmgen.serve``; the ``serve`` extra)."""

from __future__ import annotations

import signal
import sys
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import prepare
from lmgen.cli.options import DEVICE_OPTION, DTYPE_OPTION, MODEL_OPTION, THREADS_OPTION
from lmgen.errors import EnvironmentFailure, InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    model: Optional[str] = MODEL_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LMGEN_API_KEY",
                                          help="Require Authorization: Bearer KEY on /v1 routes."),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows decoded together."),
    queue: int = typer.Option(64, "--queue", help="Requests waiting beyond those rows before 503."),
    max_body: int = typer.Option(1 << 20, "--max-body", help="Largest request body, in bytes (413 beyond)."),
    prefix_cache: int = typer.Option(256, "--prefix-cache", metavar="MIB",
                                     help="Memory for the keys and values of recent requests, reused by the next "
                                          "that starts the same way (0: none)."),
    dtype: str = DTYPE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Serve the model over HTTP with OpenAI's API (chat and text completions)."""
    try:
        import uvicorn

        from lmgen.serve.app import ServeOptions, create_app
    except ImportError:
        raise EnvironmentFailure('lmgen serve needs the serve extra: pip install "lmgen[serve]"') from None
    for name, value, low in (("max-batch", max_batch, 1), ("queue", queue, 0), ("max-body", max_body, 1),
                             ("prefix-cache", prefix_cache, 0)):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    if not 0 < port < 65536:
        raise InputError(f"port must be from 1 to 65535, got {port}")
    path, _ = prepare(model, dtype, device, threads)  # a bad model fails here, before listening
    if host not in LOOPBACK and not api_key:
        sys.stderr.write(f"lmgen: warning: listening on {host} without --api-key: anyone who reaches it can use it\n")
    if prefix_cache > 1 << 20:
        raise InputError(f"prefix-cache must be at most {1 << 20} MiB, got {prefix_cache}")
    options = ServeOptions(str(path), dtype, device, api_key, max_batch, queue, max_body, prefix_cache)
    sys.stderr.write(f"lmgen: listening on http://{host}:{port} (OpenAI API under /v1)\n")
    # uvicorn stops on SIGTERM/SIGINT (no new connections, in-flight requests given 10 s), then
    # raises the signal again for the handler it found: one that does nothing, so that lmgen exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(create_app(options), host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    sys.stderr.write("lmgen: stopped\n")
