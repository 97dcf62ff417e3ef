"""LED vs standard sampling: decode tokens/s on a GSM8K chat prompt at temperature 0.6 (single thread,
runs alternating back to back in one process). The measuring code is led_local/benchmark.py, which
`led-local bench` also runs.

    python bench/bench_led.py [--model qwen2.5-coder-1.5b] [--tokens 160] [--rounds 4] [--n 8]

--n: parallel samples per request (the shape of `led-local eval`), tok/s over all of them.

Writes bench/results/led-<model>.json.
"""

from __future__ import annotations

import argparse
import statistics

from led_local import Llama, models
from led_local.benchmark import led_vs_standard

from _results import save_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--n", type=int, default=1)
    a = ap.parse_args()
    with Llama(models.path(a.model), n_ctx=2048 * a.n, n_seq_max=a.n, n_threads=1) as llm:
        result = led_vs_standard(llm, a.tokens, a.rounds, report=lambda line: print(line, flush=True), n=a.n)
    med = result["median_tok_s"]
    print(f"\n{a.model}, 1 thread, n={a.n}, GSM8K chat prompt, T=0.6, median of {a.rounds} alternating rounds")
    print(f"  standard {med['standard']:.2f} tok/s, led {med['led']:.2f} tok/s: "
          f"led/standard = {result['led_over_standard']:.3f}x; explored share {statistics.mean(result['explored_share']):.1%}")
    save_result(f"led-{a.model}" + (f"-n{a.n}" if a.n > 1 else ""), {"model": a.model, **result})


if __name__ == "__main__":
    main()
