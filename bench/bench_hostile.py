"""How the rest of `led-local serve` fares while hostile requests are in flight: for each case of
tests/hostile.py (the hostile-request test file's cases), the slowest /health answer and the time of a
2-token completion on the other slot meanwhile, the worst of them against the goal (/health within 100 ms
whatever is in flight), and the server's RSS before and after the whole run (goal <= 1.1x).

    python bench/bench_hostile.py [--model smollm2-135m] [--rounds 2]

One thread, a quiet server with 2 slots; each round sends every case once. Results:
bench/results/hostile.json; the figures in docs/benchmarks.md ("Hostile requests") come from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _results import save_result  # noqa: E402
from hostile import CASES, normal_completion, while_in_flight  # noqa: E402
from serving import start_server  # noqa: E402

from led_local import models  # noqa: E402


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    proc, base = start_server(models.path(args.model), "--parallel", "2")
    root = base[: -len("/v1")]
    try:
        for _ in range(3):
            normal_completion(root, 8)
        before = rss(proc.pid)
        rows: dict[str, dict] = {}
        for _ in range(args.rounds):
            for case in CASES:
                response, nb = while_in_flight(root, case)
                row = rows.setdefault(case.name, {"status": response.status_code, "health_ms": 0.0,
                                                  "completion_s": 0.0})
                row["health_ms"] = max(row["health_ms"], max(nb.health_seconds) * 1000)
                row["completion_s"] = max(row["completion_s"], nb.completion_seconds)
        normal_completion(root)
        after = rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for name, row in sorted(rows.items(), key=lambda kv: -kv[1]["health_ms"]):
        print(f"{row['health_ms']:7.0f} ms  {row['completion_s']:5.2f} s  {row['status']}  {name}")
    worst = max(rows.values(), key=lambda r: r["health_ms"])
    print(f"worst /health: {worst['health_ms']:.0f} ms (goal 100 ms: {'met' if worst['health_ms'] <= 100 else 'NOT met'}); "
          f"worst neighbour 2-token completion: {max(r['completion_s'] for r in rows.values()):.2f} s; "
          f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB ({after / before:.2f}x, goal <= 1.1x)")
    save_result("hostile", {"model": args.model, "rounds": args.rounds, "rss_before": before, "rss_after": after,
                            "cases": rows})


if __name__ == "__main__":
    main()
