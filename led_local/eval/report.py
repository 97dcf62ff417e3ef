"""Figures from the sample files alone: pass@k with standard errors per sampler, paired differences with
bootstrap intervals when several samplers ran on the same problems, and a pass@k-vs-k plot."""

from __future__ import annotations

import json
from pathlib import Path

from .passk import mean_se, paired_difference, per_problem
from .runner import read_samples, write_json_atomic


def load_runs(out_dir: Path) -> dict[str, list[dict]]:
    runs = {}
    for path in sorted(out_dir.glob("samples-*.jsonl")):
        lines = read_samples(path)
        if lines:
            runs[path.stem[len("samples-"):]] = lines
    if not runs:
        raise ValueError(f"{out_dir} holds no samples-*.jsonl files to report on")
    return runs


def summarize(out_dir: Path, ks: list[int] | None = None) -> dict:
    runs = load_runs(out_dir)
    summary: dict = {"samplers": {}, "comparisons": {}}
    per_k: dict[str, dict[int, dict[str, float]]] = {}
    for label, lines in runs.items():
        correct: dict[str, list[bool]] = {}
        for line in sorted(lines, key=lambda x: (x["problem_index"], x["sample"])):
            correct.setdefault(line["problem"], []).append(bool(line["correct"]))
        settings_file = out_dir / f"settings-{label}.json"
        settings = json.loads(settings_file.read_text()) if settings_file.exists() else None
        # only problems with all their samples count (a run interrupted mid-problem has a partial one)
        n = settings["n"] if settings else max(len(v) for v in correct.values())
        complete = {p: v[:n] for p, v in correct.items() if len(v) >= n}
        if not complete:
            raise ValueError(f"{out_dir}: no problem has all {n} '{label}' samples yet")
        kk = [k for k in (ks or sorted({1, 2, 4, 8, 16, n})) if k <= n]
        per_k[label] = {k: per_problem(complete, k) for k in kk}
        explored = [x["explored_share"] for x in lines if x.get("explored_share") is not None]
        summary["samplers"][label] = {
            "problems": len(complete), "samples_per_problem": n, "samples": len(lines),
            "pass_at_k": {str(k): dict(zip(("mean", "se"), mean_se(list(per_k[label][k].values())))) for k in kk},
            "mean_tokens": sum(x["tokens"] for x in lines) / len(lines),
            "wall_s": sum(x["wall_s"] for x in lines),
            "explored_share": sum(explored) / len(explored) if explored else None,
            # answers cut off by max_tokens: their (last-number) answer is rarely right, and a sampler that
            # rambles more loses pass@k for that reason alone
            "length_share": sum(1 for x in lines if x["finish_reason"] == "length") / len(lines),
            "settings": settings,
        }
    labels = list(runs)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            common_k = sorted(set(per_k[a]) & set(per_k[b]))
            summary["comparisons"][f"{a}-{b}"] = {str(k): paired_difference(per_k[a][k], per_k[b][k]) for k in common_k}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    rows = []
    for label, s in summary["samplers"].items():
        ks = "  ".join(f"pass@{k} {v['mean']:.3f}±{v['se']:.3f}" for k, v in s["pass_at_k"].items())
        ex = f"  explored {s['explored_share']:.1%}" if s["explored_share"] is not None else ""
        rows.append(f"{label:9} {s['problems']} problems x {s['samples_per_problem']}  {ks}  "
                    f"tokens {s['mean_tokens']:.0f}  cut {s['length_share']:.1%}  wall {s['wall_s']:.0f}s{ex}")
    for pair, by_k in summary["comparisons"].items():
        diffs = "  ".join(f"pass@{k} {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" for k, d in by_k.items())
        rows.append(f"{pair} (paired, 95% bootstrap CI): {diffs}")
    return "\n".join(rows)


def plot(summary: dict, path: Path) -> Path:
    from ..plots import new_figure, save_figure

    fig, ax = new_figure(5, 3.5)
    for label, s in summary["samplers"].items():
        ks = [int(k) for k in s["pass_at_k"]]
        means = [s["pass_at_k"][str(k)]["mean"] for k in ks]
        ses = [s["pass_at_k"][str(k)]["se"] for k in ks]
        ax.errorbar(ks, means, yerr=ses, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
