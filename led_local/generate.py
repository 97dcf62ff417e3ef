"""The token loop: n parallel sequences over one shared prompt, streamed as OpenAI-shaped results.

One step, for every live sequence at once: sample a token from its output row, detokenize it
incrementally, check end-of-generation / stop strings / max_tokens, then decode all the new tokens in
one batch. The prompt is decoded once on sequence 0 and its KV cells are shared by the others.
"""

from __future__ import annotations

import codecs
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from . import chat
from .sampling import SAMPLERS, DoLaSampling, LEDConfig, LEDSampling, NativeSamplers, StandardSampling, resolve_seed


@dataclass
class _Sequence:
    index: int
    seed: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    pending_trace: list = field(default_factory=list)
    cut: bool = False  # a stop string ended it: the text is final, nothing to flush
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


@dataclass(frozen=True)
class Delta:
    """New text of sequence `index`; `finish_reason` is set on its last delta."""

    index: int
    text: str
    finish_reason: str | None = None
    trace: list[dict] | None = None  # per-token LED trace of the tokens sampled in this step (trace=True)


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
    if len(tokens) >= llama.n_ctx:
        raise ValueError(
            f"the prompt has {len(tokens)} tokens, which leaves no room in the context window "
            f"(n_ctx={llama.n_ctx}); shorten it or create Llama(..., n_ctx=larger)"
        )
    return tokens


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (not streamed yet)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


def stream_deltas(
    llama,
    prompt_tokens: list[int],
    *,
    n: int,
    max_tokens: int | None,
    spec: StandardSampling | LEDSampling,
    seed: int,
    stop: list[str],
    usage: dict,
    trace: bool = False,
) -> Iterator[Delta]:
    """Generate n samples of one prompt; sample i is seeded with seed + i. Fills `usage` as it goes."""
    n_prompt = len(prompt_tokens)
    seqs = [_Sequence(index=i, seed=(seed + i) & 0xFFFFFFFF) for i in range(n)]
    usage.update(prompt_tokens=n_prompt, completion_tokens=0, total_tokens=n_prompt)
    longest_stop = max((len(s) for s in stop), default=0)

    with llama._lock:
        llama._check_open()
        llama._set_latents(*spec.graph_needs(llama))
        llama.reset()
        with NativeSamplers(llama, spec, [s.seed for s in seqs]) as samplers:
            (last,) = llama._decode([(t, i, 0, i == n_prompt - 1) for i, t in enumerate(prompt_tokens)])
            for s in seqs[1:]:
                llama._copy_sequence(0, s.index)
            rows = {s.index: last for s in seqs}  # every sequence samples its first token from the prompt's row
            cells = n_prompt

            live = list(seqs)
            while live:
                batch: list[tuple[int, int, int, bool]] = []
                for s in live:
                    token = samplers.sample(s.index, rows[s.index])
                    if trace:
                        s.pending_trace.append({"token": token, **(samplers.trace(s.index) or {})})
                    if llama.is_eog(token):
                        s.finish_reason = "stop"
                    else:
                        s.tokens.append(token)
                        usage["completion_tokens"] += 1
                        before = len(s.text)
                        s.text += s.decoder.decode(llama.token_to_bytes(token))
                        if stop:
                            window = max(0, before - longest_stop + 1)
                            hits = [p for p in (s.text.find(x, window) for x in stop) if p >= 0]
                            if hits:
                                s.text = s.text[: min(hits)]
                                s.finish_reason, s.cut = "stop", True
                        if s.finish_reason is None and max_tokens is not None and len(s.tokens) >= max_tokens:
                            s.finish_reason = "length"
                    if s.finish_reason is None:
                        batch.append((token, n_prompt + len(s.tokens) - 1, s.index, True))

                if batch and cells + len(batch) > llama.n_ctx:
                    for s in live:
                        if s.finish_reason is None:
                            s.finish_reason = "length"
                    batch = []

                for s in live:
                    if s.finish_reason is not None:
                        if not s.cut:
                            s.text += s.decoder.decode(b"", final=True)
                        end = len(s.text)
                    else:
                        end = len(s.text) - _held_back(s.text, stop)
                    if end > s.emitted or s.finish_reason is not None or (trace and s.pending_trace):
                        yield Delta(s.index, s.text[s.emitted : end], s.finish_reason,
                                    s.pending_trace if trace else None)
                        s.emitted, s.pending_trace = end, []

                # a finished sequence keeps its KV cells until the call ends: reusing them would put later
                # tokens of the others into lower cells, change the order attention sums in, and break
                # "n parallel samples == the same seeds one by one" in the last bits
                live = [s for s in live if s.finish_reason is None]
                usage["total_tokens"] = n_prompt + usage["completion_tokens"]
                if not batch:
                    break
                outputs = llama._decode(batch)
                rows = {entry[2]: idx for entry, idx in zip(batch, outputs)}
                cells += len(batch)


def _check_common(llama, n: int, max_tokens: int | None, sampler: str) -> int | None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > llama.n_seq_max:
        raise ValueError(f"n={n} exceeds this Llama's n_seq_max={llama.n_seq_max}; create Llama(..., n_seq_max={n})")
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
    max_tokens = _check_common(llama, n, max_tokens, sampler)
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
