"""What a JSON-schema grammar costs while decoding, one thread, back to back: completion tokens/s of the same
chat request with and without a JSON-schema `response_format`, on led-local and on llama-cpp-python 0.3.36
(unpatched llama.cpp, the upstream reference build tests/upstream_build.py caches).

    python bench/bench_grammar.py [--model qwen2.5-coder-1.5b] [--tokens 64] [--rounds 2]

Each side runs in a fresh process per round, sides alternating. Goal (issue "Drop-in for llama-cpp-python
users"): report the cost beside llama-cpp-python's; there is no ratio to meet.
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

SCHEMA = {"type": "object", "properties": {
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "price": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "price", "tags"]}}}, "required": ["items"]}

WORKER = r"""
import json, sys, time
side, path, n, schema = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
if side == "ours":
    from led_local import Llama
    llm = Llama(path, n_ctx=2048, n_seq_max=1, n_threads=1)
else:
    from llama_cpp import Llama
    llm = Llama(path, n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False, flash_attn=True)
messages = [{"role": "user", "content": "List a few grocery items with prices and tags, as JSON."}]
llm.create_chat_completion(messages, max_tokens=4, temperature=0)  # warm-up
out = {}
for mode in ("free", "schema"):
    fmt = {"type": "json_object", "schema": schema} if mode == "schema" else None
    first, t0, count = None, time.perf_counter(), 0
    for chunk in llm.create_chat_completion(messages, max_tokens=n, temperature=0.8, seed=1, stream=True,
                                            response_format=fmt):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            count += 1
            if first is None:
                first = time.perf_counter()
    out[mode] = (count - 1) / (time.perf_counter() - first) if count > 1 else 0.0
print(json.dumps(out))
"""


def run_side(side: str, path: str, n: int, upstream) -> dict:
    return run_worker(["-c", WORKER, side, path, str(n), json.dumps(SCHEMA)],
                      upstream if side == "upstream" else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from led_local import models
    from upstream_build import ensure_upstream

    path, upstream = str(models.path(a.model)), ensure_upstream()
    runs: dict[str, list[dict]] = {"upstream": [], "ours": []}
    for r in range(a.rounds):
        for side in runs:
            runs[side].append(run_side(side, path, a.tokens, upstream))
            x = runs[side][-1]
            print(f"round {r + 1} {side:8s} free {x['free']:6.2f} tok/s  schema {x['schema']:6.2f} tok/s", flush=True)
    med = {side: {m: statistics.median(x[m] for x in xs) for m in ("free", "schema")} for side, xs in runs.items()}
    out = {"model": a.model, "threads": 1, "tokens": a.tokens, "median_tok_s": med,
           "schema_over_free": {side: v["schema"] / v["free"] for side, v in med.items()},
           "ours_over_upstream_schema": med["ours"]["schema"] / med["upstream"]["schema"], "runs": runs}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    save_result(f"grammar-{a.model}", out)


if __name__ == "__main__":
    main()
