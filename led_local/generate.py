"""Requests as llama-cpp-python users make them (`create_completion`, `create_chat_completion`), checked
and submitted to the Llama's scheduler (scheduler.py: the one token loop), and its deltas shaped as
OpenAI's results and chunks.
"""

from __future__ import annotations

import time
import uuid
from typing import Iterator, Sequence

from . import chat
from .scheduler import Delta, Job
from .sampling import SAMPLERS, DoLaSampling, LEDConfig, LEDSampling, NativeSamplers, StandardSampling, resolve_seed


def _normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _prompt_tokens(llama, prompt: str | bytes | Sequence[int]) -> list[int]:
    if isinstance(prompt, (str, bytes)):
        tokens = llama.tokenize(prompt, add_bos=True, special=True)
    elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        tokens = list(prompt)
        llama.detokenize(tokens)  # validates the ids
    else:
        raise TypeError("prompt must be a string, bytes, or a list of token ids")
    if not tokens:
        raise ValueError("the prompt is empty")
    return tokens  # (its length against the context window: the scheduler's check)


def stream_deltas(
    llama,
    prompt_tokens: list[int],
    *,
    n: int,
    max_tokens: int | None,
    spec: StandardSampling | LEDSampling | DoLaSampling,
    seed: int,
    stop: list[str],
    usage: dict,
    trace: bool = False,
) -> Iterator[Delta]:
    """Generate n samples of one prompt on the Llama's scheduler (sample i is seeded with seed + i), running
    its steps while the deltas are consumed; fills `usage` as it goes."""
    job = Job(prompt=list(prompt_tokens), n=n, max_tokens=max_tokens, spec=spec, seed=seed, stop=stop,
              trace=trace, usage=usage)
    scheduler = llama._scheduler
    scheduler.check(job)  # bad requests fail at the call; the job is submitted when the deltas are asked for

    def deltas() -> Iterator[Delta]:
        yield from scheduler.results(scheduler.submit(job))
    return deltas()


def _check_common(max_tokens: int | None, sampler: str) -> int | None:
    """(n and the prompt's length are checked by the scheduler, scheduler.Scheduler.check)"""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise TypeError(f"max_tokens must be an integer or None, got {max_tokens!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    return None if max_tokens is None or max_tokens <= 0 else max_tokens


def _sampler_spec(sampler: str, temperature, top_k, top_p, min_p, repeat_penalty, led, dola_layers):
    if led is not None and sampler != "led":
        raise ValueError("led= settings apply only with sampler='led'")
    if dola_layers is not None and sampler != "dola":
        raise ValueError("dola_layers applies only with sampler='dola'")
    if sampler == "led":
        # LED is the whole decoding rule: its own top-k (LEDConfig.k) replaces top_k/top_p/min_p
        return LEDSampling(temperature=temperature, config=LEDConfig.of(led))
    standard = StandardSampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty)
    if sampler == "dola":
        return DoLaSampling(chain=standard, dola_layers=dola_layers or "high")
    return standard


def _run(llama, tokens, *, n, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, stop, seed, sampler,
         led, trace, dola_layers=None):
    max_tokens = _check_common(max_tokens, sampler)
    spec = _sampler_spec(sampler, temperature, top_k, top_p, min_p, repeat_penalty, led, dola_layers)
    spec.graph_needs(llama)  # checks the settings against the model before anything runs
    usage: dict = {}
    deltas = stream_deltas(llama, tokens, n=n, max_tokens=max_tokens, spec=spec,
                           seed=resolve_seed(seed, llama.seed), stop=_normalize_stop(stop), usage=usage,
                           trace=bool(trace))
    return deltas, usage


def _collect(deltas: Iterator[Delta], n: int, trace: bool) -> tuple[list[str], list, list]:
    texts, reasons, traces = [""] * n, [None] * n, [[] for _ in range(n)]
    for d in deltas:
        texts[d.index] += d.text
        reasons[d.index] = d.finish_reason or reasons[d.index]
        if trace and d.trace:
            traces[d.index] += d.trace
    return texts, reasons, traces


def _trace_summary(steps: list[dict]) -> dict:
    explored = sum(1 for t in steps if t.get("explored"))
    return {"steps": steps, "explored": explored, "explored_share": explored / len(steps) if steps else 0.0}


def create_completion(
    llama,
    prompt: str | bytes | Sequence[int],
    *,
    max_tokens: int | None = 16,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    repeat_penalty: float = 1.0,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    stream: bool = False,
    n: int = 1,
    sampler: str = "standard",
    led: LEDConfig | dict | None = None,
    dola_layers: str | list[int] | None = None,
    trace: bool = False,
) -> dict | Iterator[dict]:
    """Complete `prompt` n times. max_tokens None or <= 0 runs until end of generation or a full context.

    Returns an OpenAI `text_completion` dict, or with stream=True an iterator of chunks whose last one has
    empty `choices` and the `usage`. sampler="led" decodes with LED (`led`: an LEDConfig or a dict of its
    fields); sampler="dola" with DoLa (`dola_layers`: "low", "high" (default) or transformers' layer
    indices); trace=True adds each choice's per-token `led_trace` (LED: explored, depth m*, p_top1; DoLa:
    the premature layer).
    """
    tokens = _prompt_tokens(llama, prompt)
    deltas, usage = _run(llama, tokens, n=n, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, stop=stop, seed=seed,
                         sampler=sampler, led=led, trace=trace, dola_layers=dola_layers)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "text_completion", "created": created, "model": llama.model_path}

    if stream:
        def chunks() -> Iterator[dict]:
            for d in deltas:
                choice = {"text": d.text, "index": d.index, "logprobs": None, "finish_reason": d.finish_reason}
                if trace:
                    choice["led_trace"] = d.trace or []
                yield {**head, "choices": [choice]}
            yield {**head, "choices": [], "usage": dict(usage)}
        return chunks()

    texts, reasons, traces = _collect(deltas, n, trace)
    choices = [{"text": texts[i], "index": i, "logprobs": None, "finish_reason": reasons[i]} for i in range(n)]
    if trace:
        for i, c in enumerate(choices):
            c["led_trace"] = _trace_summary(traces[i])
    return {**head, "choices": choices, "usage": usage}


def chat_prompt_tokens(llama, messages: list[dict]) -> list[int]:
    bos, eos = llama.token_text(llama.token_bos()), llama.token_text(llama.token_eos())
    text = chat.render(llama.chat_template(), messages, bos_token=bos, eos_token=eos)
    add_bos = bool(llama._lib.llama_vocab_get_add_bos(llama._vocab)) and not text.startswith(bos)
    tokens = llama.tokenize(text, add_bos=add_bos, special=True)
    return _prompt_tokens(llama, tokens)


def create_chat_completion(
    llama,
    messages: list[dict],
    *,
    max_tokens: int | None = None,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    repeat_penalty: float = 1.0,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    stream: bool = False,
    n: int = 1,
    sampler: str = "standard",
    led: LEDConfig | dict | None = None,
    dola_layers: str | list[int] | None = None,
    trace: bool = False,
) -> dict | Iterator[dict]:
    """Chat completion over the model's chat template: an OpenAI `chat.completion` dict, or chunks."""
    tokens = chat_prompt_tokens(llama, messages)
    deltas, usage = _run(llama, tokens, n=n, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, stop=stop, seed=seed,
                         sampler=sampler, led=led, trace=trace, dola_layers=dola_layers)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "created": created, "model": llama.model_path}

    if stream:
        def chunks() -> Iterator[dict]:
            started: set[int] = set()
            for d in deltas:
                delta: dict = {} if d.index in started else {"role": "assistant"}
                started.add(d.index)
                if d.text:
                    delta["content"] = d.text
                choice = {"index": d.index, "delta": delta, "logprobs": None, "finish_reason": d.finish_reason}
                if trace:
                    choice["led_trace"] = d.trace or []
                yield {**head, "object": "chat.completion.chunk", "choices": [choice]}
            yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": dict(usage)}
        return chunks()

    texts, reasons, traces = _collect(deltas, n, trace)
    choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                "finish_reason": reasons[i]} for i in range(n)]
    if trace:
        for i, c in enumerate(choices):
            c["led_trace"] = _trace_summary(traces[i])
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage}
