"""LED vs standard sampling: decode tokens/s on a GSM8K chat prompt at temperature 0.6 (single thread,
runs alternating back to back in one process).

    python bench/bench_led.py [--model qwen2.5-coder-1.5b] [--tokens 160] [--rounds 4]

standard = the paper's baseline (top-k 20, top-p 0.95); led = LEDConfig() defaults (d=8, k=8), exact,
with the latent head computed only on exploring steps. The decode rate of a run is
(tokens - 1) / (its time - the time of a one-token run of the same kind), which leaves prompt processing
out. Also reports LED's explored share. Writes bench/results/led-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from led_local import LEDConfig, Llama, models

HERE = Path(__file__).resolve().parent
QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
            "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
            "egg. How much in dollars does she make every day at the farmers' market?")
MESSAGES = [{"role": "user", "content": "Please reason step by step, and put your final answer within \\boxed{}.\n\n"
             + QUESTION}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()

    kinds = {
        "standard": dict(sampler="standard", top_k=20, top_p=0.95, min_p=0.0),
        "led": dict(sampler="led", led=LEDConfig()),
    }
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    explored: list[float] = []
    with Llama(models.path(a.model), n_ctx=2048, n_threads=1) as llm:
        def timed(kind: str, max_tokens: int, seed: int) -> tuple[float, dict]:
            t = time.perf_counter()
            r = llm.create_chat_completion(MESSAGES, max_tokens=max_tokens, temperature=0.6, seed=seed,
                                           trace=kind == "led", **kinds[kind])
            return time.perf_counter() - t, r

        for kind in kinds:
            timed(kind, 1, 0)  # warm-up
        for r in range(a.rounds):
            for kind in kinds:
                t1, _ = timed(kind, 1, 1000 + r)
                tn, res = timed(kind, a.tokens, 1000 + r)
                n = res["usage"]["completion_tokens"]
                rates[kind].append((n - 1) / (tn - t1))
                if kind == "led":
                    explored.append(res["choices"][0]["led_trace"]["explored_share"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {rates[k][-1]:.2f} tok/s" for k in kinds)
                  + f", LED explored {explored[-1]:.1%}", flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"model": a.model, "tokens": a.tokens, "rounds": a.rounds, "threads": 1, "temperature": 0.6,
              "tok_s": rates, "median_tok_s": med, "led_over_standard": med["led"] / med["standard"],
              "explored_share": explored}
    print(f"\n{a.model}, 1 thread, GSM8K chat prompt, T=0.6, median of {a.rounds} alternating rounds")
    print(f"  standard {med['standard']:.2f} tok/s, led {med['led']:.2f} tok/s: "
          f"led/standard = {result['led_over_standard']:.3f}x; explored share {statistics.mean(explored):.1%}")
    out = HERE / "results" / f"led-{a.model}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
