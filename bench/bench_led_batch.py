"""Where LED's cost goes under batching: the same 8 seeded samples of one prompt, run one after another and
as one n=8 request, with standard sampling and with LED; the time of each, and how many times the latent
head ran (one call per exploring step: d-1 rows through the LM head).

    python bench/bench_led_batch.py [--model qwen2.5-coder-1.5b] [--max-tokens 48]

One thread. Results: docs/benchmarks.md, "Hostile requests" (issue "A server that no request can take down").
"""

from __future__ import annotations

import argparse
import time

from led_local import Llama, models

PROMPT = "Client 0: tell me three facts about the sea, with numbers."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--max-tokens", type=int, default=48)
    a = ap.parse_args()
    llm = Llama(str(models.path(a.model)), n_ctx=4096, n_seq_max=8, n_threads=1, verbose=False)

    def alone(sampler: str) -> tuple[float, int, int]:
        rows, t, tokens = llm.latent_head_rows(), time.perf_counter(), 0
        for i in range(8):
            out = llm.create_completion(PROMPT, max_tokens=a.max_tokens, sampler=sampler, temperature=0.6, seed=3 + i)
            tokens += out["usage"]["completion_tokens"]
        return time.perf_counter() - t, tokens, llm.latent_head_rows() - rows

    def batched(sampler: str) -> tuple[float, int, int]:
        rows, t = llm.latent_head_rows(), time.perf_counter()
        out = llm.create_completion(PROMPT, n=8, max_tokens=a.max_tokens, sampler=sampler, temperature=0.6, seed=3)
        return time.perf_counter() - t, out["usage"]["completion_tokens"], llm.latent_head_rows() - rows

    alone("standard")  # warm-up
    seconds = {}
    for mode, run in (("alone", alone), ("batched", batched)):
        for sampler in ("standard", "led"):
            dt, tokens, head_calls = run(sampler)
            seconds[mode, sampler] = dt
            print(f"{mode:8s} {sampler:8s} {dt:6.2f} s  {tokens} tokens  {head_calls} latent head calls", flush=True)
        print(f"{mode:8s} LED / standard: {seconds[mode, 'standard'] / seconds[mode, 'led']:.3f}x")


if __name__ == "__main__":
    main()
