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


def exploration_by_outcome(lines: list[dict]) -> dict | None:
    """How much a sampler explored in its right and in its wrong answers. Pooled shares mix easy and hard
    problems (hard ones are both less confident and more often wrong), so the headline is the difference
    wrong - right within each problem that has both, averaged over those problems. It is descriptive: a
    sample whose reasoning already went wrong is also less confident afterwards and explores more."""
    shared = [x for x in lines if x.get("explored_share") is not None]
    if not shared:
        return None
    right = [x["explored_share"] for x in shared if x["correct"]]
    wrong = [x["explored_share"] for x in shared if not x["correct"]]
    by_problem: dict[str, tuple[list[float], list[float]]] = {}
    for x in shared:
        by_problem.setdefault(x["problem"], ([], []))[0 if x["correct"] else 1].append(x["explored_share"])
    diffs = [sum(w) / len(w) - sum(r) / len(r) for r, w in by_problem.values() if r and w]
    mean, se = mean_se(diffs) if diffs else (None, None)
    return {"right": sum(right) / len(right) if right else None, "wrong": sum(wrong) / len(wrong) if wrong else None,
            "within_problem_wrong_minus_right": {"mean": mean, "se": se, "problems": len(diffs)}}


def previous_ks(out_dir: Path) -> list[int] | None:
    """The pass@k values the run's last summary reported (what `--report DIR` shows again without --k)."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
        return sorted({int(k) for s in summary["samplers"].values() for k in s["pass_at_k"]}) or None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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
            "explored_by_outcome": exploration_by_outcome(lines),
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
        rows.extend(_outcome_row(label, s.get("explored_by_outcome")))
    for pair, by_k in summary["comparisons"].items():
        diffs = "  ".join(f"pass@{k} {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" for k, d in by_k.items())
        rows.append(f"{pair} (paired, 95% bootstrap CI): {diffs}")
    return "\n".join(rows)


def _outcome_row(label: str, by: dict | None) -> list[str]:
    if not by or by["right"] is None or by["wrong"] is None:
        return []
    d = by["within_problem_wrong_minus_right"]
    within = ""
    if d["problems"] >= 2:
        within = (f"; wrong - right within a problem {100 * d['mean']:+.1f} ± {100 * d['se']:.1f} points "
                  f"over {d['problems']} problems")
    return [f"{label:9} explored {by['right']:.1%} of tokens in right answers, {by['wrong']:.1%} in wrong ones{within}"]


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
