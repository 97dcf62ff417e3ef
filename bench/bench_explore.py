"""The cost of LED's exploring step, and LED against standard sampling on open-ended chat (issue "Fast by
default on every machine"). Single thread, one process, runs alternating back to back.

    python bench/bench_explore.py [--model qwen2.5-coder-1.5b] [--steps 24] [--tokens 128] [--rounds 2]
                                  [--n-gpu-layers 0] [--threads 1]

(--model takes a registry key or a GGUF path; --n-gpu-layers -1 puts every layer on the GPU, which
bench/gpu_check.py does with a random model of the 1.5B's shapes.)

1. Exploring step: after a prompt, each step decodes one token (a plain decode with the latent readout's
   row gather) and then asks for the latent logits of that row, which runs the LM head over LED's d-1 = 7
   latent rows on demand (what exact LED pays on a step where its coin explores). Goal: head <= 0.5x the
   decode, median over the steps.
2. Open-ended chat: three prompts, `--tokens` tokens at T=0.6, LED (the paper's defaults) against standard
   sampling on the same seeds; tok/s from wall time of the whole reply (prompt included, the same for both).
   Goal: LED >= 0.90x standard; the share of explored steps is reported.

Writes bench/results/explore-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from led_local import Llama, models
from led_local.sampling import LEDConfig

from _results import save_result

CHAT_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are some creative ways to spend a rainy weekend at home? Give a varied list.",
    "Describe a city of the future in vivid detail, as a travel guide would.",
]
SAMPLERS = {
    "standard": dict(sampler="standard", top_k=20, top_p=0.95, min_p=0.0),
    "led": dict(sampler="led", led=LEDConfig()),
}


def exploring_step(llm: Llama, steps: int) -> dict:
    from led_local._native import ffi

    toks = llm.tokenize("Explain in detail how a hash map works and when to use one.")
    layers = llm.default_latent_layers(LEDConfig().d)
    llm.reset()
    llm.engine.set_latents(layers, with_logits=False, norm=False)
    llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
    decode, head = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        llm.engine.decode([(toks[step % len(toks)], len(toks) + step, 0, True)])
        llm.engine.lib.llama_get_logits_ith(llm.engine.ctx, -1)  # waits for the decode
        t1 = time.perf_counter()
        assert llm.engine.lib.llama_get_latent_logits_ith(llm.engine.ctx, -1) != ffi.NULL
        t2 = time.perf_counter()
        decode.append(t1 - t0)
        head.append(t2 - t1)
    llm.engine.set_latents([], with_logits=False, norm=False)
    ratio = statistics.median(head) / statistics.median(decode)
    return {"rows": len(layers), "decode_ms": 1e3 * statistics.median(decode), "head_ms": 1e3 * statistics.median(head),
            "head_over_decode": ratio, "goal": "<= 0.5", "met": ratio <= 0.5}


def open_chat(llm: Llama, tokens: int, rounds: int) -> dict:
    times = {k: [] for k in SAMPLERS}
    counts = {k: [] for k in SAMPLERS}
    explored = []
    for r in range(rounds):
        for i, prompt in enumerate(CHAT_PROMPTS):
            for kind, kwargs in SAMPLERS.items():
                t = time.perf_counter()
                res = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=tokens,
                                                 temperature=0.6, seed=100 * r + i, trace=kind == "led", **kwargs)
                times[kind].append(time.perf_counter() - t)
                counts[kind].append(res["usage"]["completion_tokens"])
                if kind == "led":
                    explored.append(res["choices"][0]["led_trace"]["explored_share"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {sum(counts[k]) / sum(times[k]):.2f} tok/s" for k in SAMPLERS),
              flush=True)
    rate = {k: sum(counts[k]) / sum(times[k]) for k in SAMPLERS}
    ratio = rate["led"] / rate["standard"]
    return {"prompts": len(CHAT_PROMPTS), "tokens": tokens, "rounds": rounds, "tok_s": rate,
            "led_over_standard": ratio, "explored_share_mean": statistics.mean(explored),
            "explored_share": explored, "goal": ">= 0.90", "met": ratio >= 0.90}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-chat", action="store_true")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--result", default=None, help="name of the results file (default explore-<model>)")
    a = ap.parse_args()
    path = models.path(a.model)
    name = a.model if a.model in models.REGISTRY else path.stem
    with Llama(path, n_ctx=2048, n_seq_max=1, n_threads=a.threads, n_gpu_layers=a.n_gpu_layers) as llm:
        out = {"model": name, "threads": a.threads, "n_gpu_layers": a.n_gpu_layers,
               "exploring_step": exploring_step(llm, a.steps)}
        print(json.dumps(out["exploring_step"]), flush=True)
        if not a.skip_chat:
            out["open_chat"] = open_chat(llm, a.tokens, a.rounds)
    print(json.dumps(out, indent=2))
    save_result(a.result or f"explore-{name}" + (f"-ngl{a.n_gpu_layers}" if a.n_gpu_layers else ""), out)


if __name__ == "__main__":
    main()
