"""pass@k by the unbiased estimator of Chen et al. (2021), its standard error over problems, and paired
differences between two samplers with a bootstrap confidence interval."""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of the n samples include a correct one."""
    if k > n:
        raise ValueError(f"k={k} exceeds the {n} samples per problem")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def per_problem(correct: dict[str, list[bool]], k: int) -> dict[str, float]:
    return {pid: pass_at_k(len(v), sum(v), k) for pid, v in correct.items()}


def mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


def paired_difference(a: dict[str, float], b: dict[str, float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over the problems both have, with a 95 % percentile bootstrap interval."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no problem")
    d = np.array([a[p] - b[p] for p in common])
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci95": [float(lo), float(hi)], "problems": len(common)}
