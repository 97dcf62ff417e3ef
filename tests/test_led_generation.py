"""LED wired into generation: the emitted tokens follow docs/led.md's distribution end to end."""

from __future__ import annotations

import numpy as np
import pytest

from led_local import LEDConfig, Llama, led_step
from led_local.sampling import LEDSampling, NativeSamplers

PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def think_model(tiny_paths):
    with Llama(tiny_paths["qwen2-led"], n_threads=1, n_seq_max=8, n_ctx=1024) as llm:
        yield llm


@pytest.mark.parametrize("cfg", [dict(d=4, k=8), dict(d=3, k=5, latent_norm=True), dict(d=4, k=6, exploit=False)])
def test_first_token_follows_spec_distribution(think_model, cfg):
    """Many seeded one-token generations (lazy latent head, 8 parallel rows per call) against led_step on
    the readout's own logits: a chi-square test of the whole path."""
    llm, T = think_model, 0.6
    config = LEDConfig(**cfg)
    tokens = llm.tokenize(PROMPT)
    r = llm.latents(tokens, layers=list(llm.default_latent_layers(config.d)), norm=config.latent_norm)
    rows = np.vstack([r.final_logits[None, :], r.logits])
    step = led_step(rows, T, config.k, exploit=config.exploit)
    if config.exploit:
        assert 0.05 < step.p_exploit < 0.95  # both branches of the coin are exercised
    if not config.latent_norm:
        assert step.depth > 0  # the draw really depends on the latent rows
    draws = []
    for seed in range(0, 3200, 8):
        out = llm.create_completion(tokens, max_tokens=1, temperature=T, sampler="led", led=config, n=8, seed=seed,
                                    trace=True)
        draws += [c["led_trace"]["steps"][0]["token"] for c in out["choices"]]
    draws = np.array(draws)
    counts = np.array([(draws == c).sum() for c in step.candidates])
    assert counts.sum() == len(draws)  # only candidates are ever emitted
    expected = step.token_probs * len(draws)
    keep = expected > 5
    chi2 = (((counts - expected) ** 2) / expected)[keep].sum()
    dof = keep.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (counts, expected)


def _spec_layers(n_layer: int, config: LEDConfig) -> list[int]:
    """docs/led.md "Notation": depth j >= 1 reads h_{L-1-j}, the blocks right below the last, unless
    `layers` names others (written out here, not taken from the engine)."""
    return list(config.layers) if config.layers is not None else [n_layer - 1 - j for j in range(1, config.d)]


def _replay(llm, prompt: list[int], steps: list[dict], config: LEDConfig, T: float) -> list[dict]:
    """Each traced step against led_step on the rows a fresh readout gives for the same prefix, with the
    step's own two draws. Returns the reference steps. A full re-decode may differ from the incremental one
    in the last bits, so a draw within 1e-4 of a boundary is ambiguous: the comparison stops there."""
    layers = _spec_layers(llm.n_layer(), config)
    refs = []
    for i, t in enumerate(steps):
        r = llm.latents(prompt + [s["token"] for s in steps[:i]], layers=layers, norm=config.latent_norm)
        rows = np.vstack([r.final_logits[None, :], r.logits])
        ref = led_step(rows, T, config.k, exploit=config.exploit)
        explored = t["u_coin"] < 1.0 - ref.p_exploit
        dist = ref.explore_probs if explored else ref.exploit_probs
        edges = np.cumsum(dist)
        if abs(t["u_coin"] - (1.0 - ref.p_exploit)) < 1e-4 or np.abs(edges - t["u_sample"]).min() < 1e-4:
            break
        assert t["candidates"] == list(ref.candidates), i
        assert t["explored"] == explored, i
        assert t["latent_head"] == (explored and config.d > 1), i
        np.testing.assert_allclose(t["probs"], dist, atol=2e-5, err_msg=f"step {i}")
        if explored:
            assert t["depth"] == ref.depth, i
        assert t["token"] == int(ref.candidates[int(np.searchsorted(edges, t["u_sample"], side="right"))]), i
        refs.append({"explored": explored, "depth": ref.depth if explored else 0})
    return refs


@pytest.mark.parametrize("model, cfg, T", [
    ("qwen2-led", dict(d=4, k=8, exploit=False), 0.6),           # every step explores
    ("qwen2-led", dict(d=4, k=8), 1.0),                          # the coin takes both branches
    ("qwen2-untied-think", dict(d=4, k=6, latent_norm=True, exploit=False), 0.8),
    ("qwen2-led", dict(d=3, k=8, exploit=False, layers=(0, 2)), 0.6),  # LEDConfig.layers: other blocks
])
def test_every_generated_step_is_led_step_on_its_rows(tiny_paths, model, cfg, T):
    """A real generation replayed step by step: candidates, coin, m*, the drawn-from distribution and the
    token all equal led_step (the C core, tested against numpy in test_led_core) on the readout's rows."""
    config = LEDConfig(think_only=False, **cfg)
    with Llama(tiny_paths[model], n_threads=1, n_ctx=1024) as llm:
        prompt = llm.tokenize(PROMPT)
        out = llm.create_completion(prompt, max_tokens=24, temperature=T, sampler="led", led=config, seed=11,
                                    trace=True)
        steps = out["choices"][0]["led_trace"]["steps"]
        refs = _replay(llm, prompt, steps, config, T)
    assert len(refs) >= 16  # (ambiguous draws are rare)
    explored = [r for r in refs if r["explored"]]
    assert explored and any(r["depth"] == config.d - 1 for r in explored)  # the deepest mixture is used
    if config.exploit:
        assert 0 < len(explored) < len(refs)


def test_latent_head_runs_only_on_exploring_steps(tiny_paths):
    """The patch counts the rows its LM head runs over for the latent readout: one per exploring step."""
    with Llama(tiny_paths["qwen2-led"], n_threads=1, n_seq_max=8, n_ctx=1024) as llm:
        before = llm.latent_head_rows()
        out = llm.create_completion(PROMPT, max_tokens=20, temperature=1.0, sampler="led", n=8, seed=2, trace=True,
                                    led=LEDConfig(d=4, k=8))
        explored = sum(c["led_trace"]["explored"] for c in out["choices"])
        steps = sum(len(c["led_trace"]["steps"]) for c in out["choices"])
        assert 0 < explored < steps
        # the n samples draw their first token from the prompt's one row: its head runs once for all of them
        first = sum(c["led_trace"]["steps"][0]["explored"] for c in out["choices"])
        assert first > 1
        assert llm.latent_head_rows() - before == explored - first + 1
        after = llm.latent_head_rows()
        llm.create_completion(PROMPT, max_tokens=20, temperature=1.0, n=4, seed=2)  # standard: no readout
        assert llm.latent_head_rows() == after


def test_seeded_and_parallel_equals_one_by_one(smollm2_path):
    msgs = [{"role": "user", "content": "Name a fruit and say why you like it."}]
    kw = dict(max_tokens=24, temperature=0.8, sampler="led", led=LEDConfig(d=8, k=8))
    with Llama(smollm2_path, n_threads=1, n_seq_max=4, n_ctx=2048) as llm:
        a = llm.create_chat_completion(msgs, n=4, seed=21, trace=True, **kw)
        b = llm.create_chat_completion(msgs, n=4, seed=21, **kw)
        alone = [llm.create_chat_completion(msgs, n=1, seed=21 + i, **kw)["choices"][0]["message"] for i in range(4)]
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]] == alone
    explored = sum(c["led_trace"]["explored"] for c in a["choices"])
    steps = sum(len(c["led_trace"]["steps"]) for c in a["choices"])
    assert 0 < explored < steps  # LED explores on some steps, not all
    for c in a["choices"]:
        for t in c["led_trace"]["steps"]:
            assert 0 <= t["depth"] < 8 and 0 < t["p_top1"] <= 1


def test_think_only_stops_exploring_after_end_of_thinking(think_model):
    llm = think_model
    (end_think,) = llm.end_of_thinking_tokens()
    assert llm.token_text(end_think) == "</think>"
    spec = LEDSampling(temperature=1.0, config=LEDConfig(d=4, k=8, exploit=False, think_only=True))
    tokens = llm.tokenize(PROMPT)
    llm.engine.set_latents(*spec.graph_needs(llm.engine))
    with NativeSamplers(llm.engine, spec, [5]) as samplers:
        def one_step() -> dict:
            llm.reset()
            (row,) = llm.engine.decode([(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
            samplers.sample(0, row)
            return samplers.trace(0)
        before = [one_step() for _ in range(20)]
        llm.engine.lib.llama_sampler_accept(samplers.handles[0], end_think)
        after = [one_step() for _ in range(20)]
    llm.engine.set_latents((), False, False)
    assert all(t["explored"] for t in before)  # exploit off: always explore while thinking
    assert not any(t["explored"] for t in after)


def test_generation_stops_exploring_once_the_model_closes_its_thinking(tiny_paths):
    """End to end: the tiny model's output bias makes it emit </think> after a few tokens."""
    with Llama(tiny_paths["qwen2-think-bias"], n_threads=1, n_seq_max=8) as llm:
        (end_think,) = llm.end_of_thinking_tokens()
        r = llm.create_completion("the cat", max_tokens=30, temperature=1.0, sampler="led", seed=0, n=8, trace=True,
                                  led=LEDConfig(d=4, k=8, exploit=False))
    closed = 0
    for c in r["choices"]:
        steps = c["led_trace"]["steps"]
        tokens = [t["token"] for t in steps]
        cut = tokens.index(end_think) + 1 if end_think in tokens else len(steps)
        assert all(t["explored"] for t in steps[:cut])      # exploit off: always explore while thinking
        assert not any(t["explored"] for t in steps[cut:])  # never after </think>
        closed += len(steps) - cut >= 3
    assert closed >= 4  # most samples closed their thinking early enough to show it


def test_think_only_off_keeps_exploring_after_end_of_thinking(tiny_paths):
    with Llama(tiny_paths["qwen2-think-bias"], n_threads=1, n_seq_max=8) as llm:
        (end_think,) = llm.end_of_thinking_tokens()
        r = llm.create_completion("the cat", max_tokens=30, temperature=1.0, sampler="led", seed=0, n=8, trace=True,
                                  led=LEDConfig(d=4, k=8, exploit=False, think_only=False))
    after = 0
    for c in r["choices"]:
        steps = c["led_trace"]["steps"]
        tokens = [t["token"] for t in steps]
        assert all(t["explored"] for t in steps)  # exploit off, and no gate: every step explores
        after += len(steps) - tokens.index(end_think) - 1 if end_think in tokens else 0
    assert after >= 10  # there were steps past </think> to gate


def test_model_without_think_token_never_gates(tiny_paths):
    with Llama(tiny_paths["llama-tied"], n_threads=1) as llm:
        assert llm.end_of_thinking_tokens() == []
        r = llm.create_completion("the", max_tokens=20, temperature=1.0, sampler="led", seed=1, trace=True,
                                  led=LEDConfig(d=4, k=8, exploit=False))
        assert all(t["explored"] for t in r["choices"][0]["led_trace"]["steps"])


def test_greedy_led_draws_the_argmax_of_the_branch_its_coin_took(smollm2_path):
    """T = 0: the exploit branch gives the final layer's top token, the explore branch the argmax of P_{m*};
    the coin still flips (with p_top1 of the raw logits), so a seed fixes the run."""
    kw = dict(max_tokens=24, temperature=0.0, sampler="led", seed=1, trace=True)
    with Llama(smollm2_path, n_threads=1) as llm:
        a = llm.create_completion("The capital of France is", **kw)
        b = llm.create_completion("The capital of France is", **kw)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    steps = a["choices"][0]["led_trace"]["steps"]
    assert any(not t["explored"] for t in steps)
    for t in steps:
        if t["explored"]:
            assert t["token"] == t["candidates"][int(np.argmax(t["probs"]))]
        else:
            assert t["token"] == t["candidates"][0]  # the final layer's argmax


def test_streaming_trace(tiny_paths):
    # (no prefix cache: on f32 weights a cached prompt's last token, evaluated alone, differs in the last bits
    # of the probabilities; README "Determinism")
    with Llama(tiny_paths["llama-tied"], n_threads=1, prefix_cache=False) as llm:
        chunks = list(llm.create_completion("the", max_tokens=8, temperature=1.0, sampler="led", seed=3, stream=True,
                                            trace=True, led={"d": 3, "k": 4}))
        plain = llm.create_completion("the", max_tokens=8, temperature=1.0, sampler="led", seed=3, trace=True,
                                      led={"d": 3, "k": 4})
    steps = [t for c in chunks for ch in c["choices"] for t in ch["led_trace"]]
    assert steps == plain["choices"][0]["led_trace"]["steps"]


@pytest.mark.parametrize("led, match", [
    (dict(d=9), "d=9 needs 8 blocks"),
    (dict(d=0), "positive integer"),
    (dict(k=0), "positive integer"),
    (dict(d=3, layers=[1]), "d-1"),
    (dict(d=2, layers=[7]), "beyond"),
    (dict(exploit="yes"), "True or False"),
    (dict(k=2.5), "LEDConfig.k must be an integer"),
    (dict(depth=3), "unknown LED settings"),
])
def test_invalid_led_settings(tiny_paths, led, match):
    with Llama(tiny_paths["llama-tied"], n_threads=1) as llm:
        with pytest.raises(ValueError, match=match):  # the README promises ValueError
            llm.create_completion("the", sampler="led", led=led)


def test_led_settings_need_led_sampler(tiny_paths):
    with Llama(tiny_paths["llama-tied"], n_threads=1) as llm:
        with pytest.raises(ValueError, match="only with sampler='led'"):
            llm.create_completion("the", led={"d": 2})
