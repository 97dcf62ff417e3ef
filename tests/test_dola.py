"""DoLa (docs/led.md "DoLa") against a numpy port of Hugging Face transformers' DoLa functions
(transformers 4.46, generation/utils.py: _dola_select_contrast, _relative_top_filter, and the layer choice
of _dola_decoding), written here from that source."""

from __future__ import annotations

import numpy as np
import pytest

from led_local import Llama
from led_local._native import dola_contrast
from led_local.sampling import dola_candidate_layers


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def hf_relative_top_filter(scores, baseline, relative_top=0.1, filter_value=-np.inf, base_filter_value=-1e-3):
    s, b = log_softmax(scores), log_softmax(baseline)
    thresh = min(np.sort(s)[::-1][0], s.max() + np.log(relative_top))
    b[s < thresh] = base_filter_value
    s[s < thresh] = filter_value
    return s, b


def hf_select_contrast(premature: np.ndarray, final: np.ndarray) -> tuple[np.ndarray, int]:
    if len(premature) == 1:
        best = 0
    else:
        pf, pl = np.exp(log_softmax(final)), np.exp(log_softmax(premature))
        avg = 0.5 * (pf[None] + pl)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl1 = np.where(avg > 0, avg * (np.log(avg) - log_softmax(final)[None]), 0).mean(-1)
            kl2 = np.where(avg > 0, avg * (np.log(avg) - log_softmax(premature)), 0).mean(-1)
        best = int(np.argmax(0.5 * (kl1 + kl2)))
    s, b = hf_relative_top_filter(final, premature[best])
    return s - b, best


@pytest.mark.parametrize("seed", range(12))
def test_contrast_matches_transformers(seed):
    rng = np.random.default_rng(seed)
    m, V = int(rng.integers(1, 9)), int(rng.choice([7, 300, 20000]))
    final = (rng.standard_normal(V) * rng.uniform(1, 6)).astype(np.float32)
    premature = (rng.standard_normal((m, V)) * rng.uniform(0.5, 4, (m, 1))).astype(np.float32)
    got, best = dola_contrast(final, premature)
    ref, ref_best = hf_select_contrast(premature, final)
    assert best == ref_best
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    keep = np.isfinite(ref)
    assert keep.sum() >= 1
    np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("n, tied, which, expected", [
    (30, True, "low", list(range(2, 15, 2))),
    (30, True, "high", list(range(15, 30, 2))),
    (28, False, "low", list(range(0, 14, 2))),
    (28, False, "high", list(range(14, 28, 2))),
    (48, False, "low", list(range(0, 20, 2))),
    (48, True, "high", list(range(28, 48, 2))),
    (4, True, "low", [2]),
    (2, True, "low", [1]),
    (4, False, [0, 3, 4, 9], [0, 3]),
])
def test_candidate_layers_follow_transformers(n, tied, which, expected):
    assert dola_candidate_layers(n, tied, which) == expected


def reference_dola_decode(llm, prompt: str, which, n: int, repeat_penalty: float = 1.0) -> tuple[list[int], list[int]]:
    """Greedy DoLa token by token with the numpy port, fed with the engine's own layer readout: (tokens, the
    premature layer of each step in transformers' numbering). A repetition penalty, as llama.cpp's applies
    it over the generated tokens (positive logits divided, negative multiplied), runs on the contrast."""
    cands = dola_candidate_layers(llm.n_layer(), llm.head_is_tied(), which)
    tokens = llm.tokenize(prompt, special=True)
    out, chosen = [], []
    for _ in range(n):
        r = llm.latents(tokens + out, layers=[layer - 1 for layer in cands])  # 0 -> the embeddings (-1)
        contrast, best = hf_select_contrast(r.logits, r.final_logits)
        for t in set(out[-64:]):
            contrast[t] = contrast[t] / repeat_penalty if contrast[t] > 0 else contrast[t] * repeat_penalty
        out.append(int(np.argmax(contrast)))
        chosen.append(cands[best])
        if llm.is_eog(out[-1]):
            break
    return out, chosen


@pytest.mark.parametrize("name, which, varies", [("llama-untied", "low", False), ("llama-untied", "high", False),
                                                 ("llama-tied", "low", False), ("llama-deep", "low", True),
                                                 ("llama-deep", "high", False)])
def test_greedy_dola_equals_reference_decode(tiny_paths, name, which, varies):
    """Greedy DoLa against the numpy port: the tokens and, step by step, the premature layer it chose."""
    with Llama(tiny_paths[name], n_threads=1, n_ctx=512) as llm:
        out = llm.create_completion("the cat", max_tokens=12, temperature=0.0, sampler="dola", dola_layers=which,
                                    trace=True)
        steps = out["choices"][0]["led_trace"]["steps"]
        ref, chosen = reference_dola_decode(llm, "the cat", which, len(steps))
        cands = dola_candidate_layers(llm.n_layer(), llm.head_is_tied(), which)
    assert [t["token"] for t in steps] == ref
    assert [t["premature"] for t in steps] == chosen
    if varies:  # here the Jensen-Shannon choice moves between layers: a fixed layer could not pass
        assert len(cands) > 1 and len(set(chosen)) > 1


def test_dola_chain_runs_on_the_contrast(tiny_paths):
    """After the contrast, the ordinary chain: top-k 1 at T = 1 is greedy DoLa (not greedy decoding of the
    final layer), and a repetition penalty acts on the contrasted logits."""
    with Llama(tiny_paths["llama-deep"], n_threads=1, n_ctx=512) as llm:
        kw = dict(max_tokens=16, sampler="dola", dola_layers="high", trace=True)
        greedy = llm.create_completion("the cat", temperature=0.0, **kw)
        top1 = llm.create_completion("the cat", temperature=1.0, top_k=1, seed=3, **kw)
        plain = llm.create_completion("the cat", max_tokens=16, temperature=0.0)
        assert top1["choices"][0]["text"] == greedy["choices"][0]["text"] != plain["choices"][0]["text"]
        # below 1 the penalty favours what was already said: it must bite within 16 tokens
        penalized = llm.create_completion("the cat", temperature=0.0, repeat_penalty=0.3, **kw)
        got = [t["token"] for t in penalized["choices"][0]["led_trace"]["steps"]]
        ref, _ = reference_dola_decode(llm, "the cat", "high", len(got), repeat_penalty=0.3)
        assert got == ref
        assert got != [t["token"] for t in greedy["choices"][0]["led_trace"]["steps"]]  # the penalty mattered


def test_dola_sampling_on_smollm2(smollm2_path):
    with Llama(smollm2_path, n_threads=1, n_seq_max=2) as llm:
        kw = dict(max_tokens=16, temperature=0.7, sampler="dola", dola_layers="high", repeat_penalty=1.2, seed=4,
                  trace=True)
        a = llm.create_completion("The tallest mountain in the world is", n=2, **kw)
        b = llm.create_completion("The tallest mountain in the world is", n=2, **kw)
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    layers = {t["premature"] for c in a["choices"] for t in c["led_trace"]["steps"]}
    assert layers <= set(range(15, 30, 2))


def test_bad_dola_layers(tiny_path):
    with Llama(tiny_path, n_threads=1) as llm:
        with pytest.raises(ValueError, match="dola_layers"):
            llm.create_completion("x", sampler="dola", dola_layers="middle")
        with pytest.raises(ValueError, match="no premature layer"):
            llm.create_completion("x", sampler="dola", dola_layers=[10, 11])
        with pytest.raises(ValueError, match="only with sampler='dola'"):
            llm.create_completion("x", dola_layers="low")
