"""Engine benchmarks (single thread, ratios of runs taken back to back, alternating).

    python bench/bench_engine.py [--model smollm2-135m] [--tokens 128] [--rounds 3] [--skip-upstream]

1. decode tokens/s of our Llama (latents off) vs upstream llama-cpp-python's Llama on unpatched llama.cpp
   (same pinned source, same CPU flags; built once and cached by tests/upstream_build.py). Each run is a
   fresh process (the two libraries share a soname, so they cannot live in one process); both time a
   greedy completion through their own completion API, prompt processing subtracted (see worker()).
2. the cost of the latent readout on every token (the 7 blocks below the last, head logits included).
3. n=8 parallel samples of one prompt vs 8 sequential runs of the same seeds: aggregate tokens/s.

Prints a table and writes bench/results/engine-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _results import save_result
from _worker import run_worker

HERE = Path(__file__).resolve().parent
PROMPT = "Once upon a time, in a small village by the sea,"


def worker(kind: str, model_path: str, tokens: int) -> dict:
    """Decode rate in this process: (N - 1) / (time of an N-token completion - time of a 1-token one).

    Both completions process the same prompt, so the difference is the decode of N - 1 tokens, through
    each library's own completion API (sampling, detokenization and stop checks included).
    """
    if kind == "upstream":
        import llama_cpp

        llm = llama_cpp.Llama(model_path, n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False, flash_attn=True)

        def complete(n: int) -> int:
            return llm.create_completion(PROMPT, max_tokens=n, temperature=0.0)["usage"]["completion_tokens"]
    else:
        from led_local import Llama
        from led_local.generate import stream_deltas
        from led_local.sampling import StandardSampling

        llm = Llama(model_path, n_ctx=1024, n_threads=1)
        if kind == "ours":
            def complete(n: int) -> int:
                return llm.create_completion(PROMPT, max_tokens=n, temperature=0.0)["usage"]["completion_tokens"]
        else:  # latents on for every token: the graph work LED would do if it never skipped the head
            class WithLatents(StandardSampling):
                def graph_needs(self, llama):
                    return (tuple(llama.default_latent_layers(8)), True, False)

            toks = llm.tokenize(PROMPT, special=True)

            def complete(n: int) -> int:
                usage: dict = {}
                for _ in stream_deltas(llm, toks, n=1, max_tokens=n, spec=WithLatents(temperature=0.0), seed=0,
                                       stop=[], usage=usage):
                    pass
                return usage["completion_tokens"]

    complete(1)  # warm-up: first-use allocations, page faults of the weights
    t = time.perf_counter()
    complete(1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    n = complete(tokens)
    tn = time.perf_counter() - t
    return {"tokens": n - 1, "seconds": tn - t1}


def run_side(kind: str, model_path: str, tokens: int, upstream) -> float:
    r = run_worker([__file__, "--worker", kind, model_path, str(tokens)], upstream if kind == "upstream" else None)
    return r["tokens"] / r["seconds"]


def parallel_vs_sequential(model_path: str, tokens: int, rounds: int) -> dict:
    from led_local import Llama

    kw = dict(max_tokens=tokens, temperature=0.6, top_k=20, top_p=0.95, min_p=0.0)
    par, seq = [], []
    with Llama(model_path, n_ctx=4096, n_threads=1, n_seq_max=8) as llm:
        prompt = llm.tokenize(PROMPT, special=True)
        for _ in range(rounds):
            t = time.perf_counter()
            r = llm.create_completion(prompt, n=8, seed=100, **kw)
            par.append(r["usage"]["completion_tokens"] / (time.perf_counter() - t))
            t, n_tok = time.perf_counter(), 0
            for i in range(8):
                n_tok += llm.create_completion(prompt, n=1, seed=100 + i, **kw)["usage"]["completion_tokens"]
            seq.append(n_tok / (time.perf_counter() - t))
    return {"parallel_tok_s": statistics.median(par), "sequential_tok_s": statistics.median(seq),
            "ratio": statistics.median(par) / statistics.median(seq)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-upstream", action="store_true")
    ap.add_argument("--skip-parallel", action="store_true")
    a = ap.parse_args()

    from led_local import models

    model_path = str(models.path(a.model))
    upstream = None
    if not a.skip_upstream:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from upstream_build import ensure_upstream

        upstream = ensure_upstream()
    kinds = ["ours", "latents"] + ([] if a.skip_upstream else ["upstream"])
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(a.rounds):
        for k in kinds:  # alternating, back to back
            rates[k].append(run_side(k, model_path, a.tokens, upstream))
        print(f"round {r + 1}: " + ", ".join(f"{k} {rates[k][-1]:.1f} tok/s" for k in kinds), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"model": a.model, "tokens": a.tokens, "rounds": a.rounds, "threads": 1, "tok_s": rates,
              "median_tok_s": med, "latents_on_over_off": med["latents"] / med["ours"]}
    if upstream:
        result["ours_over_upstream"] = med["ours"] / med["upstream"]
    if not a.skip_parallel:
        result["parallel"] = parallel_vs_sequential(model_path, min(a.tokens, 64), a.rounds)

    print(f"\n{a.model}, 1 thread, {a.tokens} tokens, median of {a.rounds} alternating rounds")
    for k in kinds:
        print(f"  {k:9} {med[k]:7.2f} tok/s")
    if upstream:
        print(f"  ours / upstream (latents off): {result['ours_over_upstream']:.3f}x  (goal >= 0.97x)")
    print(f"  latents on / off (7 blocks, head logits every token): {result['latents_on_over_off']:.3f}x")
    if "parallel" in result:
        p = result["parallel"]
        print(f"  n=8 parallel {p['parallel_tok_s']:.1f} tok/s vs 8 sequential {p['sequential_tok_s']:.1f} tok/s: "
              f"{p['ratio']:.2f}x  (goal >= 2x)")
    save_result(f"engine-{a.model}", result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main()
