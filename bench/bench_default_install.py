"""What a user compares: led-local's default install against `pip install llama-cpp-python==0.3.36` with its
default build, on the same machine, back to back (issue "Fast by default on every machine").

    python -m venv /tmp/lcp && /tmp/lcp/bin/pip install llama-cpp-python==0.3.36    # its default build
    python bench/bench_default_install.py --other-python /tmp/lcp/bin/python \
        [--models qwen2.5-coder-1.5b,smollm2-135m] [--threads 1,2] [--tokens 96] [--rounds 3]

Each run is a fresh process (ours: this interpreter with the installed led-local; theirs: the other
environment's interpreter), the two alternate, greedy decoding of a fixed prompt. The decode rate of a run is
(tokens - 1) / (its time - the time of a one-token run), which leaves prompt processing out. Goal: ours >=
0.98x theirs for every model and thread count. Writes bench/results/default-install.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from _results import save_result

PROMPT = ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
          "May. How many clips did Natalia sell altogether in April and May?\nAnswer:")

WORKER = r"""
import json, sys, time
side, path, threads, tokens, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if side == "ours":
    from led_local import Llama
    llm = Llama(path, n_ctx=2048, n_seq_max=1, n_threads=threads)
else:
    import llama_cpp
    llm = llama_cpp.Llama(path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
def run(n):
    llm.reset() if side != "ours" else None
    t = time.perf_counter()
    r = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
    return time.perf_counter() - t, r["usage"]["completion_tokens"]
run(2)  # warm-up: page faults, first allocations
t1, _ = run(1)
tn, n = run(tokens)
print(json.dumps({"tok_s": (n - 1) / (tn - t1), "tokens": n}))
"""


def run(python: str, side: str, path: str, threads: int, tokens: int) -> dict:
    r = subprocess.run([python, "-c", WORKER, side, path, str(threads), str(tokens), PROMPT], capture_output=True,
                       text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{side} worker failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other-python", required=True, help="interpreter of the llama-cpp-python environment")
    ap.add_argument("--models", default="qwen2.5-coder-1.5b,smollm2-135m")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from led_local import models

    results = []
    for model in a.models.split(","):
        path = str(models.path(model))
        for threads in [int(t) for t in a.threads.split(",")]:
            rates = {"theirs": [], "ours": []}
            for r in range(a.rounds):
                for side, python in (("theirs", a.other_python), ("ours", sys.executable)):
                    rates[side].append(run(python, side, path, threads, a.tokens)["tok_s"])
                print(f"{model} {threads} thread(s) round {r + 1}: llama-cpp-python {rates['theirs'][-1]:.2f}, "
                      f"led-local {rates['ours'][-1]:.2f} tok/s", flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            ratio = med["ours"] / med["theirs"]
            results.append({"model": model, "threads": threads, "median_tok_s": med, "ours_over_theirs": ratio,
                            "met": ratio >= 0.98, "tok_s": rates})
    out = {"tokens": a.tokens, "rounds": a.rounds, "goal": ">= 0.98", "results": results}
    print(json.dumps([{k: v for k, v in r.items() if k != "tok_s"} for r in results], indent=2))
    save_result("default-install", out)


if __name__ == "__main__":
    main()
