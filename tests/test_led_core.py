"""The C core of LED against an independent numpy implementation of docs/led.md, written here."""

from __future__ import annotations

import numpy as np
import pytest

from led_local.led import led_sample, led_step


def softmax_rows(z: np.ndarray) -> np.ndarray:
    """Full-vocabulary softmax with the conventions of led_core.h: NaN = -inf, +inf entries share the mass,
    a row with nothing above -inf is uniform."""
    out = np.empty_like(z)
    for j, row in enumerate(z):
        m = row.max()
        if m == np.inf:
            out[j] = (row == np.inf) / np.count_nonzero(row == np.inf)
        elif m == -np.inf:
            out[j] = 1.0 / row.size
        else:
            e = np.exp(row - m)
            out[j] = e / e.sum()
    return out


def reference(logits, T, k, exploit=True, explore_allowed=True):
    z = np.asarray(logits, np.float32).astype(np.float64)
    z = np.where(np.isnan(z), -np.inf, z)
    d, V = z.shape
    order = np.lexsort((np.arange(V), -z[0]))        # step 3: by p_0 descending, ties by lower id
    cand = order[: min(k, V)]
    p = softmax_rows(z / T if T > 0 else z)           # steps 1-2, full vocabulary
    q = np.maximum(p[:, cand], 1e-6)                  # step 4
    S = np.cumsum(q, axis=0)                          # step 5
    P = S / S.sum(axis=1, keepdims=True)              # step 6
    H = -(P * np.log(np.maximum(P, 1e-9))).sum(axis=1)  # step 7
    m = int(np.argmax(H))
    p1 = p[0, cand[0]]
    r0 = p[0, cand] / p[0, cand].sum() if p[0, cand].sum() > 0 else np.full(len(cand), 1 / len(cand))
    pe = 1.0 if not explore_allowed else (p1 if exploit else 0.0)  # step 8
    if T > 0:
        mix = pe * r0 + (1 - pe) * P[m]
    else:  # step 9 greedy: each branch emits its argmax
        mix = np.zeros(len(cand))
        mix[np.argmax(r0)] += pe
        mix[np.argmax(P[m])] += 1 - pe
    return dict(cand=cand, mix=mix, explore=P[m], exploit=r0, p1=p1, depth=m, H=H)


def random_logits(rng, d, V, kind):
    if kind == "normal":
        z = rng.standard_normal((d, V)) * rng.uniform(0.5, 8)
    elif kind == "peaked":  # a nearly one-hot final layer, more entropic latents (the regime LED targets)
        z = rng.standard_normal((d, V)) * np.linspace(20, 2, d)[:, None]
    elif kind == "ties":
        z = rng.integers(-3, 3, (d, V)).astype(np.float64)
    elif kind == "extreme":
        z = rng.standard_normal((d, V)) * 1e3
        z.flat[rng.integers(0, z.size, max(1, z.size // 50))] = -np.inf
        z.flat[rng.integers(0, z.size, max(1, z.size // 50))] = np.nan
    else:  # "inf": rows with +inf entries and a row with nothing finite
        z = rng.standard_normal((d, V))
        z[0, rng.integers(0, V, 2)] = np.inf
        if d > 1:
            z[-1] = -np.inf
    return z.astype(np.float32)


CASES = []
_rng = np.random.default_rng(1234)
for _i in range(120):
    _V = int(_rng.choice([5, 17, 64, 1000, 50_000]))
    CASES.append(dict(seed=_i, d=int(_rng.integers(1, 9)), V=_V, k=int(_rng.integers(1, 41)),
                      T=float(_rng.choice([0.0, 0.3, 0.6, 1.0, 2.0])),
                      kind=str(_rng.choice(["normal", "peaked", "ties", "extreme", "inf"])),
                      exploit=bool(_rng.integers(0, 2)), allowed=bool(_rng.integers(0, 4) > 0)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['seed']}-d{c['d']}-V{c['V']}-k{c['k']}-T{c['T']}-{c['kind']}")
def test_core_matches_numpy(case):
    rng = np.random.default_rng(case["seed"])
    z = random_logits(rng, case["d"], case["V"], case["kind"])
    got = led_step(z, case["T"], case["k"], exploit=case["exploit"], explore_allowed=case["allowed"])
    ref = reference(z, case["T"], case["k"], case["exploit"], case["allowed"])
    np.testing.assert_array_equal(got.candidates, ref["cand"])
    np.testing.assert_allclose(got.token_probs, ref["mix"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.exploit_probs, ref["exploit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.p_top1, ref["p1"], atol=1e-6)
    np.testing.assert_allclose(got.explore_probs, ref["explore"], atol=1e-6, rtol=0)
    H = np.sort(ref["H"])
    if len(H) < 2 or H[-1] - H[-2] > 1e-9:  # m* is only defined up to rounding on exact entropy ties
        assert got.depth == ref["depth"]
    assert abs(got.token_probs.sum() - 1) < 1e-5


def test_draws_follow_token_probs():
    """100k draws from led_sample match token_probs (chi-square), exploring and exploiting both."""
    rng = np.random.default_rng(7)
    z = random_logits(rng, 6, 300, "peaked")
    z[0] /= 8  # a final layer unsure enough that both branches of the coin are taken often
    T, k = 0.8, 12
    step = led_step(z, T, k)
    assert 0.2 < step.p_exploit < 0.8
    n = 100_000
    u = rng.random((n, 2))
    draws = np.array([led_sample(z, T, k, float(a), float(b)) for a, b in u])
    counts = np.array([(draws == c).sum() for c in step.candidates])
    assert counts.sum() == n  # never outside the candidates
    expected = step.token_probs * n
    keep = expected > 5
    chi2 = (((counts - expected) ** 2) / expected)[keep].sum()
    dof = keep.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof)  # about a 5-sigma bound on a chi-square with dof degrees


@pytest.mark.parametrize("T", [0.3, 1.0])
def test_d1_is_top_k_sampling(T):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1, 500)).astype(np.float32) * 3
    s = led_step(z, T, 10)
    p = np.exp(z[0].astype(np.float64) / T)
    top = np.argsort(-z[0], kind="stable")[:10]
    np.testing.assert_allclose(s.token_probs, p[top] / p[top].sum(), atol=1e-6)
    assert s.depth == 0


def test_greedy_takes_argmax_of_chosen_branch():
    z = np.array([[5.0, 4.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]], np.float32)
    # exploit branch: argmax of r_0 is token 0; explore branch: P_{m*} leans to token 1
    assert led_sample(z, 0.0, 2, u_coin=0.999, u_sample=0.5) == 0
    s = led_step(z, 0.0, 2)
    assert s.explore_probs[1] > s.explore_probs[0]
    assert led_sample(z, 0.0, 2, u_coin=0.0, u_sample=0.5) == 1


def test_greedy_token_probs_are_what_greedy_emits():
    """At T = 0 each branch emits its argmax (docs/led.md step 9): token_probs puts p1 on r_0's argmax and 1-p1
    on P_{m*}'s, and agrees with led_sample over the coin's draws."""
    z = np.array([[5.0, 4.5, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]], np.float32)
    s = led_step(z, 0.0, 3)
    assert np.argmax(s.exploit_probs) != np.argmax(s.explore_probs)  # the branches disagree here
    want = np.zeros(3)
    want[np.argmax(s.exploit_probs)] += s.p_exploit
    want[np.argmax(s.explore_probs)] += 1 - s.p_exploit
    np.testing.assert_allclose(s.token_probs, want, atol=1e-6)
    coins = np.linspace(0, 1, 2001)[:-1]
    emitted = [led_sample(z, 0.0, 3, u_coin=u, u_sample=0.5) for u in coins]
    for c, token in enumerate(s.candidates):
        assert abs(np.mean([e == token for e in emitted]) - s.token_probs[c]) < 1e-3


def test_gates():
    rng = np.random.default_rng(5)
    z = random_logits(rng, 4, 100, "normal")
    assert led_step(z, 1.0, 5, exploit=False).p_exploit == 0.0
    for exploit in (True, False):  # past the think gate the exploit switch no longer matters: never explore
        gated = led_step(z, 1.0, 5, exploit=exploit, explore_allowed=False)
        assert gated.p_exploit == 1.0
        np.testing.assert_allclose(gated.token_probs, gated.exploit_probs)
    # the coin can no longer explore: every u_coin draws from the exploit branch
    exploit_branch = [led_sample(z, 1.0, 5, 1.0 - 1e-7, u) for u in (0.1, 0.5, 0.9)]
    for exploit in (True, False):
        for u_coin in (0.0, 0.5, 0.99):
            got = [led_sample(z, 1.0, 5, u_coin, u, exploit=exploit, explore_allowed=False) for u in (0.1, 0.5, 0.9)]
            assert got == exploit_branch


def test_k_at_least_vocabulary():
    z = np.array([[1.0, 3.0, 2.0]], np.float32)
    s = led_step(z, 1.0, 40)
    assert list(s.candidates) == [1, 2, 0]
    np.testing.assert_allclose(s.token_probs.sum(), 1.0, atol=1e-6)


@pytest.mark.parametrize("args, match", [
    (dict(logits=np.zeros((0, 5)), temperature=1.0, k=3), "d >= 1"),
    (dict(logits=np.zeros((2, 5, 1)), temperature=1.0, k=3), "\\[d, V\\]"),
    (dict(logits=np.zeros((2, 5)), temperature=-1.0, k=3), "temperature"),
    (dict(logits=np.zeros((2, 5)), temperature=float("inf"), k=3), "temperature"),
    (dict(logits=np.zeros((2, 5)), temperature=1.0, k=0), "k must"),
])
def test_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        led_step(**args)
    with pytest.raises(ValueError, match="uniform"):
        led_sample(np.zeros((2, 5)), 1.0, 3, 1.0, 0.5)
