"""The GPU path: every layer on the accelerator, against numpy and against this build's own CPU backend
(issue "Fast by default on every machine", item 3; README "Backends: what holds where").

Run by `bench/gpu_check.py test` on a GPU machine and skipped everywhere else: LED_LOCAL_GPU_CHECK names the
device the layers must land on ("CUDA", "Metal", ...; "CPU" is the script's own proof on a machine without
one, where the checks hold bit for bit but say nothing about a GPU). LED_LOCAL_GPU_BIG_MODEL adds a random
model with Qwen2.5-Coder-1.5B's shapes (models/tiny.py QWEN15_SHAPES) to the tiny ones.

The promise (README): no bit-exact property across kernels, but a relative error of at most 1e-2 of a row's
largest logit between the GPU and the CPU, the GPU and numpy's W . h, the head on demand and in the graph,
and one sequence alone or in a batch; greedy tokens identical, except where the CPU's own top two logits are
closer than twice that tolerance (a near tie, which any change of kernel may flip).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import gguf

from led_local import LEDConfig, Llama, devices
from led_local._native import ffi
from reference import field_value, read_head, rms_norm

EXPECTED = os.environ.get("LED_LOCAL_GPU_CHECK")
pytestmark = pytest.mark.skipif(not EXPECTED, reason="the GPU check: run by bench/gpu_check.py on a GPU machine")

TOL = 1e-2  # relative to the row's largest |logit| (README)
PROMPTS = ["the cat sat on the mat and then the", "Once upon a time, in a small town", "def add(a, b):"]
TINY = ["llama-untied", "qwen2-untied-think", "qwen3-untied", "gemma2-softcap", "qwen2-led"]


@pytest.fixture(scope="module")
def models(tiny_paths) -> dict:
    out = {name: tiny_paths[name] for name in TINY}
    big = os.environ.get("LED_LOCAL_GPU_BIG_MODEL")
    if big:
        out["qwen15-shapes"] = big
    return out


def _open(path, gpu: bool, **kw) -> Llama:
    # n_gpu_layers=0 keeps weights, KV cache and head on the CPU; prompts here are under 32 tokens, so ggml
    # offloads none of their products to the GPU either (its batch threshold)
    return Llama(path, n_gpu_layers=-1 if gpu else 0, n_threads=4, n_ctx=1024, n_seq_max=4, **kw)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float((np.abs(a - b).max(axis=-1) / np.abs(b).max(axis=-1)).max())


def _head_f(path) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | float, float]:
    """W, the final norm's weight and eps, the head's bias and gemma2's soft-cap: f of docs/led.md."""
    reader = gguf.GGUFReader(str(path))
    arch = field_value(reader, "general.architecture")
    by_name = {t.name: t for t in reader.tensors}
    vec = lambda name: np.asarray(by_name[name].data, dtype=np.float64)  # noqa: E731
    bias = vec("output.bias") if "output.bias" in by_name else 0.0
    cap = float(field_value(reader, f"{arch}.final_logit_softcapping")) if arch == "gemma2" else 0.0
    return (read_head(path), vec("output_norm.weight"),
            float(field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon")), bias, cap)


def test_every_layer_is_on_the_expected_device(models):
    names = [d.name for d in devices()]
    if EXPECTED == "CPU":
        assert not [d for d in devices() if d.kind in ("gpu", "igpu")], names
        return
    gpus = [d for d in devices() if d.name.startswith(EXPECTED)]
    assert gpus, f"no {EXPECTED} device found (this build's devices here: {names})"
    # every block and the head take the device's memory: most of the file (the input embeddings stay on the
    # host, as llama.cpp keeps them; a tied head is copied to the device), where the head alone is a sixth
    path = max(models.values(), key=lambda p: os.path.getsize(p))
    before = gpus[0].memory_free
    with _open(path, gpu=True):
        taken = before - next(d for d in devices() if d.name == gpus[0].name).memory_free
    assert taken >= 0.8 * os.path.getsize(path), (taken, os.path.getsize(path))


@pytest.mark.parametrize("norm", [False, True])
def test_latent_logits_equal_numpy_head_over_states(models, norm):
    for name, path in models.items():
        W, w_norm, eps, bias, cap = _head_f(path)
        with _open(path, gpu=True) as llm:
            r = llm.latents(PROMPTS[0], norm=norm)
        h = r.hidden.astype(np.float64)
        if norm:
            h = rms_norm(h, w_norm, eps)
        expected = h @ W.T + bias
        if cap:
            expected = cap * np.tanh(expected / cap)
        assert _rel(r.logits, expected) < TOL, name


def test_normed_last_block_reproduces_final_logits(models):
    for name, path in models.items():
        with _open(path, gpu=True) as llm:
            r = llm.latents(PROMPTS[0], layers=[llm.n_layer() - 1], norm=True)
        assert _rel(r.logits[0], r.final_logits) < TOL, name


def _latent_rows(llm: Llama, i: int, n: int) -> np.ndarray:
    ptr = llm.engine.lib.llama_get_latent_logits_ith(llm.engine.ctx, i)
    assert ptr != ffi.NULL
    return np.frombuffer(ffi.buffer(ptr, 4 * n * llm.n_vocab()), np.float32).reshape(n, -1).copy()


@pytest.mark.parametrize("norm", [False, True])
def test_head_on_demand_equals_head_in_graph(models, norm):
    """With the head off in the graph, the getter runs it on the head's device over the saved states."""
    for name, path in models.items():
        with _open(path, gpu=True) as llm:
            layers = llm.default_latent_layers(min(8, llm.n_layer()))
            in_graph = llm.latents(PROMPTS[0], layers=layers, norm=norm)
            llm.engine.set_latents(layers, False, norm)
            llm.reset()
            toks = in_graph.tokens
            rows_before = llm.latent_head_rows()
            llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
            lazy = _latent_rows(llm, -1, len(layers))
            assert llm.latent_head_rows() == rows_before + 1  # one row's head ran, on demand
            assert _rel(lazy, in_graph.logits) < TOL, name
            llm.engine.set_latents((), False, False)


def _greedy(llm: Llama, prompt: str, n: int) -> tuple[list[int], list[np.ndarray]]:
    toks = llm.tokenize(prompt)
    llm.reset()
    llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
    out, rows = [], []
    for step in range(n):
        z = llm.engine.logits(-1)
        rows.append(z)
        out.append(int(np.argmax(z)))
        llm.engine.decode([(out[-1], len(toks) + step, 0, True)])
    return out, rows


def _near_tie(z: np.ndarray) -> bool:
    top2 = np.sort(z.astype(np.float64))[-2:]
    return top2[1] - top2[0] < 2 * TOL * np.abs(z).max()


def test_gpu_and_cpu_agree(models):
    for name, path in models.items():
        with _open(path, gpu=False) as llm:
            cpu_latent = [llm.latents(p) for p in PROMPTS]
            cpu_greedy = [_greedy(llm, p, 24) for p in PROMPTS]
        with _open(path, gpu=True) as llm:
            gpu_latent = [llm.latents(p) for p in PROMPTS]
            gpu_greedy = [_greedy(llm, p, 24) for p in PROMPTS]
        for c, g in zip(cpu_latent, gpu_latent):
            assert _rel(g.final_logits, c.final_logits) < TOL, name
            assert _rel(g.logits, c.logits) < TOL, name
            assert _rel(g.hidden, c.hidden) < TOL, name
        for (ct, cz), (gt, gz) in zip(cpu_greedy, gpu_greedy):
            same = next((i for i, (a, b) in enumerate(zip(ct, gt)) if a != b), len(ct))
            if same < len(ct):  # the paths part only at a near tie of the CPU's own logits
                assert _near_tie(cz[same]), f"{name}: greedy tokens part at step {same} without a near tie"
            for i in range(same):
                assert _rel(gz[i], cz[i]) < TOL, f"{name}, step {i}"


def test_a_sequence_in_a_batch_equals_it_alone(models):
    """Parallel sequences (n > 1, the server's slots) against one-by-one: within the tolerance."""
    for name, path in models.items():
        with _open(path, gpu=True) as llm:
            layers = llm.default_latent_layers(min(8, llm.n_layer()))
            llm.engine.set_latents(layers, True, False)
            seqs = [llm.tokenize(p) for p in PROMPTS]
            alone = []
            for toks in seqs:
                llm.reset()
                llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
                alone.append((llm.engine.logits(-1), _latent_rows(llm, -1, len(layers))))
            llm.reset()
            batch = [(t, i, s, i == len(toks) - 1) for s, toks in enumerate(seqs) for i, t in enumerate(toks)]
            llm.engine.decode(batch)
            ends = [j for j, item in enumerate(batch) if item[3]]
            for (z, lat), j in zip(alone, ends):
                assert _rel(llm.engine.logits(j), z) < TOL, name
                assert _rel(_latent_rows(llm, j, len(layers)), lat) < TOL, name
            llm.engine.set_latents((), False, False)


def test_led_explores_on_the_device(models):
    """LED with every step exploring (exploit off): the on-demand head runs once per step and sequence."""
    path = models.get("qwen15-shapes", models["qwen2-led"])
    with _open(path, gpu=True) as llm:
        before = llm.latent_head_rows()
        out = llm.create_completion(PROMPTS[1], max_tokens=16, temperature=0.6, seed=3, n=2, sampler="led",
                                    led=LEDConfig(d=min(8, llm.n_layer()), exploit=False, think_only=False),
                                    trace=True)
        steps = sum(len(c["led_trace"]["steps"]) for c in out["choices"])
        assert all(c["led_trace"]["explored_share"] == 1.0 for c in out["choices"])
        # one head row per step and sample, but the samples' first step is the shared prompt's last row: once
        assert llm.latent_head_rows() - before == steps - 1
