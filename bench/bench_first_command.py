"""Does the README's first command answer its question? For each candidate question it runs what
`led-local generate QUESTION` runs (default model, the command's default sampler settings, the chat
template, max_tokens 256) once per seed, and counts the right answers; the other samplers beside LED show
what the default's exploration costs on that question.

    python bench/bench_first_command.py [--seeds 30] [--samplers led,standard,greedy] [--questions sky,rolls]

Judges: "capital" is right when it names Paris; "sky" is right when it names scattering and does not explain the colour by absorption or emission;
"rolls" when the last number of the answer is 9; "reverse" when the answer's first Python block, run in a
subprocess, defines a function that turns "hello" into "olleh".
The figures in docs/benchmarks.md ("The README's first command") come from this script's output
(bench/results/first-command-QUESTIONS.json).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

from _results import save_result

from led_local import Llama, models
from led_local.commands.common import sampling_kwargs

def _sky(text: str) -> bool:
    text = text.lower()
    return "scatter" in text and not re.search(r"absor|emi[st]", text)


def _last_number(value: str):
    def judge(text: str) -> bool:
        numbers = re.findall(r"\d+(?:\.\d+)?", text.replace(",", ""))
        return bool(numbers) and numbers[-1] == value
    return judge


def _reverses(text: str) -> bool:
    """Run the answer's first Python block in a subprocess (5 s) and call the function it defines on
    "hello": right when it returns "olleh" (any way of reversing counts, a loop as much as s[::-1])."""
    block = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    name = re.search(r"^def (\w+)\(", block.group(1), re.M) if block else None
    if not name:
        return False
    code = block.group(1) + f"\nimport sys\nsys.exit(0 if {name.group(1)}('hello') == 'olleh' else 1)\n"
    try:
        return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


QUESTIONS = {
    "capital": ("What is the capital of France? Answer in one sentence.", lambda t: "paris" in t.lower()),
    "sky": ("Why is the sky blue? Answer in two sentences.", _sky),
    "rolls": ("A baker makes 24 rolls and sells 3 bags of 5 rolls. How many rolls are left? "
              "Think step by step.", _last_number("9")),
    "reverse": ("Write a Python function that reverses a string.", _reverses),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--samplers", default="led,standard,greedy")
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--questions", default="sky,rolls,reverse")
    args = ap.parse_args()
    rows = []
    with Llama(models.path(args.model), n_threads=1, n_seq_max=1, n_ctx=4096) as llm:
        for key, sampler in [(q, s) for q in args.questions.split(",") for s in args.samplers.split(",")]:
            question, right = QUESTIONS[key]
            # the command's own defaults (sampler flags' table), only the sampler changed
            kw = sampling_kwargs("standard" if sampler == "greedy" else sampler, temperature=0.0 if sampler == "greedy" else 0.6,
                                 top_k=20, top_p=0.95, d=8, k=8, latent_norm=False, exploit=True, think_only=True,
                                 dola_layers="high")
            seeds = [0] if sampler == "greedy" else range(args.seeds)
            answers = []
            for seed in seeds:
                r = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=256,
                                               seed=seed, **kw)
                text = r["choices"][0]["message"]["content"] or ""
                answers.append({"seed": seed, "right": right(text), "text": text})
                print(f"{key:8s} {sampler:9s} seed {seed:3d} {'RIGHT' if right(text) else 'WRONG'}  {text[:150]!r}", flush=True)
            n_right = sum(a["right"] for a in answers)
            rows.append({"question": question, "key": key, "sampler": sampler, "right": n_right, "of": len(answers), "answers": answers})
            print(f"== {key} {sampler}: {n_right}/{len(answers)} right", flush=True)
    for r in rows:
        print(f"{r['key']:8s} {r['sampler']:9s} {r['right']}/{r['of']}")
    save_result(f"first-command-{args.questions.replace(',', '-')}", {"model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
