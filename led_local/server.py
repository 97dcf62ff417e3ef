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
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from . import chat
from .generate import (chat_constraints, chat_logprobs, chat_prompt, completion_prompt_tokens,
                       fim_prompt_tokens, prepare)
from .llama import Llama
from .scheduler import Job


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


# accepted and without effect on the output
HARMLESS_FIELDS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "cache_prompt"}
# not honoured yet: accepted only at the value that asks for nothing
NEUTRAL_VALUES = {"echo": (None, False),
                  "suffix": (None, ""), "best_of": (None, 1), "response_format": (None, {"type": "text"}),
                  "functions": (None, []),
                  "function_call": (None, "none", "auto")}


class _Common(BaseModel):
    # any other field is refused by name (check_fields): one that would change the output must not be
    # silently ignored
    model_config = ConfigDict(extra="allow")
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
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    typical_p: float = Field(default=1.0, ge=0.0, le=1.0)
    mirostat: int = Field(default=0, ge=0, le=2)  # llama-server's names
    mirostat_tau: float = Field(default=5.0, ge=0.0)
    mirostat_eta: float = Field(default=0.1, ge=0.0)
    grammar: str | None = None  # GBNF, as llama-server takes it

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
        kwargs: dict[str, Any] = dict(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                                      top_k=self.top_k, min_p=self.min_p, n=self.n, stop=self.stop, seed=self.seed,
                                      sampler=self.sampler, repeat_penalty=self.repeat_penalty,
                                      frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                                      logit_bias=self.logit_bias, typical_p=self.typical_p, mirostat_mode=self.mirostat,
                                      mirostat_tau=self.mirostat_tau, mirostat_eta=self.mirostat_eta,
                                      grammar=self.grammar, logprobs=self.logprob_alternatives())
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
    max_queue: int = 64  # requests waiting for a slot; beyond it: 503 with Retry-After


def _to_api_error(e: BaseException) -> ApiError | None:
    if isinstance(e, (ValueError, TypeError)):
        return ApiError(str(e), getattr(e, "param", None))
    if isinstance(e, ConnectionError):  # an RPC server holding layers stopped answering (rpc.RPCServerLost)
        return ApiError(str(e), status=503, kind="server_error", code="rpc_server_lost")
    return None


class Driver:
    """The thread that runs the Llama's scheduler steps (scheduler.py, the one token loop) whenever a request
    is in flight; requests only submit jobs and read what the steps hand them."""

    def __init__(self, llama: Llama) -> None:
        self.scheduler = llama._scheduler
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.drive, args=(self.stop,), name="led-local-steps",
                                       daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        """End every job at its next step and wait for the thread: only then may the model be freed."""
        self.stop.set()
        self.scheduler.wakeup.set()
        self.thread.join()
        s = self.scheduler
        with s.lock:  # what is still in flight ends now, cancelled
            for job in [*s.inbox, *s.waiting, *s.running]:
                job.cancelled = True
            while s.inbox or s.waiting or s.running:
                s.step()

    async def deltas(self, job: Job):
        """Submit a job and yield its deltas as the steps produce them; a consumer that leaves cancels it."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        job.notify = lambda: loop.call_soon_threadsafe(ready.set)
        self.scheduler.submit(job)
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
            if not job.finished:
                self.scheduler.cancel(job)


def access_line(request: Request, status: int, usage: dict | None, started: float) -> str:
    """One line per request, as llama-server and uvicorn log them: who, what, the status, tokens and time."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    tokens = (f" {usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)} tokens" if usage else "")
    return (f'{client} "{request.method} {request.url.path}" {status}{tokens} '
            f"{(time.perf_counter() - started) * 1000:.0f} ms")


def create_app(llama: Llama, model_id: str, api_key: str | None = None, limits: Limits | None = None,
               log: Callable[[str], None] | None = None) -> FastAPI:
    """`log`: where the access log's lines go (None: nowhere)."""
    limits = limits or Limits(max_n=llama.n_seq_max, max_tokens=2048)
    driver = Driver(llama)
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
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(ApiError(f"invalid request: {first.get('msg', 'bad body')}"
                                       + (f" ({param})" if param else ""), param))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

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

    async def respond(request: Request, body: _Common, tokens: Callable[[], list[int]], rendered: "chat.Rendered | None",
                      default_max_tokens: int | None = None, text_offset: int = 0, echo: str = ""):
        """`rendered`: a chat request's template rendering; None: a completion."""
        kwargs = body.generation_kwargs(limits, default_max_tokens) | {"text_offset": text_offset, "echo": echo}
        try:
            # tokenizing and building the samplers (grammars) are work: off the event loop, which keeps every
            # other stream and /health answering meanwhile
            job, shape = await asyncio.to_thread(lambda: prepare(llama, tokens(), rendered=rendered, **kwargs))
        except Exception as e:
            api = _to_api_error(e)
            if api is None:
                raise
            raise api from None
        if driver.scheduler.queued >= limits.max_queue:
            raise ApiError(f"the server is busy ({limits.max_queue} requests are waiting for a slot); retry shortly",
                           status=503, kind="server_error", code="server_busy", headers={"Retry-After": "1"})
        shape.head["model"] = model_id

        if not body.stream:
            try:
                deltas = [d async for d in driver.deltas(job)]
            except ConnectionError as e:
                raise _to_api_error(e) from None
            result = shape.response(deltas)
            request.state.usage = result.get("usage") if isinstance(result, dict) else None
            return result

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        request.state.streaming = True

        async def events():
            gen = driver.deltas(job)
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
                yield {"data": json.dumps({"error": {"message": err.message, "type": err.kind}})}
            finally:
                await gen.aclose()  # a client that went away cancels its job at the next step
                if log is not None:
                    log(access_line(request, status, shape.last_chunk().get("usage"), request.state.started))

        return EventSourceResponse(events(), ping=15)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
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

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        generation_only()
        tokens = (lambda: completion_prompt_tokens(llama, body.prompt)) if not body.suffix else \
            (lambda: fim_prompt_tokens(llama, body.prompt, body.suffix))
        return await respond(request, body, tokens, None, 16, len(body.prompt),
                             body.prompt if body.echo else "")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest):
        generation_only()
        try:  # the template's rendering too, off the event loop
            tokens, rendered = await asyncio.to_thread(chat_prompt, llama, body.messages, body.tools, body.tool_choice,
                                                       body.parallel_tool_calls)
        except ValueError as e:
            raise _to_api_error(e) from None
        try:
            body.grammar, body.stop = chat_constraints(rendered, body.grammar, body.response_format, body.stop)
        except ValueError as e:
            raise ApiError(str(e), "response_format") from None
        return await respond(request, body, lambda: tokens, rendered)

    return app
