"""Sampler settings, validated at the API boundary, and the native samplers made from them.

A generation runs one native `llama_sampler` per parallel sequence, each with its own seed (sample i of a
call with seed s uses s + i, so `n` samples equal n one-by-one runs with those seeds). `sampler=` names
the kind: "standard" (llama.cpp's ordinary chain) now; LED and DoLa plug in here.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from ._native import ffi

SAMPLERS = ("standard",)


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

    def new_native(self, llama, seed: int):
        return llama._lib.led_sampler_standard_new(
            llama._model, self.temperature, self.top_k, self.top_p, self.min_p,
            self.repeat_penalty, self.repeat_last_n, seed,
        )

    def graph_needs(self, llama) -> tuple[tuple[int, ...], bool, bool]:
        """(latent layers, with head logits, latent_norm) the graph must hand out: nothing for this sampler."""
        return ((), False, False)


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

    def __init__(self, llama, spec: StandardSampling, seeds: list[int]) -> None:
        self._lib = llama._lib
        self.handles = []
        for s in seeds:
            h = spec.new_native(llama, s & 0xFFFFFFFF)
            if h == ffi.NULL:
                self.close()
                raise RuntimeError("could not create a sampler")
            self.handles.append(h)

    def sample(self, seq: int, ctx, output_index: int) -> int:
        return self._lib.llama_sampler_sample(self.handles[seq], ctx, output_index)

    def close(self) -> None:
        for h in self.handles:
            self._lib.llama_sampler_free(h)
        self.handles = []

    def __enter__(self) -> "NativeSamplers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
