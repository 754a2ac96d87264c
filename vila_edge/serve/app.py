"""The FastAPI app: OpenAI's chat completions (plain and SSE), models, health and metrics, over one Captioner
whose model only the worker thread touches. Bearer auth when a key is set; bodies, images, tokens and the queue
are bounded; every refusal is OpenAI's error JSON with a 4xx, and leaves the server as it was."""

import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..conversation import stop_strings
from ..errors import VilaEdgeError
from ..generate import SamplingParams, TextStream
from .live import add_live_routes, start_live, stop_live
from .media import decode_media
from .metrics import Metrics
from .protocol import FINISH, ApiError, chunk, completion, completion_id, parse_chat, read_json
from .settings import ServeSettings
from .worker import Job, QueueFull, Worker

HEALTH = ("/health", "/v1/health/ready", "/api/v1/health/ready")
CHAT = ("/v1/chat/completions", "/chat/completions", "/api/v1/chat/completions")


class Server:
    """What the routes share: the captioner, the worker that runs it, the metrics, the JSON grammar's tokenizer."""

    def __init__(self, captioner, name: str, settings: ServeSettings):
        self.captioner, self.name, self.settings = captioner, name, settings
        self.metrics = Metrics()
        self.worker = Worker(settings.max_queue, self.metrics.cancelled.inc)
        self._grammar, self._grammar_lock = None, threading.Lock()

    def grammar(self):
        with self._grammar_lock:  # built once, on first use (about a second for a 150k vocabulary)
            if self._grammar is None:
                from .grammar import GrammarTokenizer

                c = self.captioner
                stops = TextStream(c.tokenizer, stop_strings(c.template, c.tokenizer)).stop_ids
                self._grammar = GrammarTokenizer(c.tokenizer, c.model.vocab_size, sorted(stops))
            return self._grammar

    def max_tokens(self, asked: int | None) -> int:
        return min(asked or self.settings.default_max_tokens, self.captioner.ckpt.model_max_length - 1)

    async def params(self, req) -> SamplingParams:
        constraint = None
        if req.response_format["type"] != "text":
            constraint = (await run_in_threadpool(self.grammar)).constraint(req.response_format)
        return SamplingParams(temperature=req.temperature, top_p=req.top_p, max_new_tokens=self.max_tokens(req.max_tokens),
                              seed=req.seed, constraint=constraint)

    def job(self, run) -> Job:
        return Job(run, asyncio.get_running_loop())

    def submit(self, run) -> Job:
        try:
            job = self.worker.submit(self.job(run))
        except QueueFull:
            raise ApiError(429, f"the model is busy: {self.worker.depth} requests ahead; retry shortly", None,
                           "queue_full", "rate_limit_error", {"Retry-After": "1"}) from None
        self.metrics.queue_depth.set(self.worker.depth)
        return job


def job_error(e: Exception) -> ApiError:
    """A failure inside a generation, as the client sees it."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, VilaEdgeError):
        code = "context_length_exceeded" if "takes at most" in str(e) else "invalid_request"
        return ApiError(400, str(e), "messages", code)
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}", None, "internal_error", "server_error")


def sse(body: dict | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


async def next_event(job: Job, request: Request) -> tuple | None:
    """The job's next event; None once the client has disconnected."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                return None


async def stream_events(server: Server, job: Job, first: tuple, rid: str, include_usage: bool):
    """The SSE body, from the job's first event on (taken before the response began, so a prompt the model refuses
    is a 4xx, not an error inside a 200 stream)."""
    created, name, event = int(time.time()), server.name, first
    try:
        yield sse(chunk(rid, name, created, {"role": "assistant", "content": ""}))
        while True:
            kind, value = event
            if kind == "text":
                yield sse(chunk(rid, name, created, {"content": value}))
                event = await job.events.get()
                continue
            if kind == "done":
                server.metrics.answered(value)
                yield sse(chunk(rid, name, created, {}, FINISH[value.stop_reason]))
                if include_usage:
                    yield sse(chunk(rid, name, created, {}, answer=value))
            elif kind == "error":
                yield sse(job_error(value).body())
            yield sse("[DONE]")
            return
    finally:  # done, or the client went away mid-stream: then its generation stops at the next token
        job.cancelled.set()
        server.metrics.queue_depth.set(server.worker.depth)


async def first_event(server: Server, job: Job, request: Request, final: bool) -> tuple | None:
    """The job's first event (with `final`, its last: the answer), an error raised as the client's 4xx/5xx; None
    when the client left first, whose generation is then cancelled."""
    try:
        while True:
            event = await next_event(job, request)
            if event is None or event[0] == "cancelled":
                job.cancelled.set()
                return None
            if event[0] == "error":
                raise job_error(event[1])
            if event[0] == "done" or not final:
                return event
    finally:
        if final or job.cancelled.is_set():
            job.cancelled.set()
            server.metrics.queue_depth.set(server.worker.depth)


async def chat(request: Request):
    server: Server = request.app.state.server
    limits = server.settings.limits
    req = parse_chat(await read_json(request, server.settings.max_body_bytes), limits)
    images, counts = await run_in_threadpool(decode_media, req.media_per_turn, server.settings.media, limits.max_images,
                                             request.app.state.streams, server.captioner.conditioned)
    params = await server.params(req)
    job = server.submit(lambda on_text: server.captioner.chat(req.system, req.turns, counts, images, params, on_text,
                                                              req.stop))
    rid = completion_id()
    event = await first_event(server, job, request, final=not req.stream)
    if event is None:
        return Response(status_code=499)  # nobody is listening
    if req.stream:
        return StreamingResponse(stream_events(server, job, event, rid, req.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    server.metrics.answered(event[1])
    return completion(rid, server.name, event[1])


async def models(request: Request):
    return {"object": "list", "data": [{"id": request.app.state.server.name, "object": "model",
                                        "created": int(time.time()), "owned_by": "vila-edge"}]}


async def health(request: Request):
    return {"status": "ready", "queue_depth": request.app.state.server.worker.depth}


async def metrics(request: Request):
    server: Server = request.app.state.server
    server.metrics.queue_depth.set(server.worker.depth)
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")


async def api_error(request: Request, e: ApiError):
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def http_error(request: Request, e: StarletteHTTPException):  # 404, 405: as OpenAI's error JSON too
    message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
    return JSONResponse(ApiError(e.status_code, message, None, "not_found").body(), status_code=e.status_code)


async def internal_error(request: Request, e: Exception):
    return JSONResponse(job_error(e).body(), status_code=500)


async def guard(request: Request, call_next):
    """Bearer auth (health aside) and the request counter."""
    server: Server = request.app.state.server
    path, key = request.url.path, server.settings.api_key
    try:
        if key and path not in HEALTH and request.headers.get("authorization", "") != f"Bearer {key}":
            raise ApiError(401, "a valid API key is needed: Authorization: Bearer <key>", None, "invalid_api_key")
        response = await call_next(request)
    except ApiError as e:
        response = JSONResponse(e.body(), status_code=e.status, headers=e.headers)
    route = path if path in (*CHAT, *HEALTH, "/v1/models", "/metrics") else \
        next((p for p in ("/api/v1/live-stream", "/api/v1/alerts") if path.startswith(p)), "other")
    server.metrics.requests.labels(route, str(response.status_code)).inc()
    return response


def create_app(captioner, name: str, settings: ServeSettings | None = None) -> FastAPI:
    server = Server(captioner, name, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(app):
        task = start_live(app)
        yield
        task.cancel()
        stop_live(app)
        server.worker.stop()

    app = FastAPI(title="vila-edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.middleware("http")(guard)
    for path in CHAT:
        app.add_api_route(path, chat, methods=["POST"])
    for path in ("/v1/models", "/models"):
        app.add_api_route(path, models, methods=["GET"])
    for path in HEALTH:
        app.add_api_route(path, health, methods=["GET", "HEAD"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    add_live_routes(app, server, server.settings)
    return app
