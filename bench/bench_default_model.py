"""Which registry model should be the default? For each model: 20 easy questions (facts, arithmetic, a
one-line code task) answered with the default sampler (LED, the paper's settings, T = 0.6), whether the model
has the latent entropy reservoir LED needs (`led-local entropy-profile`'s verdict), its download size and
its decode speed on one thread.

    python bench/bench_default_model.py [--models smollm2-135m,qwen2.5-coder-0.5b] [--seed 0]

The default is the smallest model that answers >= 18/20 and has a reservoir (issue "The first hour works").
An answer counts when it contains one of the accepted spellings (case-insensitive); a base model without a
chat template gets "Question: ...\\nAnswer:" as a plain completion. The table in docs/benchmarks.md
("The default model") comes from this script's output (bench/results/default-model-*.json).
"""

from __future__ import annotations

import argparse
import json
import re
import time

from _results import save_result

from led_local import Llama, models
from led_local.diagnostics import entropy_profile

# (question, accepted answers): easy for a person, one clear answer each
QUESTIONS = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("What is 12 + 30?", ["42"]),
    ("What is 7 times 8?", ["56"]),
    ("What is 100 minus 37?", ["63"]),
    ("What is half of 90?", ["45"]),
    ("How many days are in a week?", ["7", "seven"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("What is the chemical symbol for water?", ["h2o", "h₂o"]),
    ("Which planet is known as the Red Planet?", ["mars"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("Who wrote 'Romeo and Juliet'?", ["shakespeare"]),
    ("What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "co2", "co₂"]),
    ("At what temperature in degrees Celsius does water boil at sea level?", ["100"]),
    ("What is the opposite of 'hot'?", ["cold"]),
    ("Which is larger, 9 or 11?", ["11"]),
    ("What color do you get by mixing blue and yellow?", ["green"]),
    ("In Python, what does len('hello') return?", ["5", "five"]),
    ("Write one line of Python that prints the sum of 3 and 4.", ["print(3 + 4)", "print(3+4)", "print(sum([3, 4]))",
                                                                    "print(sum([3,4]))", "print(4 + 3)", "print(4+3)"]),
    ("Write a Python expression that reverses the string s.", ["s[::-1]", "reversed(s)"]),
]
SYSTEM = "Answer briefly."
PROFILE_PROMPTS = [
    [{"role": "user", "content": "Please reason step by step, and put your final answer within \\boxed{}.\n\n"
                                 "A baker makes 24 rolls and sells 3 bags of 5 rolls. How many rolls are left?"}],
    [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}],
]


def correct(answer: str, accepted: list[str]) -> bool:
    text = answer.lower().replace("**", "")
    for a in accepted:
        if a.isdigit():  # a number must stand alone, not inside 142 or 4.2
            if re.search(rf"(?<![\d.]){re.escape(a)}(?![\d]|\.\d)", text):
                return True
        elif a.lower() in text:
            return True
    return False


def ask(llm: Llama, question: str, seed: int, has_chat: bool) -> tuple[str, int]:
    kw = dict(max_tokens=64, temperature=0.6, sampler="led", seed=seed)
    if has_chat:
        r = llm.create_chat_completion([{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": question}], **kw)
        return r["choices"][0]["message"]["content"] or "", r["usage"]["completion_tokens"]
    r = llm.create_completion(f"Question: {question}\nAnswer:", stop=["\nQuestion:", "\n\n"], **kw)
    return r["choices"][0]["text"], r["usage"]["completion_tokens"]


def measure(key: str, seed: int, profile_tokens: int) -> dict:
    path = models.pull(key)
    entry = models.entry(key)
    with Llama(path, n_ctx=2048, n_seq_max=1, n_threads=1, seed=seed) as llm:
        has_chat = llm.chat_template() is not None
        rows, tokens, busy = [], 0, 0.0
        for i, (q, accepted) in enumerate(QUESTIONS):
            t0 = time.perf_counter()
            answer, n = ask(llm, q, seed + i, has_chat)
            busy += time.perf_counter() - t0
            tokens += n
            rows.append({"question": q, "answer": answer, "correct": correct(answer, accepted)})
        # decode speed alone: one long greedy answer after a short prompt
        t0 = time.perf_counter()
        r = llm.create_completion("Once upon a time", max_tokens=128, temperature=0)
        decode_s = time.perf_counter() - t0
        decode_tps = r["usage"]["completion_tokens"] / decode_s
        profile = entropy_profile(llm, PROFILE_PROMPTS, max_tokens=profile_tokens, temperature=0.6, seed=seed)
    return {"model": key, "size_bytes": entry.size, "chat_template": has_chat,
            "score": sum(r["correct"] for r in rows), "questions": len(rows), "answers": rows,
            "answer_tokens": tokens, "answer_seconds": busy, "decode_tokens_per_s": decode_tps,
            "reservoir": profile.has_reservoir, "verdict": profile.verdict(),
            "led_blocks_raw": float(profile.raw[profile.led_blocks].mean()), "final": profile.final,
            "profile_tokens": profile.tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(models.REGISTRY))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-tokens", type=int, default=48)
    args = ap.parse_args()
    results = []
    for key in args.models.split(","):
        res = measure(key, args.seed, args.profile_tokens)
        results.append(res)
        print(f"{key}: {res['score']}/{res['questions']}, reservoir {res['reservoir']} "
              f"(LED blocks {res['led_blocks_raw']:.3f} vs final {res['final']:.3f}), "
              f"{res['size_bytes'] / 1e6:.0f} MB, {res['decode_tokens_per_s']:.1f} tok/s", flush=True)
        for r in res["answers"]:
            if not r["correct"]:
                print(f"   wrong: {r['question']!r} -> {r['answer'][:100]!r}", flush=True)
    eligible = [r for r in results if r["score"] >= 18 and r["reservoir"]]
    best = min(eligible, key=lambda r: r["size_bytes"])["model"] if eligible else None
    print(f"default by the rule (smallest with >= 18/20 and a reservoir): {best}")
    save_result("default-model", {"seed": args.seed, "results": results, "choice": best})


if __name__ == "__main__":
    main()
