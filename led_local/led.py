"""LED's math exposed to Python, for tests and analysis: `led_step` and `led_sample` call the C core
(csrc/led_core.c, docs/led.md steps 1-9) on a [d, V] array of logits (row 0 = final layer)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _native


@dataclass(frozen=True)
class LEDStep:
    """One LED step for one sequence; every array is over the candidates, in candidate order."""

    candidates: np.ndarray     # int32 [n]: the final layer's top-k, descending (ties: lower id first)
    token_probs: np.ndarray    # float32 [n]: the emitted-token distribution p1*r_0 + (1-p1)*P_{m*}
                               # (at T = 0 each branch its argmax: p1 on argmax r_0, 1-p1 on argmax P_{m*})
    explore_probs: np.ndarray  # float32 [n]: P_{m*}
    exploit_probs: np.ndarray  # float32 [n]: r_0, p_0 renormalized over the candidates
    p_top1: float              # the final layer's top-1 probability over the full vocabulary
    p_exploit: float           # probability the coin exploits (p_top1, 0 with exploit off, 1 when gated)
    depth: int                 # m*
    token: int                 # the sampled token (with the draws given to led_sample; 0.5/0.5 in led_step)
    explored: bool


def _as_logits(logits) -> np.ndarray:
    z = np.ascontiguousarray(logits, dtype=np.float32)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"logits must be a [d, V] array with d >= 1 and V >= 1, got shape {np.shape(logits)}")
    return z


def _check(temperature: float, k: int, u: tuple[float, ...] = ()) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    for x in u:
        if not (isinstance(x, (int, float)) and 0.0 <= x < 1.0):
            raise ValueError(f"uniform draws must lie in [0, 1), got {x!r}")


def _run(z: np.ndarray, temperature: float, k: int, exploit: bool, explore_allowed: bool,
         u_coin: float, u_sample: float) -> LEDStep:
    return LEDStep(**_native.led_step(z, float(temperature), int(k), bool(exploit), bool(explore_allowed),
                                      float(u_coin), float(u_sample)))


def led_step(logits, temperature: float, k: int, exploit: bool = True, explore_allowed: bool = True) -> LEDStep:
    """docs/led.md steps 1-8 on logits [d, V]: the distributions of one step (no draw of interest)."""
    _check(temperature, k)
    return _run(_as_logits(logits), temperature, k, exploit, explore_allowed, 0.5, 0.5)


def led_sample(logits, temperature: float, k: int, u_coin: float, u_sample: float, exploit: bool = True,
               explore_allowed: bool = True) -> int:
    """One LED draw (steps 1-9) with the given uniform draws for the coin and the sample."""
    _check(temperature, k, (u_coin, u_sample))
    return _run(_as_logits(logits), temperature, k, exploit, explore_allowed, u_coin, u_sample).token
