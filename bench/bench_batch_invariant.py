"""What `Llama(batch_invariant=True)` costs and buys, one thread, back to back: prompt and decode speed with
llama.cpp's default CPU kernels and with the batch-invariant ones (ggml's reference kernels, no weight
repacking), and how far a prompt's last logits move when its tokens are batched differently.

    python bench/bench_batch_invariant.py [--model qwen2.5-coder-1.5b] [--prompt 512] [--decode 64] [--rounds 2]

Each round runs both modes, alternating, each in a fresh process. There is no goal: the figures say what the
determinism switch (README, Determinism) costs, so a user can choose.
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

WORKER = r"""
import json, sys, time
import numpy as np
from led_local import Llama
path, invariant, n_prompt, n_decode = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
llm = Llama(path, n_ctx=4096, n_batch=512, n_seq_max=1, n_threads=1, prefix_cache=False, batch_invariant=invariant)
words = " ".join(f"entry {i} holds the value {i * 37 % 101} and points to entry {i * 13 % 97};" for i in range(400))
toks = llm.tokenize(words)[:n_prompt]
n = len(toks)

def evaluate(chunks):
    llm.reset()
    pos = 0
    for c in chunks:
        llm.engine.decode([(toks[pos + i], pos + i, 0, pos + i == n - 1) for i in range(c)])
        pos += c
    return llm.engine.logits(-1)

llm.reset()  # warm-up: weights paged in, compute buffers allocated
llm.engine.decode([(toks[i], i, 0, i == 31) for i in range(32)])
t = time.perf_counter()
base = evaluate([n])
prompt_s = time.perf_counter() - t
moved = {f"{a}+{n - a}": float(np.abs(evaluate([a, n - a]) - base).max()) for a in (n - 1, n // 2 + 3)}
token, t = int(np.argmax(base)), time.perf_counter()
for i in range(n_decode):
    llm.engine.decode([(token, n + i, 0, True)])
    token = int(np.argmax(llm.engine.logits(-1)))
decode_s = time.perf_counter() - t
print(json.dumps({"prompt_tok_s": n / prompt_s, "decode_tok_s": n_decode / decode_s, "logits_moved": moved,
                  "n_prompt": n}))
"""


def run(path: str, invariant: bool, n_prompt: int, n_decode: int) -> dict:
    return run_worker(["-c", WORKER, path, "1" if invariant else "0", str(n_prompt), str(n_decode)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from led_local import models

    path = str(models.path(a.model))
    runs: dict[str, list[dict]] = {"default": [], "batch_invariant": []}
    for r in range(a.rounds):
        for mode in runs:
            runs[mode].append(run(path, mode == "batch_invariant", a.prompt, a.decode))
            x = runs[mode][-1]
            print(f"round {r + 1} {mode:15s} prompt {x['prompt_tok_s']:7.2f} tok/s  decode {x['decode_tok_s']:6.2f} "
                  f"tok/s  logits moved {x['logits_moved']}", flush=True)
    med = {mode: {k: statistics.median(x[k] for x in xs) for k in ("prompt_tok_s", "decode_tok_s")}
           for mode, xs in runs.items()}
    out = {"model": a.model, "threads": 1, "n_prompt": runs["default"][0]["n_prompt"], "n_decode": a.decode,
           "median": med,
           "prompt_invariant_over_default": med["batch_invariant"]["prompt_tok_s"] / med["default"]["prompt_tok_s"],
           "decode_invariant_over_default": med["batch_invariant"]["decode_tok_s"] / med["default"]["decode_tok_s"],
           "logits_moved_max": {mode: max(max(x["logits_moved"].values()) for x in xs) for mode, xs in runs.items()},
           "runs": runs}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    save_result(f"batch-invariant-{a.model}", out)


if __name__ == "__main__":
    main()
