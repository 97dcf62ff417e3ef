"""Two builds of the native libraries, same machine, back to back: which CPU flags pay off?

    python bench/bench_builds.py LIB_DIR_A LIB_DIR_B [--model qwen2.5-coder-1.5b] [--n 8] [--tokens 96]
                                 [--threads 1] [--rounds 3]

Each LIB_DIR is a `led_local/lib` folder of an install (e.g. `cmake --install BUILD --prefix DIR` puts it at
DIR/led_local/lib), or `installed` for the one of the current environment. Every run is a fresh process
(LED_LOCAL_LIB_DIR points it at its build), A and B alternate, and each times `n` parallel samples of
`tokens` tokens (the shape of `led-local eval`). Prints the median aggregate tok/s and B / A, and writes
bench/results/builds-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import save_result

PROMPT = ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
          "May. How many clips did Natalia sell altogether in April and May?\nAnswer:")


def worker(model_path: str, n: int, tokens: int, threads: int) -> dict:
    from led_local import Llama

    with Llama(model_path, n_ctx=4096, n_threads=threads, n_seq_max=max(n, 1)) as llm:
        prompt = llm.tokenize(PROMPT, special=True)
        llm.create_completion(prompt, max_tokens=2, temperature=0.0)  # warm-up: page faults, first allocations
        t = time.perf_counter()
        # stop=[] and a fixed seed: every run decodes the same number of tokens
        r = llm.create_completion(prompt, n=n, max_tokens=tokens, temperature=0.6, seed=1, stop=[])
        return {"tokens": r["usage"]["completion_tokens"], "seconds": time.perf_counter() - t}


def run_worker(lib_dir: str, model_path: str, n: int, tokens: int, threads: int) -> float:
    env = dict(os.environ)
    env.pop("LED_LOCAL_LIB_DIR", None)
    if lib_dir != "installed":
        env["LED_LOCAL_LIB_DIR"] = lib_dir
    out = subprocess.run([sys.executable, __file__, "--worker", model_path, str(n), str(tokens), str(threads)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"build {lib_dir} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["tokens"] / r["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib_a")
    ap.add_argument("lib_b")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    for d in (a.lib_a, a.lib_b):
        if d != "installed" and not Path(d).is_dir():
            raise SystemExit(f"{d}: not a folder (give a led_local/lib folder of an install, or 'installed')")

    from led_local import models

    model_path = str(models.path(a.model))
    rates: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(a.rounds):
        for key, lib in (("a", a.lib_a), ("b", a.lib_b)):
            rates[key].append(run_worker(lib, model_path, a.n, a.tokens, a.threads))
        print(f"round {r + 1}: A {rates['a'][-1]:.1f} tok/s, B {rates['b'][-1]:.1f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"model": a.model, "n": a.n, "tokens": a.tokens, "threads": a.threads, "rounds": a.rounds,
              "lib_a": a.lib_a, "lib_b": a.lib_b, "tok_s": rates, "median_tok_s": med,
              "b_over_a": med["b"] / med["a"]}
    print(f"\n{a.model}, n={a.n} x {a.tokens} tokens, {a.threads} thread(s), median of {a.rounds} rounds")
    print(f"  A {med['a']:.1f} tok/s  ({a.lib_a})\n  B {med['b']:.1f} tok/s  ({a.lib_b})\n"
          f"  B / A: {result['b_over_a']:.3f}x")
    save_result(f"builds-{a.model}", result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
    else:
        main()
