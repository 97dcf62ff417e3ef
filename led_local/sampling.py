"""Sampler settings, validated at the API boundary, and the native samplers made from them.

A generation runs one native `llama_sampler` per parallel sequence, each with its own seed (sample i of a
call with seed s uses s + i, so `n` samples equal n one-by-one runs with those seeds). `sampler=` names
the kind: "standard" (llama.cpp's ordinary chain, csrc/chain_sampler.c), "led" (csrc/led_sampler.c,
docs/led.md) or "dola" (csrc/dola_sampler.c: DoLa's layer contrast, as Hugging Face transformers'
`dola_layers` option does it, then the ordinary chain).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import _native
from ._native import ffi
from .errors import FieldError
from .grammar import LlamaGrammar
from .params import BY_NAME, LED_BY_NAME, PENALTIES, SAMPLERS, TRUNCATIONS

if TYPE_CHECKING:  # every `engine` below: the Engine whose context and model the samplers use
    from .engine import Engine



MAX_PENALTY_WINDOW = 1 << 20  # llama.cpp keeps a ring of this many tokens: an allocation sized by the caller


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    """An integer in [lo, hi], else a ValueError naming the field (never an OverflowError from C)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


class NoTokenAllowed(ValueError, RuntimeError):
    """The request's own constraints left nothing to sample: the request's fault (a 400), not the server's."""
    param = "grammar"


class GrammarRefusedToken(ValueError, RuntimeError):
    """llama.cpp's grammar threw on a token it had allowed (csrc/led_guard.cpp): the grammar's fault (a 400)."""
    param = "grammar"


def _checked_token(token: int, missing: str) -> int:
    """A native sampler's answer: the token, or why there is none."""
    if token == -2:
        raise NoTokenAllowed("the grammar and logit_bias together allow no token at this point of the output")
    if token == -3:
        raise GrammarRefusedToken(
            "llama.cpp's grammar refused a token its own check had allowed (a token element such as <[id]> or "
            "!<[id]> where characters may also continue); write that part of the grammar with characters or "
            "with token elements only")
    if token < 0:
        raise RuntimeError(f"the sampler found no {missing} for its row (see the log with verbose=True)")
    return token


def _free_llama_sampler(engine, handle) -> None:
    engine.lib.llama_sampler_free(handle)


def final_logprobs(engine, row: int, token: int, top: int) -> dict:
    """The token's log-probability under the model's own final distribution (log-softmax of the row's raw
    logits, what llama-cpp-python reports), and the `top` most likely tokens with theirs."""
    z = engine.logits(row).astype(np.float64)
    m = z.max()
    logp = z - (m + np.log(np.exp(z - m).sum()))
    best = np.argsort(-logp, kind="stable")[:top] if top > 0 else []
    return {"token": token, "logprob": float(logp[token]), "top": [(int(t), float(logp[t])) for t in best]}


def _logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    """{token id: bias} (ids may be JSON's strings) as sorted pairs; -inf bans a token."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, dict) else value
    out: dict[int, float] = {}
    try:
        for k, v in items:
            token = int(k)
            if isinstance(k, bool) or isinstance(k, float) or str(token) != str(k).strip():
                raise ValueError
            bias = float(v)
            if isinstance(v, bool) or math.isnan(bias) or bias == math.inf:
                raise ValueError
            out[token] = bias
    except (TypeError, ValueError):
        raise FieldError(f"logit_bias must map token ids to numbers (-inf bans a token), got {str(value)[:200]}",
                         "logit_bias") from None
    return tuple(sorted(out.items()))


def _grammar(grammar: object) -> LlamaGrammar | None:
    """A LlamaGrammar (grammar.py) from one or from GBNF text."""
    if grammar is None or isinstance(grammar, LlamaGrammar):
        return grammar
    if not isinstance(grammar, str) or not grammar.strip():
        raise ValueError("grammar must be GBNF text (with a `root` rule) or a LlamaGrammar")
    return LlamaGrammar(grammar)


def keep_alive(keep: list, obj):
    keep.append(obj)
    return obj


@dataclass(frozen=True)
class Constraints:
    """What changes the final layer's logits before a sampler picks from them, in llama-cpp-python's order:
    logit bias, then penalties (repeat, frequency, presence over the last `penalty_last_n` tokens), then a
    GBNF grammar (csrc/led_engine.h, led_constraints_new). Standard and DoLa sampling run them at the head
    of their chain; LED runs them on the final logits before picking its candidates (docs/led.md step 3),
    leaving the latent rows as the model gives them."""

    logit_bias: tuple[tuple[int, float], ...] = ()
    repeat_penalty: float = BY_NAME["repeat_penalty"].default
    frequency_penalty: float = BY_NAME["frequency_penalty"].default
    presence_penalty: float = BY_NAME["presence_penalty"].default
    penalty_last_n: int = 64
    grammar: "str | LlamaGrammar | None" = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        object.__setattr__(self, "grammar", _grammar(self.grammar))
        for name in PENALTIES:
            BY_NAME[name].check(getattr(self, name))
        _integer("penalty_last_n", self.penalty_last_n, 0, MAX_PENALTY_WINDOW)

    @property
    def empty(self) -> bool:
        return (not self.logit_bias and self.grammar is None and self.repeat_penalty == 1.0
                and self.frequency_penalty == 0.0 and self.presence_penalty == 0.0)

    def check(self, engine) -> None:
        """Token ids in the vocabulary and a grammar that parses: a clear error before anything runs."""
        bad = [t for t, _ in self.logit_bias if not 0 <= t < engine.n_vocab()]
        if bad:
            raise FieldError(f"logit_bias names token ids {bad[:8]}{' ...' if len(bad) > 8 else ''} outside this model's vocabulary "
                             f"(0..{engine.n_vocab() - 1})", "logit_bias")
        engine.lib.llama_sampler_free(self.new_native(engine))

    def new_native(self, engine):
        """The native chain (NULL when empty); a grammar that does not parse raises ValueError."""
        if self.empty:
            return ffi.NULL
        p = ffi.new("led_constraint_params *")
        bias = ffi.new("llama_logit_bias[]", [{"token": t, "bias": b} for t, b in self.logit_bias] or 1)
        g = self.grammar
        keep = []  # what the params point into lives until the call returns
        if g is not None:
            p.grammar = keep_alive(keep, ffi.new("char[]", g.gbnf.encode()))
            p.grammar_lazy = g.lazy
            patterns = [keep_alive(keep, ffi.new("char[]", t.encode())) for t in g.trigger_patterns]
            p.trigger_patterns, p.n_trigger_patterns = keep_alive(keep, ffi.new("char *[]", patterns or 1)), len(patterns)
            p.trigger_tokens = keep_alive(keep, ffi.new("int32_t[]", list(g.trigger_tokens) or 1))
            p.n_trigger_tokens = len(g.trigger_tokens)
            prefill = engine.tokenize(g.prefill, add_bos=False, special=True) if g.prefill else []
            p.grammar_prefill, p.n_grammar_prefill = keep_alive(keep, ffi.new("int32_t[]", prefill or 1)), len(prefill)
        p.logit_bias, p.n_logit_bias = bias, len(self.logit_bias)
        p.repeat_penalty, p.frequency_penalty, p.presence_penalty = (self.repeat_penalty, self.frequency_penalty,
                                                                     self.presence_penalty)
        p.penalty_last_n = self.penalty_last_n
        chain = engine.lib.led_constraints_new(engine.model, p)
        if chain == ffi.NULL:
            raise FieldError("the grammar does not parse as GBNF with a `root` rule (verbose=True shows llama.cpp's "
                             "parser message)", "grammar")
        return chain


@dataclass(frozen=True)
class StandardSampling:
    """llama-cpp-python's chain: the constraints (logit bias, penalties, grammar), then top-k, typical-p,
    top-p, min-p, temperature and a seeded draw (or Mirostat 1/2 after the temperature, as llama.cpp's
    common sampling does); temperature 0 is greedy."""

    temperature: float = BY_NAME["temperature"].default
    top_k: int = BY_NAME["top_k"].default
    top_p: float = BY_NAME["top_p"].default
    min_p: float = BY_NAME["min_p"].default
    repeat_penalty: float = BY_NAME["repeat_penalty"].default
    repeat_last_n: int = 64
    frequency_penalty: float = BY_NAME["frequency_penalty"].default
    presence_penalty: float = BY_NAME["presence_penalty"].default
    typical_p: float = BY_NAME["typical_p"].default
    mirostat_mode: int = BY_NAME["mirostat_mode"].default
    mirostat_tau: float = BY_NAME["mirostat_tau"].default
    mirostat_eta: float = BY_NAME["mirostat_eta"].default
    logit_bias: tuple = ()
    grammar: str | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", *TRUNCATIONS):  # (top_k <= 0: no top-k, as in llama.cpp)
            BY_NAME[name].check(getattr(self, name))
        object.__setattr__(self, "constraints", Constraints(
            logit_bias=self.logit_bias, repeat_penalty=self.repeat_penalty, frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, penalty_last_n=self.repeat_last_n, grammar=self.grammar))
        object.__setattr__(self, "logit_bias", self.constraints.logit_bias)
        object.__setattr__(self, "grammar", self.constraints.grammar)

    def check(self, engine) -> None:
        self.constraints.check(engine)

    def new_chain(self, engine, seed: int, constraints=ffi.NULL):
        """llama.cpp's chain: `constraints` (a native chain, taken over; NULL: none), then the truncations,
        temperature and draw."""
        p = ffi.new("led_standard_params *")
        p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p = (self.temperature, self.top_k, self.top_p,
                                                                 self.min_p, self.typical_p)
        p.mirostat, p.mirostat_tau, p.mirostat_eta = self.mirostat_mode, self.mirostat_tau, self.mirostat_eta
        p.n_vocab, p.seed = engine.n_vocab(), seed
        return engine.lib.led_sampler_standard_new(constraints, p)

    def new_native(self, engine, seed: int, latent_index: list[int] | None = None):
        # the constraints first, checked to leave a token before the chain draws (csrc/chain_sampler.h)
        constraints = self.constraints.new_native(engine)
        return engine.lib.chain_sampler_new(engine.model, constraints, self.new_chain(engine, seed))

    @staticmethod
    def free_native(engine, handle) -> None:
        engine.lib.chain_sampler_free(ffi.cast("struct chain_sampler *", handle))

    def graph_needs(self, engine) -> tuple[tuple[int, ...], bool, bool]:
        """(latent layers, with head logits, latent_norm) the graph must hand out: nothing for this sampler."""
        return ((), False, False)

    def sample(self, engine, handle, row: int) -> int:
        return _checked_token(engine.lib.chain_sampler_sample(handle, engine.ctx, row), "logits")

    def logprobs(self, engine, handle, row: int, token: int, top: int) -> dict:
        return final_logprobs(engine, row, token, top)

    def trace(self, handle) -> dict | None:
        return None


@dataclass(frozen=True)
class LEDConfig:
    """Latent Exploration Decoding settings (docs/led.md "The settings": the paper's setting).

    d: depths, the final layer and the d-1 blocks below the last; k: candidates from the final layer;
    latent_norm: pass latent states through the final norm; exploit: the coin of step 8 (off: always
    explore); think_only: stop exploring once the model has closed its `</think>` section; layers: the
    latent blocks in depth order (default: the d-1 right below the last, h_{L-2}, h_{L-3}, ...; the
    paper's own code reads one block lower, which `layers` can express).
    """

    d: int = LED_BY_NAME["d"].default
    k: int = LED_BY_NAME["k"].default
    latent_norm: bool = LED_BY_NAME["latent_norm"].default
    exploit: bool = LED_BY_NAME["exploit"].default
    think_only: bool = LED_BY_NAME["think_only"].default
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name, param in LED_BY_NAME.items():
            try:  # (the README promises a ValueError for any bad LED setting)
                param.check(getattr(self, name), f"LEDConfig.{name}")
            except TypeError as e:
                raise ValueError(str(e)) from None
        if self.layers is not None:
            layers = tuple(self.layers)
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise ValueError(f"LEDConfig.layers must be block indices (integers >= 0), got {self.layers!r}")
            if len(layers) != self.d - 1:
                raise ValueError(f"LEDConfig.layers names {len(layers)} blocks but d={self.d} needs d-1 = {self.d - 1}")
            object.__setattr__(self, "layers", layers)

    @classmethod
    def of(cls, value: "LEDConfig | dict | None") -> "LEDConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {*LED_BY_NAME, "layers"}
            if unknown:
                raise ValueError(f"unknown LED settings: {', '.join(sorted(unknown))}")
            return cls(**value)
        raise ValueError(f"led must be an LEDConfig or a dict, got {value!r}")

    def latent_layers(self, engine) -> tuple[int, ...]:
        """The blocks to read, checked against the model (a clear error at configuration time)."""
        n = engine.n_layer()
        if self.k > engine.n_vocab():
            raise FieldError(f"LEDConfig.k={self.k} exceeds this model's vocabulary of {engine.n_vocab()} tokens", "led.k")
        if self.layers is not None:
            bad = [i for i in self.layers if i >= n]
            if bad:
                raise ValueError(f"LEDConfig.layers {bad} are beyond this model's {n} blocks (0..{n - 1})")
            return self.layers
        if self.d > n:
            raise FieldError(f"LEDConfig.d={self.d} needs {self.d - 1} blocks below the last; this model has {n} blocks", "led.d")
        return tuple(engine.default_latent_layers(self.d))


@dataclass(frozen=True)
class LEDSampling:
    """LED at a temperature (0 = greedy); the sampler reads its latent rows from the patched context."""

    temperature: float = 0.6
    config: LEDConfig = LEDConfig()
    constraints: Constraints = Constraints()

    def __post_init__(self) -> None:
        BY_NAME["temperature"].check(self.temperature)

    def check(self, engine) -> None:
        self.config.latent_layers(engine)
        self.constraints.check(engine)

    def graph_needs(self, engine) -> tuple[tuple[int, ...], bool, bool]:
        # states only: the head runs over them on demand, on the steps whose coin explores
        layers = self.config.latent_layers(engine)
        return (layers, False, self.config.latent_norm and bool(layers))

    def new_native(self, engine, seed: int, latent_index: list[int] | None = None):
        """latent_index: where the context puts this sampler's blocks among the latent rows of a batch shared
        with other requests (None: exactly its own, in order)."""
        self.config.latent_layers(engine)
        marker = engine.end_of_thinking_tokens() if self.config.think_only else []
        return _native.led_sampler_new(engine, self.config.d, self.config.k, self.temperature, self.config.exploit,
                                       self.config.think_only, marker, seed, latent_index,
                                       self.constraints.new_native(engine))

    free_native = staticmethod(_free_llama_sampler)

    def sample(self, engine, handle, row: int) -> int:
        return _checked_token(engine.lib.led_sampler_sample(handle, engine.ctx, row),
                              "latent logits: this model's graph offers no latent readout")

    def logprobs(self, engine, handle, row: int, token: int, top: int) -> dict:
        """Under the distribution LED drew the token from at this step (the explore mixture P_{m*} or the
        final layer's r_0 over the candidates, as the coin chose): the candidates are the only tokens it
        could emit, so `top` lists at most k of them."""
        step = _native.led_sampler_last(handle)
        probs = dict(zip(step["candidates"], step["probs"]))
        log = {t: (math.log(p) if p > 0 else -math.inf) for t, p in probs.items()}
        best = sorted(log, key=lambda t: (-log[t], t))[:top]
        return {"token": token, "logprob": log.get(token, -math.inf), "top": [(t, log[t]) for t in best]}

    def trace(self, handle) -> dict:
        # explored, depth m*, p_top1, the two draws, whether the latent head ran, the candidates and the
        # distribution the token was drawn from: enough to replay the step with led_step
        return _native.led_sampler_last(handle)


def dola_candidate_layers(n_layer: int, tied: bool, dola_layers: str | list[int]) -> list[int]:
    """The premature layers transformers' DoLa contrasts with, in its numbering: 0 is the embedding output,
    l >= 1 the output of block l-1. Tied heads skip the embeddings (their early exit is the identity)."""
    final = n_layer
    start = 0 if not tied else 2 if final > 2 else 1 if final == 2 else 0
    if dola_layers == "low":
        if start == final // 2:
            return [start]
        return list(range(start, final // 2, 2)) if final <= 40 else list(range(start, 20, 2))
    if dola_layers == "high":
        return list(range(final // 2, final, 2)) if final <= 40 else list(range(final - 20, final, 2))
    if isinstance(dola_layers, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                      for i in dola_layers):
        return [i for i in dola_layers if i < final]
    raise ValueError(f"dola_layers must be 'low', 'high' or a list of layer indices >= 0, got {dola_layers!r}")


@dataclass(frozen=True)
class DoLaSampling:
    """DoLa's contrast (csrc/led_core.c dola_contrast), then the ordinary chain of `chain` on the contrasted
    logits, as transformers runs its logits processors after the contrast."""

    chain: StandardSampling = StandardSampling()
    dola_layers: str | tuple = "high"

    def __post_init__(self) -> None:
        if isinstance(self.dola_layers, list):
            object.__setattr__(self, "dola_layers", tuple(self.dola_layers))
        dola_candidate_layers(64, False, self._layers())  # validates the form; the model checks the range

    def _layers(self) -> str | list[int]:
        return list(self.dola_layers) if isinstance(self.dola_layers, tuple) else self.dola_layers

    def check(self, engine) -> None:
        self.candidates(engine)
        self.chain.check(engine)

    def candidates(self, engine) -> list[int]:
        cands = dola_candidate_layers(engine.n_layer(), engine.head_is_tied(), self._layers())
        if not cands:
            raise ValueError(f"dola_layers={self.dola_layers!r} leaves no premature layer below the last "
                             f"of this model's {engine.n_layer()} blocks")
        return cands

    def graph_needs(self, engine) -> tuple[tuple[int, ...], bool, bool]:
        # every step contrasts with every candidate: their head logits come out of the decode graph itself
        return (tuple(layer - 1 for layer in self.candidates(engine)), True, False)

    def new_native(self, engine, seed: int, latent_index: list[int] | None = None):
        # logit bias and grammar on the final logits before the contrast (its plausibility set then holds only
        # allowed tokens); the penalties run on the contrast, as transformers' processors do after DoLa.
        # dola_sampler_new takes both over (and frees them if it fails)
        c = self.chain.constraints
        before = Constraints(logit_bias=c.logit_bias, grammar=c.grammar).new_native(engine)
        after = Constraints(repeat_penalty=c.repeat_penalty, frequency_penalty=c.frequency_penalty,
                            presence_penalty=c.presence_penalty, penalty_last_n=c.penalty_last_n).new_native(engine)
        index = ffi.new("int32_t[]", latent_index) if latent_index else ffi.NULL
        return engine.lib.dola_sampler_new(engine.ctx, len(self.candidates(engine)), index, before,
                                           self.chain.new_chain(engine, seed, after))

    free_native = staticmethod(_free_llama_sampler)

    def sample(self, engine, handle, row: int) -> int:
        return _checked_token(engine.lib.dola_sampler_sample(handle, engine.ctx, row),
                              "premature-layer logits: this model's graph offers no latent readout")

    def logprobs(self, engine, handle, row: int, token: int, top: int) -> dict:
        return final_logprobs(engine, row, token, top)  # the model's own distribution, as for standard

    def trace(self, handle) -> dict:
        return {"premature": int(_native.lib().dola_sampler_last(handle))}


def resolve_seed(seed: int | None, default: int | None) -> int:
    """The seed of sample 0: the call's, else the Llama's, else a fresh random one."""
    for s in (seed, default):
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
                raise ValueError(f"seed must be an integer in [0, 2**32), got {s!r}")
            return s
    return secrets.randbits(31)


class NativeSamplers:
    """One native sampler per sequence, freed together."""

    def __init__(self, engine: "Engine", spec, seeds: list[int], latent_index: list[int] | None = None) -> None:
        self._engine = engine
        self.spec = spec
        self.handles = []
        self._cands = spec.candidates(engine) if isinstance(spec, DoLaSampling) else None
        for s in seeds:
            h = spec.new_native(engine, s & 0xFFFFFFFF, latent_index)
            if h == ffi.NULL:
                self.close()
                raise RuntimeError("could not create a sampler")
            self.handles.append(h)

    def sample(self, seq: int, output_index: int) -> int:
        return self.spec.sample(self._engine, self.handles[seq], output_index)

    def logprobs(self, seq: int, row: int, token: int, top: int) -> dict:
        return self.spec.logprobs(self._engine, self.handles[seq], row, token, top)

    def trace(self, seq: int) -> dict | None:
        t = self.spec.trace(self.handles[seq])
        if t is not None and self._cands is not None:
            t["premature"] = self._cands[t["premature"]]  # transformers' layer numbering
        return t

    def close(self) -> None:
        for h in self.handles:
            self.spec.free_native(self._engine, h)
        self.handles = []

    def __enter__(self) -> "NativeSamplers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
