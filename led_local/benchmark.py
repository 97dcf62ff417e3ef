"""LED vs standard decode speed on one model (used by `led-local bench` and bench/bench_led.py).

Runs alternate back to back in one process. The decode rate of a run is (tokens - n) / (its time - the
time of a one-token run of the same kind), which leaves prompt processing out; with n parallel samples
(`n`, as `led-local eval` runs them) tokens count every sample's.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from .eval.data import MATH_INSTRUCTION
from .sampling import LEDConfig

QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
            "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
            "egg. How much in dollars does she make every day at the farmers' market?")
MESSAGES = [{"role": "user", "content": f"{MATH_INSTRUCTION}\n\n{QUESTION}"}]

# standard = the paper's baseline (docs/led.md "The settings"); led = its defaults
KINDS = {
    "standard": dict(sampler="standard", top_k=20, top_p=0.95, min_p=0.0),
    "led": dict(sampler="led", led=LEDConfig()),
}


def led_vs_standard(llama, tokens: int = 160, rounds: int = 4, temperature: float = 0.6,
                    report: Callable[[str], None] | None = None, n: int = 1) -> dict:
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    explored: list[float] = []

    def timed(kind: str, max_tokens: int, seed: int) -> tuple[float, dict]:
        t = time.perf_counter()
        r = llama.create_chat_completion(MESSAGES, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                         trace=kind == "led", n=n, **KINDS[kind])
        return time.perf_counter() - t, r

    for kind in KINDS:
        timed(kind, 1, 0)  # warm-up
    for r in range(rounds):
        for kind in KINDS:
            t1, _ = timed(kind, 1, 1000 + r)
            tn, res = timed(kind, tokens, 1000 + r)
            count = res["usage"]["completion_tokens"]
            rates[kind].append((count - n) / max(tn - t1, 1e-9))
            if kind == "led":
                explored.append(statistics.mean(c["led_trace"]["explored_share"] for c in res["choices"]))
        if report:
            report(f"round {r + 1}: " + ", ".join(f"{k} {rates[k][-1]:.2f} tok/s" for k in KINDS)
                   + f", LED explored {explored[-1]:.1%}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"tokens": tokens, "rounds": rounds, "temperature": temperature, "threads": llama.n_threads, "n": n,
            "tok_s": rates, "median_tok_s": med, "led_over_standard": med["led"] / med["standard"],
            "explored_share": explored}
