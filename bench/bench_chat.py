"""Time to first token, turn by turn, of a fixed 6-turn chat (~250 tokens a turn): led-local (its prefix
cache keeps the conversation) against llama-cpp-python 0.3.36 on unpatched llama.cpp (the upstream reference
build tests/upstream_build.py caches), one thread, back to back.

    python bench/bench_chat.py [--model qwen2.5-coder-1.5b] [--turns 6] [--rounds 2]

Each round runs the whole conversation once per side, alternating sides, each in a fresh process with a
fresh model (turn 1 starts cold). At every turn the answer is cut after its first token and the history
gets the conversation's fixed reply instead, so both sides see the same prompts. Goal (issues "Prefix cache
and continuous batching", "The first hour works"): with `Llama(model, n_ctx=8192)` and nothing else (the
defaults: 8 slots sharing one KV pool, threads = half the cores), led-local's turn-6 time <= 1.2x
llama-cpp-python's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _results import save_result  # noqa: E402
from _worker import run_worker  # noqa: E402

TOPICS = ["tides", "volcanoes", "glaciers", "deserts", "rainforests", "coral reefs", "monsoons", "auroras"]


def conversation(turns: int) -> list[tuple[str, str]]:
    """(user, assistant) pairs of about 60 + 190 tokens, fixed text."""
    out = []
    for i in range(turns):
        t = TOPICS[i % len(TOPICS)]
        user = (f"Question {i + 1}: explain how {t} form and change over time, what drives them, and why people "
                f"who live near {t} should care. Please keep it practical and give one concrete example.")
        reply = " ".join(f"Point {j + 1} about {t}: the process depends on energy, time and the material at hand, "
                         f"and small changes add up over many years, as observers of {t} have long noted."
                         for j in range(6))
        out.append((user, reply))
    return out


WORKER = r"""
import json, sys, time
side, path, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = json.loads(sys.stdin.read())
if side == "ours":
    from led_local import Llama
    llm = Llama(path, n_ctx=8192)  # as a llama-cpp-python user writes it: the defaults (8 slots, one KV pool)
    def first_token(messages):
        t = time.perf_counter()
        for chunk in llm.create_chat_completion(messages, max_tokens=1, temperature=0, stream=True):
            return time.perf_counter() - t
else:
    import llama_cpp
    llm = llama_cpp.Llama(path, n_ctx=8192, n_threads=1, n_threads_batch=1, n_batch=512, verbose=False,
                          flash_attn=True)
    def first_token(messages):
        t = time.perf_counter()
        for chunk in llm.create_chat_completion(messages, max_tokens=1, temperature=0, stream=True):
            return time.perf_counter() - t
messages, out = [], []
for user, reply in pairs[:turns]:
    messages.append({"role": "user", "content": user})
    out.append(first_token(messages))
    messages.append({"role": "assistant", "content": reply})
print(json.dumps(out))
"""


def run_side(side: str, path: str, turns: int, pairs, upstream) -> list[float]:
    return run_worker(["-c", WORKER, side, path, str(turns)], upstream if side == "upstream" else None,
                      stdin=json.dumps(pairs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from led_local import models
    from upstream_build import ensure_upstream

    path = str(models.path(a.model))
    upstream = ensure_upstream()
    pairs = conversation(a.turns)
    runs: dict[str, list[list[float]]] = {"upstream": [], "ours": []}
    for r in range(a.rounds):
        for side in ("upstream", "ours"):
            runs[side].append(run_side(side, path, a.turns, pairs, upstream))
            print(f"round {r + 1} {side:8s} " + " ".join(f"{x:6.2f}" for x in runs[side][-1]), flush=True)
    med = {side: [statistics.median(v[t] for v in vals) for t in range(a.turns)] for side, vals in runs.items()}
    ratio = med["ours"][-1] / med["upstream"][-1]
    out = {"model": a.model, "turns": a.turns, "rounds": a.rounds, "threads": 1, "ttft_s": med,
           "turn_last_ours_over_upstream": ratio, "goal": "<= 1.2", "met": ratio <= 1.2, "runs": runs}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    save_result(f"chat-ttft-{a.model}", out)


if __name__ == "__main__":
    main()
