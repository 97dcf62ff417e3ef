"""An OpenAI-compatible HTTP server (FastAPI on uvicorn) for desktop apps: `led-local serve`.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with and without `stream`
(server-sent events). LED and DoLa are chosen by extra body fields: `sampler`, `led: {d, k, latent_norm,
exploit, think_only}`, `dola_layers` (the official client passes them through `extra_body`).

Requests are jobs of the Llama's scheduler (scheduler.py): a driver thread runs its steps, which decode
every request in flight together, one llama_decode per step, each in its own slot with its cached prefix.
A handler checks the request (a 400 before anything runs), submits the job and reads the deltas the steps
hand it; a client that goes away cancels only its own job, at the next step. More than `max_queue`
requests waiting for a slot get a 503 with Retry-After. Results are shaped by generate.py, the same code
that shapes `Llama.create_*`'s.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import gc
import hmac
import ipaddress
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from sse_starlette.sse import EventSourceResponse

from . import chat, params
from .generate import (chat_constraints, chat_logprobs, chat_prompt, completion_prompt_tokens,
                       fim_prompt_tokens, prepare)
from .llama import Llama
from .scheduler import Job, SamplingTooCostly


# --- request bodies --------------------------------------------------------------------------------------

def _request_field(p: params.Param) -> tuple[type, Any]:
    """A request field from the table: its type, the default a request that leaves it out gets, and the
    server's bounds (OpenAI's ranges where it documents them)."""
    lo, hi = p.api_bounds()
    bounds: dict[str, float] = {}
    if lo is not None:
        bounds["gt" if p.lo_exclusive else "ge"] = lo
    if hi is not None:
        bounds["le"] = hi
    return (p.kind, Field(default=p.request_default, description=p.help, **bounds))


# the sampling parameters of a request (params.py) and of its `led` object
SamplingFields = create_model("SamplingFields", __config__=ConfigDict(extra="allow"),
                              **{p.field: _request_field(p) for p in params.PARAMS})
LEDFields = create_model("LEDFields", __config__=ConfigDict(extra="forbid"),
                         **{p.name: _request_field(p) for p in params.LED_PARAMS})


class StreamOptions(BaseModel):
    include_usage: bool = False


# accepted and without effect on the output
HARMLESS_FIELDS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "cache_prompt"}
# not honoured yet: accepted only at the value that asks for nothing
NEUTRAL_VALUES = {"echo": (None, False),
                  "suffix": (None, ""), "best_of": (None, 1), "response_format": (None, {"type": "text"}),
                  "functions": (None, []),
                  "function_call": (None, "none", "auto")}


class _Common(SamplingFields):
    # any other field is refused by name (check_fields): one that would change the output must not be
    # silently ignored
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    n: int = Field(default=1, ge=1, le=2**31 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    sampler: Literal["standard", "led", "dola"] = "standard"
    led: LEDFields | None = None
    dola_layers: Literal["low", "high"] | list[int] | None = None
    logit_bias: dict[str, float] | None = Field(default=None, max_length=4096)  # OpenAI allows 300
    grammar: str | None = None  # GBNF, as llama-server takes it (bounded: grammar_bounds.py)

    def check_fields(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if name in HARMLESS_FIELDS:
                continue
            if name in NEUTRAL_VALUES:
                if value in NEUTRAL_VALUES[name]:
                    continue
                raise ApiError(f"'{name}' is not supported by this server yet; leave it out", name)
            raise ApiError(f"unknown field '{name}': led-local serve does not support it", name)

    def generation_kwargs(self, limits: "Limits", default_max_tokens: int | None) -> dict:
        self.check_fields()
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens or limits.max_tokens
        if max_tokens > limits.max_tokens:
            raise ApiError(f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens}", "max_tokens")
        if self.n > limits.max_n:
            raise ApiError(f"n={self.n} exceeds this server's limit of {limits.max_n}", "n")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > limits.max_stops:
            raise ApiError(f"{len(stops)} stop strings: the limit is {limits.max_stops}", "stop")
        if any(len(x) > limits.max_stop_chars for x in stops):
            raise ApiError(f"a stop string is longer than {limits.max_stop_chars} characters", "stop")
        kwargs: dict[str, Any] = dict(max_tokens=max_tokens, n=self.n, stop=self.stop, seed=self.seed,
                                      sampler=self.sampler, logit_bias=self.logit_bias, grammar=self.grammar,
                                      logprobs=self.logprob_alternatives(),
                                      **{p.name: getattr(self, p.field) for p in params.PARAMS})
        if self.led is not None:
            kwargs["led"] = self.led.model_dump()
        if self.dola_layers is not None:
            kwargs["dola_layers"] = self.dola_layers
        return kwargs


    def logprob_alternatives(self) -> int | None:
        return None


class CompletionRequest(_Common):
    prompt: str
    logprobs: int | None = Field(default=None, ge=0, le=20)  # the legacy form: alternatives per token
    echo: bool = False
    suffix: str | None = None  # fill in the middle (FIM models)

    def logprob_alternatives(self) -> int | None:
        return self.logprobs


class ChatRequest(_Common):
    # messages as OpenAI sends them (text parts, an assistant's tool_calls, tool replies): checked, and any
    # field the template cannot render refused by name, in chat.py
    messages: list[dict[str, Any]] = Field(min_length=1)
    response_format: dict[str, Any] | None = None  # JSON mode and JSON schemas (grammar.py)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def logprob_alternatives(self) -> int | None:
        try:
            return chat_logprobs(self.logprobs, self.top_logprobs)
        except ValueError as e:
            raise ApiError(str(e), "top_logprobs") from None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"  # (the official client asks for base64)

    def check_fields(self) -> None:
        for name in self.model_extra or {}:
            if name != "user":
                raise ApiError(f"'{name}' is not supported on /v1/embeddings", name)


# --- errors in OpenAI's shape ----------------------------------------------------------------------------

class ServerShuttingDown(ConnectionError):
    """What a request still in flight at SIGTERM/Ctrl-C ends with."""


class ApiError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code
        self.headers = headers


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(status_code=e.status, headers=e.headers, content={
        "error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})


# --- requests on the scheduler ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    max_n: int
    max_tokens: int
    max_queue: int = 64  # requests waiting for a slot (streams too); beyond it: 503 with Retry-After
    max_body_bytes: int = 8 << 20  # a request body over it gets 413 before it is parsed
    max_stops: int = 16
    max_stop_chars: int = 512
    # one token's sampling (a costly grammar) over this ends that request with a 400, not the others'
    max_sample_seconds: float = 2.0


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413 before anything parses it (a 50 MB prompt
    once took 22 s and 2.9 GB to tokenize); the body is read here, bounded, then handed on."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_response(ApiError(f"the request body is over this server's limit of {self.limit} bytes "
                                          "(`led-local serve --max-body-mb`)", status=413, code="body_too_large"))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await too_big(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False
        # this middleware alone reads the connection from here on: it sees the client hang up and tells the
        # app through the receive it hands on and through scope["led_local.gone"] (the handlers' own
        # disconnect checks do not get through FastAPI's middleware reliably)
        gone = asyncio.Event()
        scope["led_local.gone"] = gone

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        watcher = asyncio.create_task(watch())
        try:
            return await self.app(scope, replay, send)
        finally:
            watcher.cancel()
            if len(body) > TRIM_AFTER_BYTES:
                _release_freed_memory()


TRIM_AFTER_BYTES = 1 << 20


def _libc():
    """glibc, for the two allocator settings below; None elsewhere (nothing to do there)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _release_freed_memory() -> None:
    """Give the C heap's freed pages back to the system after a large request (glibc keeps what a big body,
    its parse and its render freed in per-thread arenas: without this a server's RSS ratchets up with
    every large hostile request)."""
    gc.collect()  # an error's traceback holds its frames in a cycle, and they the big body or prompt
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _map_large_allocations() -> None:
    """Have glibc serve allocations of 1 MiB and more from their own mappings, returned when freed: its
    default threshold rises after each large free (to 32 MiB), after which a big request's body and
    strings come from the heap and stay with the process. And at most two heaps (arenas): bodies are parsed,
    and prompts rendered, on worker threads, each of which would otherwise get a heap of its own whose
    freed pages stay scattered (RSS rose 1.11x over the hostile run without this, measured)."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        _LIBC.mallopt(-8, 2)        # M_ARENA_MAX


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether a Host header names this machine (DNS rebinding: a web page's own name that resolves to
    127.0.0.1 must not reach a loopback server), as Ollama decides it: localhost and *.localhost, loopback
    addresses, this machine's hostname, and the names given with --allow-host."""
    if not host_header:
        return True  # HTTP/1.0 clients; a browser always sends one
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    if host.startswith("[") and "]" in host:
        host = host[1:host.index("]")]
    host = host.lower().rstrip(".")
    return (is_loopback(host) or host.endswith(".localhost") or host == socket.gethostname().lower()
            or host in extra or any(host.endswith("." + e.lstrip("*.")) for e in extra if e.startswith("*.")))


class HostCheck:
    """ASGI middleware: a Host that is not this machine gets 403 (only for a server bound to loopback)."""

    def __init__(self, app, extra: tuple[str, ...]) -> None:
        self.app, self.extra = app, tuple(e.lower() for e in extra)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.extra):
                return await error_response(ApiError(
                    f"Host {host!r} is not this machine: a loopback server answers only localhost, its addresses "
                    "and names given with `led-local serve --allow-host`", status=403,
                    code="host_not_allowed"))(scope, receive, send)
        return await self.app(scope, receive, send)


def _to_api_error(e: BaseException) -> ApiError | None:
    if isinstance(e, SamplingTooCostly):
        return ApiError(str(e), "grammar", code="sampling_too_costly")
    if isinstance(e, (ValueError, TypeError)):
        return ApiError(str(e), getattr(e, "param", None))
    if isinstance(e, ServerShuttingDown):
        return ApiError(str(e), status=503, kind="server_error", code="server_shutting_down")
    if isinstance(e, ConnectionError):  # an RPC server holding layers stopped answering (rpc.RPCServerLost)
        return ApiError(str(e), status=503, kind="server_error", code="rpc_server_lost")
    return None


class Driver:
    """The thread that runs the Llama's scheduler steps (scheduler.py, the one token loop) whenever a request
    is in flight; requests only submit jobs and read what the steps hand them."""

    def __init__(self, llama: Llama) -> None:
        self.scheduler = llama.scheduler
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.drive, args=(self.stop,), name="led-local-steps",
                                       daemon=True)
        self.thread.start()

    def end_all(self, error: BaseException) -> None:
        """Every job in flight or waiting ends with `error` at the next step (SIGTERM/Ctrl-C: streams get an
        error event and close, so the server does not wait out its graceful timeout). Called from the event
        loop's thread; it only sets flags the steps read."""
        s = self.scheduler
        for job in [*s.inbox, *s.waiting, *s.running]:
            if job.error is None:
                job.error = error
            job.cancelled = True
        s.engine.abort_decodes()  # a step's long prompt chunk ends now, not after its last graph node
        s.wakeup.set()

    def shutdown(self) -> None:
        """End every job at its next step and wait for the thread: only then may the model be freed."""
        self.stop.set()
        self.scheduler.engine.abort_decodes()  # the step in progress ends at its next graph node
        self.scheduler.wakeup.set()
        self.thread.join()
        s = self.scheduler
        with s.lock:  # what is still in flight ends now, cancelled
            for job in [*s.inbox, *s.waiting, *s.running]:
                job.cancelled = True
            while s.inbox or s.waiting or s.running:
                s.step()
        s.engine.abort_decodes(False)

    def submit(self, job: Job) -> asyncio.Event:
        """Hand the job to the steps now (so the queue bound sees it at once, streams included); the event is
        set whenever the steps have something for it."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def notify():
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop has closed (shutdown): no one is reading this job any more
                pass
        job.notify = notify
        self.scheduler.submit(job)
        return ready

    async def deltas(self, job: Job, ready: asyncio.Event):
        """The job's deltas as the steps produce them; a consumer that leaves cancels it."""
        try:
            while True:
                await ready.wait()
                ready.clear()
                items, finished = job.drain()
                for d in items:
                    yield d
                if finished:
                    job.raise_error()
                    return
        finally:
            self.release(job)

    def release(self, job: Job) -> None:
        """A job no one reads any more (its client left, its stream ended early) stops at the next step."""
        if not job.finished:
            self.scheduler.cancel(job)


async def _until_done_or_gone(request: Request, work: "asyncio.Future"):
    """The result of `work`, or None once the client has hung up (the work is then cancelled): a request
    nobody waits for must not go on holding its slot to max_tokens."""
    gone = request.scope.get("led_local.gone")
    if gone is None:
        return await work
    waiter = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if work.done():
        return work.result()
    work.cancel()
    try:
        await work
    except asyncio.CancelledError:
        pass
    return None


def json_body(model: type[BaseModel]) -> Callable:
    """A dependency giving the request's JSON body as `model`, parsed and validated on a worker thread: a body
    of a few MiB takes tens of milliseconds to parse, and on the event loop every stream and /health would
    wait for it. (Parsing holds the GIL all the same; pydantic's parser holds it half as long as json's.)"""
    async def parse(request: Request):
        raw = await request.body()
        return await asyncio.to_thread(_validated, model, raw)
    return parse


def _validated(model: type[BaseModel], raw: bytes) -> BaseModel:
    """FastAPI's RequestValidationError as FastAPI itself raises it (locations under "body"), for one handler."""
    try:
        data = pydantic_core.from_json(raw)
    except ValueError as e:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error",
                                       "ctx": {"error": str(e)}}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _body_schema(model: type[BaseModel]) -> dict:
    """The request body in the OpenAPI document (/docs), which a dependency's body does not give."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def access_line(request: Request, status: int, usage: dict | None, started: float) -> str:
    """One line per request, as llama-server and uvicorn log them: who, what, the status, tokens and time."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    tokens = (f" {usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)} tokens" if usage else "")
    return (f'{client} "{request.method} {request.url.path}" {status}{tokens} '
            f"{(time.perf_counter() - started) * 1000:.0f} ms")


def create_app(llama: Llama, model_id: str, api_key: str | None = None, limits: Limits | None = None,
               log: Callable[[str], None] | None = None, allowed_hosts: tuple[str, ...] | None = None):
    """`log`: where the access log's lines go (None: nowhere). `allowed_hosts`: None serves any Host (a
    server bound beyond loopback); a tuple turns the Host check on, allowing this machine and those names.
    Returns the ASGI app (the FastAPI app inside its guards; `.state` is the FastAPI app's)."""
    limits = limits or Limits(max_n=llama.n_seq_max, max_tokens=2048)
    _map_large_allocations()
    driver = Driver(llama)
    driver.scheduler.max_sample_seconds = limits.max_sample_seconds
    app = FastAPI(title="led-local", version="0.1.0")
    app.state.driver = driver

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        # compared in constant time: a timing side channel must not spell the key out byte by byte
        if api_key is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                           f"Bearer {api_key}".encode()):
            return error_response(ApiError("Incorrect API key provided.", status=401, code="invalid_api_key"))
        return await call_next(request)

    # added last, so outermost: a refused key is logged too
    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.perf_counter()
        request.state.started = started
        response = await call_next(request)
        # a stream logs itself when it ends (its status is sent long before its tokens)
        if log is not None and not getattr(request.state, "streaming", False):
            log(access_line(request, response.status_code, getattr(request.state, "usage", None), started))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(ApiError(f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"))
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(ApiError(f"invalid request: {first.get('msg', 'bad body')}"
                                       + (f" ({param})" if param else ""), param))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # unknown paths (404), wrong methods (405): OpenAI's shape, not FastAPI's {"detail": ...}
        what = {404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(what, status=exc.status_code, headers=getattr(exc, "headers", None),
                                       kind="invalid_request_error", code={404: "not_found", 405: "method_not_allowed"}
                                       .get(exc.status_code)))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return error_response(ApiError(f"internal error: {type(exc).__name__}: {exc}", status=500, kind="server_error"))

    @app.get("/health")
    async def health():
        """llama-server's readiness probe, with what the slots are doing."""
        s = driver.scheduler
        busy = sum(1 for slot in s.slots if slot.job is not None)
        return {"status": "ok", "slots_idle": len(s.slots) - busy, "slots_processing": busy, "queued": s.queued}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": int(time.time()),
                                            "owned_by": "led-local"}]}

    def generation_only() -> None:
        if llama.embedding:
            raise ApiError("this server was started with --embedding and serves only /v1/embeddings; start another "
                           "`led-local serve` without --embedding to generate", status=501, kind="not_implemented_error")

    async def respond(request: Request, body: _Common, build: Callable[[], tuple[list[int], "chat.Rendered | None"]],
                      default_max_tokens: int | None = None, text_offset: int = 0, echo: str = ""):
        """`build` gives the prompt's tokens and, for a chat, the template's rendering (None: a completion);
        it runs off the event loop with the samplers' building (grammars), which keeps every other stream
        and /health answering meanwhile."""
        def work():
            tokens, rendered = build()
            if rendered is not None:
                try:
                    body.grammar, body.stop = chat_constraints(rendered, body.grammar, body.response_format, body.stop)
                except ValueError as e:
                    raise ApiError(str(e), "response_format") from None
            kwargs = body.generation_kwargs(limits, default_max_tokens) | {"text_offset": text_offset, "echo": echo}
            return prepare(llama, tokens, rendered=rendered, **kwargs)

        try:
            job, shape = await asyncio.to_thread(work)
        except ApiError:
            raise
        except Exception as e:
            api = _to_api_error(e)
            if api is None:
                raise
            raise api from None
        if driver.scheduler.queued >= limits.max_queue:
            raise ApiError(f"the server is busy ({limits.max_queue} requests are waiting for a slot); retry shortly",
                           status=503, kind="server_error", code="server_busy", headers={"Retry-After": "1"})
        shape.head["model"] = model_id
        ready = driver.submit(job)  # at once, with no await since the check: the bound counts streams too

        if not body.stream:
            async def collect():
                return [d async for d in driver.deltas(job, ready)]
            try:
                deltas = await _until_done_or_gone(request, asyncio.ensure_future(collect()))
            except Exception as e:
                raise (_to_api_error(e) or e) from None
            if deltas is None:  # the client hung up; nobody reads this
                return JSONResponse(status_code=499, content={"error": {"message": "client closed the request",
                                                                       "type": "invalid_request_error",
                                                                       "param": None, "code": None}})
            result = shape.response(deltas)
            request.state.usage = result.get("usage") if isinstance(result, dict) else None
            return result

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        request.state.streaming = True

        async def events():
            gen = driver.deltas(job, ready)
            status = 200
            try:
                async for d in gen:
                    chunk = shape.chunk(d)
                    if chunk is not None:
                        yield {"data": json.dumps(chunk)}
                if include_usage:
                    yield {"data": json.dumps(shape.last_chunk())}
                yield {"data": "[DONE]"}
            except Exception as e:  # noqa: BLE001  (the stream has started: the error goes in it)
                err = _to_api_error(e) or ApiError(str(e), status=500, kind="server_error")
                status = err.status
                yield {"data": json.dumps({"error": {"message": err.message, "type": err.kind, "param": err.param,
                                                     "code": err.code}})}
            finally:
                await gen.aclose()
                driver.release(job)  # a client that went away (even before the stream began) cancels its job
                if log is not None:
                    log(access_line(request, status, shape.last_chunk().get("usage"), request.state.started))

        # at SIGTERM the job ends with an error at the next step (Driver.end_all) and the generator sends it;
        # sse-starlette's own cancel comes only after this grace, as a last resort
        return EventSourceResponse(events(), ping=15, shutdown_event=anyio.Event(), shutdown_grace_period=3)

    @app.post("/v1/embeddings", openapi_extra=_body_schema(EmbeddingRequest))
    async def embeddings(body: EmbeddingRequest = Depends(json_body(EmbeddingRequest))):
        """Pooled, unit-length vectors as llama-server gives them; needs `serve --embedding`."""
        body.check_fields()
        if not llama.embedding:
            raise ApiError("this server computes no embeddings; start it with `led-local serve --embedding`",
                           "input", status=501, kind="not_implemented_error")
        try:
            out = await asyncio.to_thread(lambda: llama.create_embedding(body.input, model_id, normalize=True))
        except (ValueError, TypeError) as e:
            raise ApiError(str(e), "input") from None
        if body.encoding_format == "base64":
            for item in out["data"]:
                item["embedding"] = base64.b64encode(np.asarray(item["embedding"], "<f4").tobytes()).decode()
        return out

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request, body: CompletionRequest = Depends(json_body(CompletionRequest))):
        generation_only()
        if not body.suffix:
            def build():
                return completion_prompt_tokens(llama, body.prompt), None
        else:
            def build():
                return fim_prompt_tokens(llama, body.prompt, body.suffix), None
        return await respond(request, body, build, 16, len(body.prompt), body.prompt if body.echo else "")

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatRequest))
    async def chat_completions(request: Request, body: ChatRequest = Depends(json_body(ChatRequest))):
        generation_only()

        def build():  # the template's rendering: off the event loop too
            return chat_prompt(llama, body.messages, body.tools, body.tool_choice, body.parallel_tool_calls)
        return await respond(request, body, build)

    guarded = BodyLimit(app, limits.max_body_bytes)
    if allowed_hosts is not None:
        guarded = HostCheck(guarded, allowed_hosts)
    guarded.state = app.state
    return guarded
