"""The models one server serves: each request's ``model`` picks one by name (none: the first), a
model loads on its first request (the first at start-up), and the least recently used idle one
is unloaded when ``--max-loaded`` would be exceeded. Each loaded model has its own engine thread:
their rows never mix. An unknown name is a 404 with OpenAI's error object.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lmgen.engine.generation import PREFILL_WORK
from lmgen.errors import InputError, LmgenError
from lmgen.serve import openai_api as api
from lmgen.serve.bridge import EngineThread, Refused, ShuttingDown
from lmgen.serve.replies import ReplyContext


@dataclass(frozen=True)
class ModelSpec:
    """A model this server may serve: its id in /v1/models, other names a request may use, its path."""

    id: str
    path: str
    aliases: tuple[str, ...] = ()

    @property
    def weight_bytes(self) -> int:
        """What its weights take, estimated from its files (a GGUF file, or a checkpoint's shards)."""
        path = Path(self.path)
        files = [path] if path.is_file() else list(path.glob("*.safetensors")) + list(path.glob("*.gguf"))
        return sum(f.stat().st_size for f in files if f.is_file())


def spec_of(given: str | None, path: Path) -> ModelSpec:
    """A --model value (None: the default model) and the path it resolved to, as a served model."""
    from lmgen.formats.hub.reference import parse
    from lmgen.formats.paths import DEFAULT_MODEL_NAME

    if given is None:  # $LMGEN_MODEL's, else the default model
        given = os.environ.get("LMGEN_MODEL") or None
    if given is None:
        return ModelSpec(DEFAULT_MODEL_NAME, str(path))
    if parse(given) is not None:  # a Hub name is its own id
        return ModelSpec(given, str(path))
    name = Path(given.rstrip("/")).name
    short = name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    return ModelSpec(short, str(path), tuple(dict.fromkeys(a for a in (name, given) if a != short)))


def model_object(spec: ModelSpec) -> dict:
    """OpenAI's model object for a served model (``GET /v1/models/{id}``)."""
    return {"id": spec.id, "object": "model", "created": 0, "owned_by": "lmgen"}


def check_unique(specs: list[ModelSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        for name in (spec.id, *spec.aliases):
            if seen.setdefault(name, spec.path) != spec.path:
                raise InputError(f"two models are named {name!r} ({seen[name]} and {spec.path}); serve one of them")


@dataclass(eq=False)
class Served:
    """One loaded model: its engine thread, what replies need of it, and who is using it."""

    spec: ModelSpec
    lm: object = None
    engine: EngineThread | None = None
    replies: ReplyContext | None = None
    failed: str | None = None
    users: int = 0  # requests between pick and their last byte (not unloaded meanwhile)
    used: int = 0  # the order of last use, for least recently used first out
    ready: asyncio.Event | None = field(default=None, repr=False)

    def idle(self) -> bool:
        return self.users == 0 and (self.engine is None or self.engine.in_house == 0)


class Models:
    """The served models, loaded and unloaded on the event loop's say (loads run on a thread)."""

    def __init__(self, specs: list[ModelSpec], options, metrics, on_fatal, max_loaded: int, max_bytes: int = 0):
        check_unique(specs)
        self.specs, self.options, self.metrics, self.on_fatal = specs, options, metrics, on_fatal
        self.max_loaded, self.max_bytes = max_loaded, max_bytes  # max_bytes 0: no memory budget
        self.loaded: dict[str, Served] = {}
        self.clock = 0
        self.closed = False  # draining: nothing more is loaded

    def spec(self, name) -> ModelSpec:
        """The model a request's ``model`` names (None or "": the first); an unknown one is a 404."""
        if name in (None, ""):
            return self.specs[0]
        return self.named(name)

    def named(self, name: str) -> ModelSpec:
        """The model called ``name`` (its id or an alias: ``/v1/models/{id}``); any other, "" too, is a 404."""
        for spec in self.specs:
            if name == spec.id or name in spec.aliases:
                return spec
        known = ", ".join(s.id for s in self.specs)
        raise api.APIError(404, f"the model {name!r} does not exist; this server serves {known}", "model",
                           code="model_not_found", kind="invalid_request_error")

    def load_now(self, spec: ModelSpec) -> Served:
        """Load on this thread (start-up's thread for the first model; a worker for the others)."""
        from lmgen.engine.load import load

        served = Served(spec)
        try:
            served.lm = load(Path(spec.path), dtype=self.options.dtype, device=self.options.device,
                             kv_dtype=self.options.kv_dtype)
            served.engine = EngineThread(served.lm, self.options.max_batch, self.options.queue,
                                         self.options.prefix_cache_mib << 20, PREFILL_WORK, self.on_fatal,
                                         self.options.kv_cache_mib or None)
            served.replies = ReplyContext(spec.id, served.lm.tokenizer, self.metrics)
            for note in served.lm.notes:
                sys.stderr.write(f"lmgen: note: {spec.id}: {note}\n")
            sys.stderr.write(f"lmgen: serving {spec.id}\n")
        except LmgenError as exc:
            served.failed = str(exc)
            sys.stderr.write(f"lmgen: error: {spec.id}: {exc}\n")
        return served

    async def acquire(self, name) -> Served:
        """The named model, loaded (a wait on its first request), marked in use until ``release``."""
        spec = self.spec(name)
        served = self.loaded.get(spec.id)
        if served is None:
            if self.closed:
                raise ShuttingDown("the server is shutting down")
            self._make_room(spec)
            served = self.loaded[spec.id] = Served(spec, ready=asyncio.Event())
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self.load_now, spec)
            finally:
                served.ready.set()
            served.lm, served.engine, served.replies, served.failed = loaded.lm, loaded.engine, loaded.replies, \
                loaded.failed
        elif served.ready is not None:
            await served.ready.wait()  # another request is loading it
        if served.failed is not None:
            self.loaded.pop(spec.id, None)  # the next request tries again
            raise api.APIError(500, f"{spec.id} could not be loaded: {served.failed}", kind="server_error")
        self.clock += 1
        served.users, served.used = served.users + 1, self.clock
        return served

    def release(self, served: Served) -> None:
        served.users -= 1

    def _make_room(self, spec: ModelSpec) -> None:
        """Unload the least recently used idle models until ``spec`` fits (--max-loaded, and the
        --max-memory budget of weights); none idle: 503."""
        def over() -> bool:
            if len(self.loaded) >= self.max_loaded:
                return True
            if not self.max_bytes or not self.loaded:  # no budget: no files to weigh
                return False
            return spec.weight_bytes + sum(s.spec.weight_bytes for s in self.loaded.values()) > self.max_bytes

        while over():
            idle = [s for s in self.loaded.values() if s.idle() and s.engine is not None]
            if not idle:
                raise Refused(f"all {len(self.loaded)} loaded models are busy (--max-loaded {self.max_loaded}"
                              f"{f', --max-memory {self.max_bytes >> 20} MiB' if self.max_bytes else ''}); "
                              "try again shortly")
            victim = min(idle, key=lambda s: s.used)
            del self.loaded[victim.spec.id]
            threading.Thread(target=victim.engine.stop, name="lmgen-unload", daemon=True).start()
            sys.stderr.write(f"lmgen: unloaded {victim.spec.id} (least recently used)\n")

    # ------------------------------------------------------------------------ all the engines

    def engines(self) -> list[EngineThread]:
        return [s.engine for s in list(self.loaded.values()) if s.engine is not None]

    def queued(self) -> int:
        return sum(e.queued() for e in self.engines())

    def rows_in_flight(self) -> int:
        return sum(e.rows_in_flight() for e in self.engines())

    def kv_bytes_held(self) -> int:
        return sum(e.kv_bytes_held() for e in self.engines())

    def preemptions(self) -> int:
        return sum(e.preemptions() for e in self.engines())
