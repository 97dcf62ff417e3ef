"""Requests as llama-cpp-python users make them (`create_completion`, `create_chat_completion`), checked
and submitted to the Llama's scheduler (scheduler.py: the one token loop), and its deltas shaped as
OpenAI's results and chunks.
"""

from __future__ import annotations

import time
import uuid
from typing import Iterator, Sequence

from . import chat, params
from .errors import FieldError
from .grammar import response_format_grammar
from .scheduler import Delta, Job
from .textstream import TextStream
from .sampling import (SAMPLERS, Constraints, DoLaSampling, LEDConfig, LEDSampling, StandardSampling,
                       resolve_seed)


def _normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _texts(llama, stop: list[str]):
    """What makes each sample's text stream: the model's token bytes, cut at `stop`."""
    return lambda: TextStream(llama.token_to_bytes, stop)


def fim_prompt_tokens(llama, prompt: str | bytes | Sequence[int], suffix: str) -> list[int]:
    """Fill in the middle: the model's prefix token, the prompt, its suffix token, `suffix`, its middle token
    (the order llama-cpp-python and Qwen2.5-Coder use); the completion is the middle."""
    if not isinstance(suffix, str):
        raise TypeError("suffix must be a string")
    fim = llama.fim_tokens()
    if fim is None:
        raise ValueError("suffix (fill in the middle) needs a model with FIM tokens, such as qwen2.5-coder; "
                         "this one has none")
    pre, suf, mid = fim
    head = completion_prompt_tokens(llama, prompt)
    bos = head[:1] if head and head[0] == llama.token_bos() and llama.engine.adds_bos() else []
    body = head[len(bos):]
    return bos + [pre] + body + [suf] + llama.tokenize(suffix, add_bos=False) + [mid]


def echo_text(llama, prompt: str | bytes | Sequence[int], tokens: list[int]) -> str:
    """The prompt as `echo` puts it before the completion: its own text, or its tokens' text."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, bytes):
        return prompt.decode("utf-8", errors="replace")
    return llama.detokenize(tokens).decode("utf-8", errors="replace")


def check_text_fits(llama, text: str | bytes, param: str) -> None:
    """A prompt too long for the context in bytes alone is refused before it is tokenized (a 50 MB prompt
    took 22 s and 2.9 GB to tokenize): no token stands for more than llama.max_token_bytes() bytes."""
    size = len(text.encode("utf-8", "replace")) if isinstance(text, str) else len(text)
    most = llama.n_ctx() * llama.max_token_bytes()
    if size > most:
        raise FieldError(f"the prompt is {size} bytes, more than the context window of {llama.n_ctx()} tokens can "
                         f"hold (at most {most} bytes with this model's tokens); shorten it", param)


def completion_prompt_tokens(llama, prompt: str | bytes | Sequence[int]) -> list[int]:
    if isinstance(prompt, (str, bytes)):
        check_text_fits(llama, prompt, "prompt")
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
    job = Job(prompt=list(prompt_tokens), n=n, max_tokens=max_tokens, spec=spec, seed=seed,
              text=_texts(llama, stop), trace=trace, usage=usage)
    return _deltas(llama, job)


def _deltas(llama, job: Job) -> Iterator[Delta]:
    scheduler = llama.scheduler
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


# llama-cpp-python's names and defaults for what constrains the final logits and for the truncations
CONSTRAINT_DEFAULTS = {**params.defaults(params.PENALTIES), "logit_bias": None, "grammar": None}
TRUNCATION_DEFAULTS = params.defaults(("typical_p", "mirostat_mode", "mirostat_tau", "mirostat_eta"))


def sampler_spec(sampler: str, *, temperature: float = params.BY_NAME["temperature"].default,
                 top_k: int = params.BY_NAME["top_k"].default, top_p: float = params.BY_NAME["top_p"].default,
                 min_p: float = params.BY_NAME["min_p"].default, led=None, dola_layers=None, **options):
    """The sampler a request asks for. `options`: CONSTRAINT_DEFAULTS' and TRUNCATION_DEFAULTS' names."""
    unknown = set(options) - set(CONSTRAINT_DEFAULTS) - set(TRUNCATION_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown sampling options: {', '.join(sorted(unknown))}")
    if led is not None and sampler != "led":
        raise ValueError("led= settings apply only with sampler='led'")
    if dola_layers is not None and sampler != "dola":
        raise ValueError("dola_layers applies only with sampler='dola'")
    constraints = {k: options.get(k, v) for k, v in CONSTRAINT_DEFAULTS.items()}
    truncations = {k: options.get(k, v) for k, v in TRUNCATION_DEFAULTS.items()}
    if sampler == "led":
        # LED is the whole decoding rule: its own top-k (LEDConfig.k) replaces top_k/top_p/min_p; what
        # constrains the final logits (bias, penalties, grammar) acts before it picks its candidates
        changed = sorted(k for k, v in truncations.items() if v != TRUNCATION_DEFAULTS[k])
        if changed:
            raise ValueError(f"{', '.join(changed)} cannot apply with sampler='led' (LED draws from its own "
                             "candidates); leave them at their defaults")
        return LEDSampling(temperature=temperature, config=LEDConfig.of(led), constraints=Constraints(
            logit_bias=constraints["logit_bias"], repeat_penalty=constraints["repeat_penalty"],
            frequency_penalty=constraints["frequency_penalty"], presence_penalty=constraints["presence_penalty"],
            grammar=constraints["grammar"]))
    standard = StandardSampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                **{k: v for k, v in constraints.items() if v is not None}, **truncations)
    if sampler == "dola":
        return DoLaSampling(chain=standard, dola_layers=dola_layers or "high")
    return standard


def _check_logprobs(logprobs: int | None, most: int = 20) -> int | None:
    if logprobs is None:
        return None
    if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= most:
        raise ValueError(f"logprobs (the alternatives listed per token) must be an integer in [0, {most}], "
                         f"got {logprobs!r}")
    return logprobs


def prepare(llama, tokens: list[int], *, n: int = 1, max_tokens: int | None, stop, seed: int | None,
            sampler: str, trace: bool = False, logprobs: int | None = None, text_offset: int = 0,
            echo: str = "", rendered: chat.Rendered | None = None, **sampling) -> tuple[Job, "Shape"]:
    """A checked request, not yet submitted: the scheduler's job and the shape of its OpenAI results. Every
    setting is checked against the model here, before anything runs. `sampling`: sampler_spec's options;
    `logprobs`: hand out each token's log-probability and that many alternatives (None: none); `rendered`:
    a chat request's template rendering (its answers are read back through chat.Reply); None: a completion."""
    max_tokens = _check_common(max_tokens, sampler)
    logprobs = _check_logprobs(logprobs)
    spec = sampler_spec(sampler, **sampling)
    spec.check(llama.engine)
    spec.graph_needs(llama.engine)
    job = Job(prompt=tokens, n=n, max_tokens=max_tokens, spec=spec, seed=resolve_seed(seed, llama.seed),
              text=_texts(llama, _normalize_stop(stop)), trace=bool(trace), logprobs=logprobs)
    llama.scheduler.check(job)
    if echo and logprobs is not None:
        raise ValueError("echo with logprobs is not supported (the prompt's own logprobs are not computed); "
                         "ask for one or the other")
    replies = [chat.Reply(llama, rendered) for _ in range(n)] if rendered is not None else None
    return job, Shape(llama.model_path, replies=replies, n=n, trace=bool(trace), usage=job.usage,
                      token_bytes=llama.token_to_bytes if logprobs is not None else None, text_offset=text_offset,
                      echo=echo)


class Shape:
    """OpenAI's shapes for one request's deltas: `text_completion` / `chat.completion` and their chunks."""

    def __init__(self, model: str, *, replies: "list[chat.Reply] | None", n: int, trace: bool, usage: dict,
                 token_bytes=None, text_offset: int = 0, echo: str = "") -> None:
        self.chat, self.n, self.trace, self.usage = replies is not None, n, trace, usage
        self.replies = replies                     # chat: how each choice's text becomes its message
        self.echo = echo                           # a completion's prompt text, put before each choice's text
        self.head = {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                     "model": model}
        self._started: set[int] = set()
        self._token_bytes = token_bytes            # set when logprobs were asked for
        self._offsets = [text_offset] * n          # legacy text_offset: where each choice's next token starts

    def _logprobs(self, index: int, entries: list[dict] | None) -> dict | None:
        """OpenAI's logprobs of some tokens of choice `index`: chat's `content` list, or the legacy columns."""
        if self._token_bytes is None:
            return None
        entries = entries or []

        def text(token: int) -> str:
            return self._token_bytes(token).decode("utf-8", errors="replace")

        if self.chat:
            def item(token: int, logprob: float) -> dict:
                return {"token": text(token), "logprob": logprob, "bytes": list(self._token_bytes(token))}
            return {"content": [item(e["token"], e["logprob"]) | {"top_logprobs": [item(t, lp) for t, lp in e["top"]]}
                                for e in entries], "refusal": None}
        offsets = []
        for e in entries:
            offsets.append(self._offsets[index])
            self._offsets[index] += len(text(e["token"]))
        return {"tokens": [text(e["token"]) for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{text(t): lp for t, lp in e["top"]} for e in entries], "text_offset": offsets}

    def chunk(self, d: Delta) -> dict | None:
        """The chunk of a delta; None when it has nothing to say."""
        if self.chat:
            delta: dict = {} if d.index in self._started else {"role": "assistant"}
            self._started.add(d.index)
            reply = self.replies[d.index]
            delta.update(reply.delta(d.text, final=d.finish_reason is not None))
            reason = chat.finish_reason(d.finish_reason, reply.called)
            if not delta and reason is None and not d.logprobs and not d.trace:
                return None  # a token that moved no field of a parsed answer (within a tool call's markup)
            choice = {"index": d.index, "delta": delta, "logprobs": self._logprobs(d.index, d.logprobs),
                      "finish_reason": reason}
        else:
            first = d.index not in self._started
            self._started.add(d.index)
            choice = {"text": (self.echo if first else "") + d.text, "index": d.index,
                      "logprobs": self._logprobs(d.index, d.logprobs), "finish_reason": d.finish_reason}
        if self.trace:
            choice["led_trace"] = d.trace or []
        return {**self.head, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "choices": [choice]}

    def last_chunk(self) -> dict:
        """The stream's end: no choices, the usage."""
        return {**self.head, "object": "chat.completion.chunk" if self.chat else "text_completion", "choices": [],
                "usage": dict(self.usage)}

    def response(self, deltas) -> dict:
        texts, reasons, traces = [""] * self.n, [None] * self.n, [[] for _ in range(self.n)]
        logprobs: list[list[dict]] = [[] for _ in range(self.n)]
        for d in deltas:
            texts[d.index] += d.text
            reasons[d.index] = d.finish_reason or reasons[d.index]
            if self.trace and d.trace:
                traces[d.index] += d.trace
            logprobs[d.index] += d.logprobs or []
        if self.chat:
            messages = [self.replies[i].message(texts[i]) for i in range(self.n)]
            choices = [{"index": i, "message": messages[i], "logprobs": self._logprobs(i, logprobs[i]),
                        "finish_reason": chat.finish_reason(reasons[i], "tool_calls" in messages[i])}
                       for i in range(self.n)]
        else:
            choices = [{"text": self.echo + texts[i], "index": i, "logprobs": self._logprobs(i, logprobs[i]),
                        "finish_reason": reasons[i]} for i in range(self.n)]
        if self.trace:
            for i, c in enumerate(choices):
                c["led_trace"] = _trace_summary(traces[i])
        return {**self.head, "object": "chat.completion" if self.chat else "text_completion", "choices": choices,
                "usage": self.usage}


def deliver(llama, job: Job, shape: Shape, stream: bool) -> dict | Iterator[dict]:
    """Run a prepared request on the Llama's scheduler, in the consuming thread: chunks, or the response."""
    deltas = _deltas(llama, job)
    if stream:
        def chunks() -> Iterator[dict]:
            for d in deltas:
                chunk = shape.chunk(d)
                if chunk is not None:
                    yield chunk
            yield shape.last_chunk()
        return chunks()
    return shape.response(deltas)


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
    typical_p: float = 1.0,
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    mirostat_mode: int = 0,
    mirostat_tau: float = 5.0,
    mirostat_eta: float = 0.1,
    logit_bias: dict[int, float] | None = None,
    grammar=None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    stream: bool = False,
    n: int = 1,
    logprobs: int | None = None,
    echo: bool = False,
    suffix: str | None = None,
    sampler: str = "standard",
    led: LEDConfig | dict | None = None,
    dola_layers: str | list[int] | None = None,
    trace: bool = False,
) -> dict | Iterator[dict]:
    """Complete `prompt` n times. max_tokens None or <= 0 runs until end of generation or a full context.

    Returns an OpenAI `text_completion` dict, or with stream=True an iterator of chunks whose last one has
    empty `choices` and the `usage`. `logprobs=N` adds each token's log-probability and its N most likely
    alternatives (OpenAI's legacy columns; README, Logprobs). The sampling arguments are llama-cpp-python's (`grammar`: GBNF text or
    a LlamaGrammar; `logit_bias`: {token id: bias}). sampler="led" decodes with LED (`led`: an LEDConfig or
    a dict of its fields): bias, penalties and grammar constrain the final logits before LED picks its
    candidates; sampler="dola" with DoLa (`dola_layers`: "low", "high" (default) or transformers' layer
    indices); trace=True adds each choice's per-token `led_trace` (LED: explored, depth m*, p_top1; DoLa:
    the premature layer).
    """
    tokens = completion_prompt_tokens(llama, prompt) if suffix is None else fim_prompt_tokens(llama, prompt, suffix)
    job, shape = prepare(llama, tokens, n=n, max_tokens=max_tokens, stop=stop, seed=seed,
                         sampler=sampler, trace=trace, logprobs=logprobs,
                         text_offset=len(prompt) if isinstance(prompt, str) else 0,
                         echo=echo_text(llama, prompt, tokens) if echo else "", **_sampling(locals()))
    return deliver(llama, job, shape, stream)


_SAMPLING_ARGS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
                  "presence_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta", "logit_bias", "grammar", "led",
                  "dola_layers")


def _sampling(args: dict) -> dict:
    return {k: args[k] for k in _SAMPLING_ARGS}


def chat_logprobs(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """Chat's pair of fields as the number of alternatives per token (None: no logprobs)."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ValueError(f"logprobs must be true or false in a chat request, got {logprobs!r}")
    if top_logprobs is not None and not logprobs:
        raise ValueError("top_logprobs needs logprobs=True")
    return (top_logprobs or 0) if logprobs else None


def chat_grammar(grammar, response_format: dict | None):
    """The grammar a chat request constrains its answer with: `grammar`, or its `response_format`'s."""
    from_format = response_format_grammar(response_format)
    if from_format is not None and grammar is not None:
        raise ValueError("give grammar or a JSON response_format, not both")
    return grammar if from_format is None else from_format


def _message_text(message: object) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_prompt(llama, messages: list[dict], tools=None, tool_choice=None,
                parallel_tool_calls=None) -> tuple[list[int], chat.Rendered]:
    """The request rendered by the model's chat template (chat.py), and its prompt's tokens."""
    # the messages' text alone may already be too long: said before the template copies it around
    if isinstance(messages, list):
        check_text_fits(llama, "".join(_message_text(m) for m in messages), "messages")
    rendered = chat.render(llama, messages, tools, tool_choice, parallel_tool_calls)
    check_text_fits(llama, rendered.prompt, "messages")
    bos = llama.token_text(llama.token_bos())
    add_bos = bool(llama.engine.adds_bos()) and not rendered.prompt.startswith(bos)
    tokens = llama.tokenize(rendered.prompt, add_bos=add_bos, special=True)
    return completion_prompt_tokens(llama, tokens), rendered


def chat_prompt_tokens(llama, messages: list[dict]) -> list[int]:
    return chat_prompt(llama, messages)[0]


def chat_constraints(rendered: chat.Rendered, grammar, response_format: dict | None, stop) -> tuple:
    """The grammar and stops of a chat request: the template's tool-call grammar, or `grammar`, or the
    `response_format`'s (one of them), and the request's stops with the template's."""
    user = chat_grammar(grammar, response_format)
    if rendered.grammar is not None and user is not None:
        raise ValueError("tools cannot be combined with grammar or a JSON response_format (the tool-call format "
                         "is a grammar of its own); give one or the other, or tool_choice='none'")
    return (rendered.grammar or user), _normalize_stop(stop) + [s for s in rendered.stops if s]


def create_chat_completion(
    llama,
    messages: list[dict],
    *,
    max_tokens: int | None = None,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    typical_p: float = 1.0,
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    mirostat_mode: int = 0,
    mirostat_tau: float = 5.0,
    mirostat_eta: float = 0.1,
    logit_bias: dict[int, float] | None = None,
    grammar=None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    stream: bool = False,
    n: int = 1,
    sampler: str = "standard",
    led: LEDConfig | dict | None = None,
    dola_layers: str | list[int] | None = None,
    trace: bool = False,
    response_format: dict | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = None,
    parallel_tool_calls: bool | None = None,
) -> dict | Iterator[dict]:
    """Chat completion over the model's chat template: an OpenAI `chat.completion` dict, or chunks. The
    arguments are create_completion's, `response_format` as OpenAI's (JSON mode, a JSON schema), and
    `tools`/`tool_choice`/`parallel_tool_calls` as OpenAI's: the template renders the tools, its tool-call
    grammar constrains the calls and the answer comes back with `tool_calls` (llama.cpp's common/chat)."""
    sampling = _sampling(locals())
    tokens, rendered = chat_prompt(llama, messages, tools, tool_choice, parallel_tool_calls)
    sampling["grammar"], stops = chat_constraints(rendered, grammar, response_format, stop)
    job, shape = prepare(llama, tokens, n=n, max_tokens=max_tokens, stop=stops, seed=seed,
                         sampler=sampler, trace=trace, logprobs=chat_logprobs(logprobs, top_logprobs),
                         rendered=rendered, **sampling)
    return deliver(llama, job, shape, stream)
