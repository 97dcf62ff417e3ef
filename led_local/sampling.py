"""Sampler settings, validated at the API boundary, and the native samplers made from them.

A generation runs one native `llama_sampler` per parallel sequence, each with its own seed (sample i of a
call with seed s uses s + i, so `n` samples equal n one-by-one runs with those seeds). `sampler=` names
the kind: "standard" (llama.cpp's ordinary chain), "led" (csrc/led_sampler.c, LED_SPEC.md) or "dola"
(DoLa's layer contrast, as Hugging Face transformers' `dola_layers` option does it, then the ordinary chain).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from . import _native
from ._native import ffi

SAMPLERS = ("standard", "led", "dola")


def _finite(name: str, value: object, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
        raise ValueError(f"{name} must be a finite number{rng}, got {value!r}")
    return v


@dataclass(frozen=True)
class StandardSampling:
    """Penalties, top-k, top-p, min-p, temperature, then a seeded draw; temperature 0 is greedy."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        _finite("temperature", self.temperature, 0.0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise TypeError(f"top_k must be an integer, got {self.top_k!r}")
        _finite("top_p", self.top_p, 0.0, 1.0)
        _finite("min_p", self.min_p, 0.0, 1.0)
        _finite("repeat_penalty", self.repeat_penalty, 0.0)
        if self.repeat_penalty <= 0:
            raise ValueError("repeat_penalty must be > 0 (1.0 turns it off)")

    def new_native(self, llama, seed: int, latent_index: list[int] | None = None):
        return llama._lib.led_sampler_standard_new(
            llama._model, self.temperature, self.top_k, self.top_p, self.min_p,
            self.repeat_penalty, self.repeat_last_n, seed,
        )

    def graph_needs(self, llama) -> tuple[tuple[int, ...], bool, bool]:
        """(latent layers, with head logits, latent_norm) the graph must hand out: nothing for this sampler."""
        return ((), False, False)

    def sample(self, llama, handle, row: int) -> int:
        return llama._lib.llama_sampler_sample(handle, llama._ctx, row)

    def trace(self, handle) -> dict | None:
        return None


@dataclass(frozen=True)
class LEDConfig:
    """Latent Exploration Decoding settings (LED_SPEC.md "Defaults": the paper's setting).

    d: depths, the final layer and the d-1 blocks below the last; k: candidates from the final layer;
    latent_norm: pass latent states through the final norm; exploit: the coin of step 8 (off: always
    explore); think_only: stop exploring once the model has closed its `</think>` section; layers: the
    latent blocks in depth order (default: the d-1 right below the last, h_{L-2}, h_{L-3}, ...; the
    paper's own code reads one block lower, which `layers` can express).
    """

    d: int = 8
    k: int = 8
    latent_norm: bool = False
    exploit: bool = True
    think_only: bool = True
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("d", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LEDConfig.{name} must be a positive integer, got {v!r}")
        for name in ("latent_norm", "exploit", "think_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LEDConfig.{name} must be True or False, got {getattr(self, name)!r}")
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
            unknown = set(value) - {"d", "k", "latent_norm", "exploit", "think_only", "layers"}
            if unknown:
                raise ValueError(f"unknown LED settings: {', '.join(sorted(unknown))}")
            return cls(**value)
        raise ValueError(f"led must be an LEDConfig or a dict, got {value!r}")

    def latent_layers(self, llama) -> tuple[int, ...]:
        """The blocks to read, checked against the model (a clear error at configuration time)."""
        n = llama.n_layer()
        if self.layers is not None:
            bad = [i for i in self.layers if i >= n]
            if bad:
                raise ValueError(f"LEDConfig.layers {bad} are beyond this model's {n} blocks (0..{n - 1})")
            return self.layers
        if self.d > n:
            raise ValueError(f"LEDConfig.d={self.d} needs {self.d - 1} blocks below the last; this model has {n} blocks")
        return tuple(llama.default_latent_layers(self.d))


@dataclass(frozen=True)
class LEDSampling:
    """LED at a temperature (0 = greedy); the sampler reads its latent rows from the patched context."""

    temperature: float = 0.6
    config: LEDConfig = LEDConfig()

    def __post_init__(self) -> None:
        _finite("temperature", self.temperature, 0.0)

    def graph_needs(self, llama) -> tuple[tuple[int, ...], bool, bool]:
        # states only: the head runs over them on demand, on the steps whose coin explores
        layers = self.config.latent_layers(llama)
        return (layers, False, self.config.latent_norm and bool(layers))

    def new_native(self, llama, seed: int, latent_index: list[int] | None = None):
        """latent_index: where the context puts this sampler's blocks among the latent rows of a batch shared
        with other requests (None: exactly its own, in order)."""
        self.config.latent_layers(llama)
        marker = llama.end_of_thinking_tokens() if self.config.think_only else []
        return _native.led_sampler_new(llama, self.config.d, self.config.k, self.temperature, self.config.exploit,
                                       self.config.think_only, marker, seed, latent_index)

    def sample(self, llama, handle, row: int) -> int:
        token = llama._lib.led_sampler_sample(handle, llama._ctx, row)
        if token < 0:
            raise RuntimeError("the LED sampler found no latent logits for its row (see the log with verbose=True)")
        return token

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

    def candidates(self, llama) -> list[int]:
        cands = dola_candidate_layers(llama.n_layer(), llama.head_is_tied(), self._layers())
        if not cands:
            raise ValueError(f"dola_layers={self.dola_layers!r} leaves no premature layer below the last "
                             f"of this model's {llama.n_layer()} blocks")
        return cands

    def graph_needs(self, llama) -> tuple[tuple[int, ...], bool, bool]:
        # every step contrasts with every candidate: their head logits come out of the decode graph itself
        return (tuple(layer - 1 for layer in self.candidates(llama)), True, False)

    def new_native(self, llama, seed: int, latent_index: list[int] | None = None):
        # dola_sampler_new takes the chain over (and frees it if it fails)
        index = ffi.new("int32_t[]", latent_index) if latent_index else ffi.NULL
        return llama._lib.dola_sampler_new(llama._ctx, len(self.candidates(llama)), index,
                                           self.chain.new_native(llama, seed))

    def sample(self, llama, handle, row: int) -> int:
        token = llama._lib.dola_sampler_sample(handle, llama._ctx, row)
        if token < 0:
            raise RuntimeError("the DoLa sampler found no premature-layer logits for its row")
        return token

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

    def __init__(self, llama, spec, seeds: list[int], latent_index: list[int] | None = None) -> None:
        self._lib = llama._lib
        self._llama = llama
        self.spec = spec
        self.handles = []
        self._cands = spec.candidates(llama) if isinstance(spec, DoLaSampling) else None
        for s in seeds:
            h = spec.new_native(llama, s & 0xFFFFFFFF, latent_index)
            if h == ffi.NULL:
                self.close()
                raise RuntimeError("could not create a sampler")
            self.handles.append(h)

    def sample(self, seq: int, output_index: int) -> int:
        return self.spec.sample(self._llama, self.handles[seq], output_index)

    def trace(self, seq: int) -> dict | None:
        t = self.spec.trace(self.handles[seq])
        if t is not None and self._cands is not None:
            t["premature"] = self._cands[t["premature"]]  # transformers' layer numbering
        return t

    def close(self) -> None:
        for h in self.handles:
            self._lib.llama_sampler_free(h)
        self.handles = []

    def __enter__(self) -> "NativeSamplers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
