"""``lmgen serve``'s HTTP routes (Starlette): OpenAI's chat and text completions, models and health.

The model loads on a thread at start-up (``/health`` answers 503 until it is ready); requests are
checked and tokenized on the event loop, then handed to the engine thread (``bridge``), whose
events come back through each request's own queue. Every failure is OpenAI's error object with
a 4xx status: 400 bad fields, 401 a wrong key, 413 a body too large, 503 loading or full.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import threading
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmgen.engine.generation import Finished, PromptTooLong, Token, prompt_ids_for
from lmgen.errors import LmgenError
from lmgen.serve import openai_api as api
from lmgen.serve.bridge import EngineThread, Job
from lmgen.serve.metrics import Metrics


@dataclass(frozen=True)
class ServeOptions:
    model: str
    dtype: str | None = None
    device: str = "cpu"
    api_key: str | None = None
    max_batch: int = 8
    queue: int = 64
    max_body: int = 1 << 20
    prefix_cache_mib: int = 256  # keys and values of recent requests kept for the next (0: none)


class Server:
    def __init__(self, options: ServeOptions):
        self.options, self.lm, self.engine, self.failed = options, None, None, None
        self.name = options.model.rstrip("/").rsplit("/", 1)[-1]
        self.metrics = Metrics()

    def load(self) -> None:
        from lmgen.engine.load import load

        try:
            self.lm = load(self.options.model, dtype=self.options.dtype, device=self.options.device)
            self.engine = EngineThread(self.lm, self.options.max_batch, self.options.queue,
                                       self.options.prefix_cache_mib << 20)
            self.metrics.watch(self.engine)
            for note in self.lm.notes:
                sys.stderr.write(f"lmgen: note: {note}\n")
            sys.stderr.write(f"lmgen: serving {self.name}\n")
        except LmgenError as exc:
            self.failed = str(exc)
            sys.stderr.write(f"lmgen: error: {exc}\n")

    # ------------------------------------------------------------------------------------ routes

    async def health(self, request: Request) -> JSONResponse:
        if self.engine is None:
            return JSONResponse({"status": "failed" if self.failed else "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        data, content_type = self.metrics.exposition()
        return Response(data, media_type=content_type)

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                         "owned_by": "lmgen"}]})

    async def chat(self, request: Request):
        body = await self._body(request)
        settings, stream, include_usage = api.settings_of(body, self.lm.config.max_context, chat=True)
        messages = api.messages_of(body)
        ids = self._ids(messages, settings)
        top = body.get("top_logprobs") or 0
        return await self._respond(request, [ids], settings, stream, include_usage, chat=True, top=top)

    async def completions(self, request: Request):
        body = await self._body(request)
        settings, stream, include_usage = api.settings_of(body, self.lm.config.max_context, chat=False)
        ids = [self._ids(prompt, settings) for prompt in api.prompts_of(body)]
        return await self._respond(request, ids, settings, stream, include_usage, chat=False, top=body.get("logprobs") or 0)

    # ----------------------------------------------------------------------------------- helpers

    async def _body(self, request: Request) -> dict:
        if self.engine is None:
            raise api.APIError(503, "the model is still loading", kind="server_error")
        data = await request.body()
        if len(data) > self.options.max_body:
            raise api.APIError(413, f"the request body is larger than {self.options.max_body} bytes")
        try:
            body = json.loads(data)
        except ValueError:
            raise api.APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise api.APIError(400, "the request body must be a JSON object")
        return body

    def _ids(self, prompt, settings) -> list[int]:
        try:
            ids = prompt_ids_for(self.lm, prompt, settings)
        except LmgenError as exc:
            code = "context_length_exceeded" if isinstance(exc, PromptTooLong) else None
            raise api.APIError(400, str(exc), "messages" if isinstance(prompt, list) else "prompt", code=code) from None
        return ids

    async def _respond(self, request: Request, prompts: list[list[int]], settings, stream: bool,
                       include_usage: bool, chat: bool, top: int):
        loop = asyncio.get_running_loop()
        jobs = [Job(ids, settings, loop) for ids in prompts]
        for job in jobs:
            if not self.engine.submit(job):
                for other in jobs:
                    other.cancelled = True
                raise api.APIError(503, "the server is full; try again shortly", kind="server_error", code="overloaded")
            self.metrics.prompt_tokens.inc(len(job.ids))
        kind, ident = ("chat.completion", api.new_id("chatcmpl")) if chat else ("text_completion", api.new_id("cmpl"))
        if stream:
            return StreamingResponse(self._chunks(jobs, ident, kind, include_usage, chat, top),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            choices, usage = await self._collect(jobs, chat, top)
        finally:
            for job in jobs:
                job.cancelled = True  # a client gone before the end frees its rows
        return JSONResponse(api.envelope(kind, ident, self.name, choices, {"usage": usage}))

    async def _collect(self, jobs: list[Job], chat: bool, top: int):
        choices, prompt_tokens, completion_tokens, cached = [], 0, 0, 0
        n, wanted = jobs[0].settings.num_samples, jobs[0].settings.show_probs > 0
        for p, job in enumerate(jobs):
            done: dict[int, Finished] = {}
            tokens: dict[int, list[Token]] = {s: [] for s in range(n)}
            while (event := await job.events.get()) is not None:
                if isinstance(event, Exception):
                    raise api.APIError(400, str(event)) if isinstance(event, LmgenError) else event
                if isinstance(event, Finished):
                    done[event.sample] = event
                    self._observe(event)
                elif wanted:
                    tokens[event.sample].append(event)
            prompt_tokens += len(job.ids)
            cached += done[0].cached_tokens if 0 in done else 0
            for sample in sorted(done):
                event = done[sample]
                completion_tokens += event.new_tokens
                choice = api.chat_choice if chat else api.text_choice
                choices.append(choice(p * n + sample, event.output, event.reason,
                                      self._logprobs(tokens[sample], chat, top) if wanted else None))
        return choices, api.usage(prompt_tokens, completion_tokens, cached)

    def _logprobs(self, tokens: list[Token], chat: bool, top: int) -> dict:
        return (api.chat_logprobs if chat else api.text_logprobs)(tokens, self.lm.tokenizer, top)

    def _observe(self, done: Finished) -> None:
        self.metrics.generated_tokens.inc(done.new_tokens)
        if done.sample == 0 and done.cached_tokens:
            self.metrics.prefix_cache_hits.inc()
            self.metrics.prefix_cache_tokens.inc(done.cached_tokens)
        self.metrics.time_to_first_token.observe(done.prefill_seconds)
        if done.new_tokens > 1:
            self.metrics.inter_token.observe(done.decode_seconds / (done.new_tokens - 1))

    async def _chunks(self, jobs: list[Job], ident: str, kind: str, include_usage: bool, chat: bool, top: int):
        kind = "chat.completion.chunk" if chat else kind
        n, wanted = jobs[0].settings.num_samples, jobs[0].settings.show_probs > 0
        completion_tokens, cached = 0, 0
        try:
            if chat:
                first = [{"index": s, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                         for s in range(n)]
                yield _sse(api.envelope(kind, ident, self.name, first))
            for p, job in enumerate(jobs):
                while (event := await job.events.get()) is not None:
                    if isinstance(event, Exception):
                        yield _sse(api.APIError(500, f"generation failed: {event}", kind="server_error").body())
                        return
                    index = p * n + event.sample
                    if isinstance(event, Finished):
                        completion_tokens += event.new_tokens
                        cached += event.cached_tokens if event.sample == 0 else 0
                        self._observe(event)
                        choice = {"index": index, "finish_reason": event.reason, "logprobs": None}
                        choice.update({"delta": {"content": event.text}} if chat else {"text": event.text})
                    elif event.text or wanted:
                        logprobs = self._logprobs([event], chat, top) if wanted else None
                        choice = {"index": index, "finish_reason": None, "logprobs": logprobs}
                        choice.update({"delta": {"content": event.text}} if chat else {"text": event.text})
                    else:
                        continue
                    yield _sse(api.envelope(kind, ident, self.name, [choice]))
            if include_usage:
                prompt_tokens = sum(len(job.ids) for job in jobs)
                yield _sse(api.envelope(kind, ident, self.name, [],
                                        {"usage": api.usage(prompt_tokens, completion_tokens, cached)}))
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: its rows are freed at the next step
            for job in jobs:
                job.cancelled = True


ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(options: ServeOptions) -> Starlette:
    server = Server(options)
    routes = [Route(path, endpoint, methods=["POST"] if path.endswith("completions") else ["GET"])
              for path, endpoint in zip(ROUTES, (server.health, server.metrics_text, server.models, server.chat,
                                                 server.completions))]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=server.load, name="lmgen-load", daemon=True).start()
        yield
        if server.engine is not None:  # after uvicorn's graceful shutdown: streams still open end now
            server.engine.stop()

    async def refused(request: Request, exc: api.APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={api.APIError: refused})
    app.add_middleware(_Guard, server=server)
    return app


class _Guard:
    """Pure ASGI middleware: the API key on /v1 routes, OpenAI's error object for every failure,
    and one access-log line per request on stderr."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            self._authorize(scope)
            await self.app(scope, receive, sending)
        except api.APIError as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            await JSONResponse(exc.body(), status_code=exc.status, headers=headers)(scope, receive, sending)
        route = scope["path"] if scope["path"] in ROUTES else "other"  # a scan of paths never grows the metric
        self.server.metrics.requests.labels(route, str(status[0])).inc()
        sys.stderr.write(f"lmgen: {scope['method']} {scope['path']} {status[0]} "
                         f"{(time.perf_counter() - start) * 1000:.0f} ms\n")

    def _authorize(self, scope) -> None:
        key = self.server.options.api_key
        if not key or not scope["path"].startswith("/v1"):
            return
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise api.APIError(401, "invalid API key: send Authorization: Bearer <key>", kind="authentication_error",
                               code="invalid_api_key")
