"""``lmgen serve``'s HTTP routes (Starlette): OpenAI's chat and text completions, embeddings
(``embeddings_api``), models and health, and llama-server's tokenize and detokenize (``tokens_api``).

The first model loads on a thread at start-up (``/health`` answers 503 until it is ready); a
request's ``model`` picks one of the models served (``models``: others load on their first
request, the least recently used unloaded beyond ``--max-loaded``). A request's
fields are checked on the event loop; its chat template, tokenization and constraint run on
worker threads (the loop keeps answering), then its tickets go to the engine thread
(``bridge``), whose events come back through each ticket's own queue and become the reply
(``replies``). Every failure is OpenAI's error object: 400 bad fields, 401 a wrong key, 413 a
body too large, 503 loading, full or shutting down, 500 only when the engine itself failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmgen.engine.chat_turn import Shape, prepare_chat
from lmgen.engine.constraint import compiled
from lmgen.engine.engine import Job
from lmgen.engine.generation import PromptTooLong, prompt_ids_for
from lmgen.errors import InputError, LmgenError
from lmgen.serve import embeddings_api, messages_api, replies, responses_api, responses_stream, tokens_api
from lmgen.serve import openai_api as api
from lmgen.serve.bridge import Refused, Ticket
from lmgen.serve.chat_request import Chat, chat_of
from lmgen.serve.guard import Guard, not_routed, read_body, refused
from lmgen.serve.metrics import Metrics
from lmgen.serve.models import Models, ModelSpec, Served, model_object

COMPILE_SECONDS = 5.0  # a request's constraint must compile within this, else 400


@dataclass(frozen=True)
class ServeOptions:
    models: tuple[ModelSpec, ...]  # the first is loaded at start-up and answers requests that name none
    dtype: str | None = None
    device: str = "cpu"
    api_key: str | None = None
    max_batch: int = 8
    queue: int = 64
    max_body: int = 1 << 20
    prefix_cache_mib: int = 256  # keys and values of recent requests kept for the next (0: none)
    cors_origins: tuple[str, ...] = ()  # web pages answered with CORS headers ("*": any); see lmgen.serve.origins
    host: str = "127.0.0.1"  # the address listened on: on loopback, only a loopback Host is answered
    drain_seconds: float = 10.0  # after SIGTERM, how long requests in flight may run on
    max_loaded: int = 0  # models loaded at once at most (0: all of them)
    max_memory_mib: int = 0  # the loaded models' weights at most, estimated from their files (0: no budget)
    kv_dtype: str | None = None  # each engine's KV cache (None: the activations')
    kv_cache_mib: int = 0  # each engine's KV cache, shared by its rows (0: what memory allows)


class Server:
    def __init__(self, options: ServeOptions):
        self.options, self.failed, self.started = options, None, False
        self.metrics = Metrics()
        self.pool = Models(list(options.models), options, self.metrics, self._fatal,
                           options.max_loaded or len(options.models), options.max_memory_mib << 20)
        self.metrics.watch(self.pool)
        self.fatal: BaseException | None = None  # what made the engine give up
        self.on_fatal = lambda: None  # set by the HTTP server: stop the process (the engine is gone)
        self.workers = ThreadPoolExecutor(4, "lmgen-prepare")  # templates and tokenization
        self.compilers = ThreadPoolExecutor(2, "lmgen-compile")  # constraints (a runaway one holds only these)

    def load(self) -> None:
        """The first model, at start-up (on a thread: /health says loading meanwhile)."""
        spec = self.options.models[0]
        first = self.pool.load_now(spec)
        if first.failed is not None:
            self.failed = first.failed
        else:
            self.pool.loaded[spec.id] = first
            self.started = True

    def _fatal(self, exc: BaseException) -> None:
        """The engine gave up (on its thread): /health says so, and the process is told to stop."""
        self.failed = f"the engine failed: {type(exc).__name__}: {exc}"
        self.fatal = exc
        self.on_fatal()

    def drain(self) -> None:
        """Shutting down: refuse new requests, let those in flight finish within drain_seconds."""
        self.pool.closed = True  # no model loads from now on
        for engine in self.pool.engines():
            engine.drain(self.options.drain_seconds)

    # ------------------------------------------------------------------------------------ routes

    async def health(self, request: Request) -> JSONResponse:
        if not self.started or not all(e.healthy() for e in self.pool.engines()):
            status = "failed" if self.failed or self.fatal else "loading"
            return JSONResponse({"status": status}, status_code=503)
        if self.pool.closed:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        data, content_type = self.metrics.exposition()
        return Response(data, media_type=content_type)

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": spec.id, "object": "model", "created": 0,
                                                         "owned_by": "lmgen"} for spec in self.options.models]})

    async def chat(self, request: Request):
        body = await self._body(request)
        served = await self._acquire(body)
        try:
            settings, stream, include_usage = api.settings_of(body, served.lm.config.max_context, chat=True)
            chat = chat_of(body)
            ids, settings, shape = await self._off_loop(lambda: self._chat_ids(served, chat, settings))
            top = body.get("top_logprobs") or 0
        except BaseException:
            self.pool.release(served)
            raise
        return await self._respond(request, served, [ids], settings, stream, include_usage, chat=True, top=top,
                                   shape=shape)

    async def responses(self, request: Request):
        return await self._turn(request, responses_api, responses_stream.stream, "resp")

    async def messages(self, request: Request):
        try:
            return await self._turn(request, messages_api, messages_api.stream, "msg")
        except api.APIError as exc:  # Anthropic's clients read Anthropic's error object
            return JSONResponse(messages_api.error_body(exc), status_code=exc.status,
                                headers={"Retry-After": "1"} if exc.status == 503 else None)

    async def completions(self, request: Request):
        body = await self._body(request)
        served = await self._acquire(body)
        try:
            settings, stream, include_usage = api.settings_of(body, served.lm.config.max_context, chat=False)
            texts = api.prompts_of(body)
            prompts = await self._off_loop(lambda: [self._ids(served, text, settings) for text in texts])
        except BaseException:
            self.pool.release(served)
            raise
        return await self._respond(request, served, prompts, settings, stream, include_usage, chat=False,
                                   top=body.get("logprobs") or 0)

    async def embeddings(self, request: Request) -> JSONResponse:
        return await self._with_model(request, embeddings_api.answer)

    async def model(self, request: Request) -> JSONResponse:
        return JSONResponse(model_object(self.pool.named(request.path_params["id"])))

    async def tokenize(self, request: Request) -> JSONResponse:
        return await self._with_model(request, tokens_api.tokenize)

    async def detokenize(self, request: Request) -> JSONResponse:
        return await self._with_model(request, tokens_api.detokenize)

    # ----------------------------------------------------------------------------------- helpers

    async def _with_model(self, request: Request, answer) -> JSONResponse:
        """A request answered by ``answer(body, served, off_loop)`` (its work run off the loop),
        with the model it names held meanwhile."""
        body = await self._body(request)
        served = await self._acquire(body)
        try:
            reply = await answer(body, served, self._off_loop)
        finally:
            self.pool.release(served)
        self.metrics.prompt_tokens.inc(reply.get("usage", {}).get("prompt_tokens", 0))
        return JSONResponse(reply)

    async def _body(self, request: Request) -> dict:
        if not self.started:
            raise api.APIError(503, "the model is still loading", kind="server_error")
        return api.parse_body(await read_body(request, self.options.max_body))

    async def _acquire(self, body: dict) -> Served:
        """The model the body names, loaded and marked in use (the caller releases it)."""
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise api.APIError(400, "model must be a string", "model")
        try:
            return await self.pool.acquire(name)
        except Refused as exc:
            raise replies.api_error(exc) from None

    def _chat_ids(self, served: Served, chat: Chat, settings):
        """(ids, settings, Shape) of a chat turn: rendered with its tools, their calls constrained."""
        try:
            text, settings, shape = prepare_chat(served.lm, chat.messages, settings, chat.tools, chat.choice,
                                                 chat.parallel, chat.options)
        except LmgenError as exc:
            raise api.APIError(400, str(exc), "tools" if chat.tools else "messages") from None
        return self._ids(served, text, settings, "messages"), settings, shape

    def _ids(self, served: Served, prompt, settings, field: str | None = None) -> list[int]:
        try:
            ids = prompt_ids_for(served.lm, prompt, settings)
        except LmgenError as exc:
            code = "context_length_exceeded" if isinstance(exc, PromptTooLong) else None
            field = "logit_bias" if str(exc).startswith("logit-bias") else field  # (an id beyond the vocabulary)
            raise api.APIError(400, str(exc), field or ("messages" if isinstance(prompt, list) else "prompt"),
                               code=code) from None
        return ids

    async def _off_loop(self, work):
        """Templates and tokenization on a worker thread: the event loop keeps answering."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, work)

    async def _compile(self, served: Served, settings) -> None:
        """The request's constraint compiled for the model off the engine thread and the loop,
        within COMPILE_SECONDS (a pattern whose automaton explodes is a 400, not a stall)."""
        if settings.constraint is None:
            return
        field = "tools" if settings.constraint.kind == "grammar" else "response_format"  # (tools: a Lark grammar)
        work = asyncio.get_running_loop().run_in_executor(self.compilers, compiled, served.lm, settings.constraint)
        try:
            await asyncio.wait_for(asyncio.shield(work), COMPILE_SECONDS)
        except TimeoutError:
            raise api.APIError(400, f"{field}: the schema did not compile within {COMPILE_SECONDS:g} s; "
                                    "simplify it", field) from None
        except LmgenError as exc:
            raise api.APIError(400, f"{field}: {exc}", field) from None

    async def _respond(self, request: Request, served: Served, prompts: list[list[int]], settings, stream: bool,
                       include_usage: bool, chat: bool, top: int, shape: Shape | None = None):
        tickets, close = await self._submit(served, prompts, settings)
        ident = api.new_id("chatcmpl" if chat else "cmpl")
        if stream:
            return _event_stream(replies.chunks(served.replies, tickets, ident, include_usage, chat, top, close,
                                                shape))
        kind = "chat.completion" if chat else "text_completion"

        async def whole() -> dict:
            choices, usage = await replies.collect(served.replies, tickets, chat, top, shape)
            return api.envelope(kind, ident, served.spec.id, choices, {"usage": usage})

        return await _answer(request, whole(), close)

    async def _turn(self, request: Request, adapter, streamer, prefix: str):
        """A chat turn through another API's adapter (Responses, Messages): its request made a
        Chat and chat completions fields, its reply made from the same parts."""
        body = await self._body(request)
        chat, fields = adapter.request(body)
        served = await self._acquire(body)
        try:
            settings, stream, _ = api.settings_of(fields, served.lm.config.max_context, chat=True)
            ids, settings, shape = await self._off_loop(lambda: self._chat_ids(served, chat, settings))
        except BaseException:
            self.pool.release(served)
            raise
        tickets, close = await self._submit(served, [ids], settings)
        ident = api.new_id(prefix)
        if stream:
            return _event_stream(streamer(served.replies, tickets[0], shape, ident, body, chat, close))
        return await _answer(request, adapter.whole(served.replies, tickets[0], shape, ident, body, chat), close)

    async def _submit(self, served: Served, prompts: list[list[int]], settings) -> tuple[list[Ticket], object]:
        """The prompts' tickets, compiled and in the engine's queue, and what closes them."""
        loop = asyncio.get_running_loop()
        tickets = [Ticket(Job(ids=ids, settings=settings, seed=settings.seed), loop) for ids in prompts]
        close = self._closer(served, tickets)
        try:
            await self._compile(served, settings)
            for ticket in tickets:
                served.engine.submit(ticket)
                self.metrics.prompt_tokens.inc(len(ticket.job.ids))
        except (InputError, Refused) as exc:
            close()
            raise replies.api_error(exc) from None
        except BaseException:
            close()
            raise
        return tickets, close

    def _closer(self, served: Served, tickets: list[Ticket]):
        """What ends a request, once however often it is called (its client gone, its reply
        sent, or an error): its rows are freed, and its model released."""
        done = []

        def close() -> None:
            if not done:
                done.append(True)
                for ticket in tickets:
                    served.engine.cancel(ticket)
                self.pool.release(served)

        return close


def _event_stream(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _answer(request: Request, reply, close) -> Response:
    """A whole reply (the coroutine ``reply`` makes its JSON), or 499 if the client left first;
    ``close`` frees the request's rows either way."""
    collecting = asyncio.ensure_future(reply)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([collecting, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        close()  # a client gone before the end frees its rows
    if not collecting.done():  # nobody to answer
        collecting.cancel()
        return Response(status_code=499)
    return JSONResponse(collecting.result())


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (its body was read already: only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
          "/v1/models/{id:path}", "/tokenize", "/detokenize", "/v1/responses", "/v1/messages")
POSTED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize", "/v1/responses",
          "/v1/messages")


def create_app(options: ServeOptions) -> Starlette:
    server = Server(options)
    routes = [Route(path, endpoint, methods=["POST"] if path in POSTED else ["GET"])
              for path, endpoint in zip(ROUTES, (server.health, server.metrics_text, server.models, server.chat,
                                                 server.completions, server.embeddings, server.model,
                                                 server.tokenize, server.detokenize, server.responses,
                                                 server.messages))]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=server.load, name="lmgen-load", daemon=True).start()
        yield
        for engine in server.pool.engines():  # after uvicorn's graceful shutdown: streams still open end now
            engine.stop()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={api.APIError: refused, HTTPException: not_routed})
    app.add_middleware(Guard, server=server, routes=ROUTES)  # outermost: it sees every request
    app.state.server = server
    return app
