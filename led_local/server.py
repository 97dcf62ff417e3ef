"""An OpenAI-compatible HTTP server (FastAPI on uvicorn) for desktop apps: `led-local serve`.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with and without `stream`
(server-sent events). LED and DoLa are chosen by extra body fields: `sampler`, `led: {d, k, latent_norm,
exploit, think_only}`, `dola_layers` (the official client passes them through `extra_body`).

One llama.cpp context serves the requests one after another: a single worker thread takes jobs from a
queue, so the context is only ever touched by that thread. Streaming chunks cross to the event loop through
an asyncio queue; a client that goes away sets a flag the worker checks at every token, which ends its
generation and frees the context for the next request.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from .chat import ChatTemplateError
from .llama import Llama


# --- request bodies --------------------------------------------------------------------------------------

class LEDFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    d: int = 8
    k: int = 8
    latent_norm: bool = False
    exploit: bool = True
    think_only: bool = True


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, logit_bias, ...) are ignored
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    sampler: Literal["standard", "led", "dola"] = "standard"
    led: LEDFields | None = None
    dola_layers: Literal["low", "high"] | list[int] | None = None
    repeat_penalty: float = Field(default=1.0, gt=0.0)

    def generation_kwargs(self, limits: "Limits", default_max_tokens: int | None) -> dict:
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens or limits.max_tokens
        if max_tokens > limits.max_tokens:
            raise ApiError(f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens}", "max_tokens")
        if self.n > limits.max_n:
            raise ApiError(f"n={self.n} exceeds this server's limit of {limits.max_n}", "n")
        kwargs: dict[str, Any] = dict(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                                      top_k=self.top_k, min_p=self.min_p, n=self.n, stop=self.stop, seed=self.seed,
                                      sampler=self.sampler, repeat_penalty=self.repeat_penalty)
        if self.led is not None:
            kwargs["led"] = self.led.model_dump()
        if self.dola_layers is not None:
            kwargs["dola_layers"] = self.dola_layers
        return kwargs


class CompletionRequest(_Common):
    prompt: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


# --- errors in OpenAI's shape ----------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(status_code=e.status, content={
        "error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})


# --- the worker that owns the context --------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    max_n: int
    max_tokens: int


class Worker:
    """Runs jobs on one thread, in arrival order: the llama.cpp context never sees two threads."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.closing = threading.Event()
        self.current_cancel: threading.Event | None = None
        self.thread = threading.Thread(target=self._loop, name="led-local-worker", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job()

    def shutdown(self) -> None:
        """Stop the running stream at its next token, skip queued jobs, and wait for the thread: only then
        may the model be freed."""
        self.closing.set()
        if self.current_cancel is not None:
            self.current_cancel.set()
        self.jobs.put(None)
        self.thread.join()

    async def call(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def job() -> None:
            try:
                if self.closing.is_set():
                    raise RuntimeError("the server is shutting down")
                result = fn()
            except BaseException as e:  # handed to the request that asked
                loop.call_soon_threadsafe(future.set_exception, e)
            else:
                loop.call_soon_threadsafe(future.set_result, result)
        self.jobs.put(job)
        return await future

    def stream(self, make_chunks: Callable[[], Any]) -> tuple[asyncio.Queue, threading.Event]:
        """Start a streaming job; returns the queue its chunks arrive on (None ends it) and its cancel flag."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def job() -> None:
            chunks = None
            self.current_cancel = cancel
            try:
                if cancel.is_set() or self.closing.is_set():
                    return
                chunks = make_chunks()
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    loop.call_soon_threadsafe(out.put_nowait, chunk)
            except BaseException as e:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(out.put_nowait, e)
            finally:
                if chunks is not None:
                    chunks.close()  # frees the samplers and the context's lock on this very thread
                self.current_cancel = None
                try:
                    loop.call_soon_threadsafe(out.put_nowait, None)
                except RuntimeError:  # the event loop is gone (shutdown)
                    pass
        self.jobs.put(job)
        return out, cancel


def _to_api_error(e: BaseException) -> ApiError | None:
    if isinstance(e, (ValueError, TypeError, ChatTemplateError)):
        return ApiError(str(e))
    return None


def create_app(llama: Llama, model_id: str, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits(max_n=llama.n_seq_max, max_tokens=2048)
    worker = Worker()
    app = FastAPI(title="led-local", version="0.1.0")
    app.state.worker = worker

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key is not None and request.headers.get("authorization", "") != f"Bearer {api_key}":
            return error_response(ApiError("Incorrect API key provided.", status=401, code="invalid_api_key"))
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(ApiError(f"invalid request: {first.get('msg', 'bad body')}"
                                       + (f" ({param})" if param else ""), param))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": int(time.time()),
                                            "owned_by": "led-local"}]}

    async def respond(body: _Common, run: Callable[..., Any], default_max_tokens: int | None):
        kwargs = body.generation_kwargs(limits, default_max_tokens)
        if not body.stream:
            try:
                result = await worker.call(lambda: run(**kwargs))
            except Exception as e:
                api = _to_api_error(e)
                if api is None:
                    raise
                raise api from None
            return {**result, "model": model_id}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # validate before the stream starts, so bad requests still get a 400 and not a broken stream
        try:
            await worker.call(lambda: _dry_run(llama, run, kwargs))
        except Exception as e:
            api = _to_api_error(e)
            if api is None:
                raise
            raise api from None
        chunks, cancel = worker.stream(lambda: run(stream=True, **kwargs))

        async def events():
            try:
                while True:
                    item = await chunks.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        err = _to_api_error(item) or ApiError(str(item), status=500, kind="server_error")
                        yield {"data": json.dumps({"error": {"message": err.message, "type": err.kind}})}
                        break
                    if not item["choices"] and not include_usage:
                        continue
                    yield {"data": json.dumps({**item, "model": model_id})}
                yield {"data": "[DONE]"}
            finally:
                cancel.set()  # the client left (or the stream ended): stop generating at the next token

        return EventSourceResponse(events(), ping=15)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await respond(body, lambda **kw: llama.create_completion(body.prompt, **kw), 16)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        messages = [m.model_dump() for m in body.messages]
        return await respond(body, lambda **kw: llama.create_chat_completion(messages, **kw), None)

    return app


def _dry_run(llama: Llama, run: Callable[..., Any], kwargs: dict) -> None:
    """Everything a request is checked against (prompt length, sampler settings) without generating."""
    gen = run(stream=True, **kwargs)  # validation happens when the call is made; the stream is not started
    gen.close()
