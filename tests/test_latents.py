"""The patch's latent readout against independent computations (docs/led.md, "Notation")."""

from __future__ import annotations

import numpy as np
import pytest
import gguf

from led_local import Llama
from reference import field_value, forward, head_weight, read_head, read_tensors, rms_norm

PROMPT = "the cat sat on the mat and then the"


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "qwen2-untied-think", "qwen2-think-bias",
                                  "qwen3-untied", "gemma2-softcap"])
@pytest.mark.parametrize("norm", [False, True])
def test_latent_logits_equal_head_over_states(tiny_paths, name, norm):
    path = tiny_paths[name]
    tensors, reader = read_tensors(path)
    arch = field_value(reader, "general.architecture")
    eps = float(field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon"))
    with Llama(path, n_threads=1) as llm:
        r = llm.latents(PROMPT, layers=[2, 1, 0], norm=norm)
    assert r.layers == [2, 1, 0] and r.norm is norm
    assert r.hidden.shape == (3, 64) and r.logits.shape == (3, tensors["token_embd.weight"].shape[0])
    h = r.hidden.astype(np.float64)
    if norm:
        h = rms_norm(h, tensors["output_norm.weight"], eps)
    expected = h @ head_weight(tensors).T + tensors.get("output.bias", 0.0)  # f: the head's bias, if any
    cap = float(field_value(reader, f"{arch}.final_logit_softcapping")) if arch == "gemma2" else 0.0
    if cap:
        assert np.abs(expected).max() > 2 * cap  # the cap really bends these rows
        expected = cap * np.tanh(expected / cap)  # f: gemma2's final logit soft-capping
    assert _rel_err(r.logits, expected) < 1e-5


@pytest.mark.parametrize("name", ["llama-tied", "qwen2-untied-think", "qwen3-untied"])
def test_hidden_states_match_numpy_forward(tiny_paths, name):
    path = tiny_paths[name]
    with Llama(path, n_threads=1) as llm:
        tokens = llm.tokenize(PROMPT)
        r = llm.latents(tokens, layers=[3, 2, 1, 0])
    states, final = forward(path, tokens)
    for j, il in enumerate(r.layers):
        ref = states[il][-1]
        # llama.cpp keeps K/V in f16, numpy in f64: agreement to ~1e-3 relative; blocks differ by O(1)
        assert _rel_err(r.hidden[j], ref) < 5e-3, f"block {il}"
        other = states[il - 1][-1] if il > 0 else states[il + 1][-1]
        assert _rel_err(other, ref) > 5e-2  # the check can tell neighbouring blocks apart
    assert _rel_err(r.final_logits, final) < 5e-3


def test_normed_last_block_reproduces_final_logits(tiny_paths, smollm2_path):
    # the final norm and head read off the graph (f(W . N(h_{L-1}))) are exactly the model's own
    for path in (*tiny_paths.values(), smollm2_path):
        with Llama(path, n_threads=1) as llm:
            r = llm.latents(PROMPT, layers=[llm.n_layer() - 1], norm=True)
        np.testing.assert_array_equal(r.logits[0], r.final_logits)


def test_final_norm_read_off_the_graph_stops_at_the_last_block_state(tiny_path):
    """A control vector on the last block is added before the block's output (`l_out`), like gemma4's
    out_scale: it belongs to h_{L-1}, not to the final norm N. Read into N, it would be added twice."""
    from led_local._native import ffi
    with Llama(tiny_path, n_threads=1) as llm:
        n, d = llm.n_layer(), llm.n_embd()
        direction = np.random.default_rng(0).normal(0, 0.5, size=(n - 1) * d).astype(np.float32)  # blocks 1..n-1
        assert llm.engine.lib.llama_set_adapter_cvec(llm.engine.ctx, ffi.from_buffer("float[]", direction), direction.size,
                                               d, 1, n - 1) == 0
        r = llm.latents(PROMPT, layers=[n - 1], norm=True)
    with Llama(tiny_path, n_threads=1) as plain:
        assert not np.allclose(plain.latents(PROMPT, layers=[n - 1], norm=True).final_logits, r.final_logits)
    np.testing.assert_array_equal(r.logits[0], r.final_logits)


def test_a_3d_state_architecture_is_refused_with_a_clear_error(tmp_path):
    """Gemma-3n's blocks output [n_embd, tokens, 4] (one state per AltUp stream): the readout refuses the
    graph (ggml would assert in ggml_get_rows); the model still generates, latents() says why, and so does
    LED at its first exploring step (T=1.5: at once here)."""
    from tiny import write_tiny_gemma3n

    with Llama(write_tiny_gemma3n(tmp_path / "gemma3n.gguf"), n_threads=1, n_ctx=256, n_seq_max=1) as llm:
        assert llm.create_completion(PROMPT, max_tokens=3, temperature=0)["usage"]["completion_tokens"] == 3
        with pytest.raises(RuntimeError, match="offers no latent readout"):
            llm.latents(PROMPT, layers=[1, 2])
        with pytest.raises(RuntimeError, match="offers no latent readout"):
            llm.create_completion(PROMPT, max_tokens=8, temperature=1.5, seed=1, sampler="led",
                                  led={"d": 3, "think_only": False})
        assert llm.create_completion(PROMPT, max_tokens=2, temperature=0)["choices"][0]["text"] is not None


@pytest.mark.parametrize("threads", [1, 2])
def test_a_q6k_head_over_several_rows_equals_it_row_by_row(qwen15_path, threads):
    """Qwen2.5-Coder-1.5B's head is Q6_K: over LED's 7 latent rows the CPU backend unpacks each weight block
    once for all of them (patch 0003); over one row it runs the per-row dot product. Same bits."""
    # no prefix cache: both readouts evaluate the whole prompt in one batch, so the states are the same bits
    with Llama(qwen15_path, n_threads=threads, n_ctx=512, n_seq_max=1, prefix_cache=False) as llm:
        layers = llm.default_latent_layers(8)
        together = llm.latents(PROMPT, layers=layers)
        for i, layer in enumerate(layers):
            alone = llm.latents(PROMPT, layers=[layer])
            np.testing.assert_array_equal(alone.hidden[0], together.hidden[i])
            np.testing.assert_array_equal(alone.logits[0], together.logits[i])


def test_smollm2_quantized_head(smollm2_path):
    reader = gguf.GGUFReader(str(smollm2_path))
    head = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert head.tensor_type == gguf.GGMLQuantizationType.Q8_0  # the tied head, duplicated for output
    with Llama(smollm2_path, n_threads=1) as llm:
        r = llm.latents(PROMPT)
        n = llm.n_layer()
    assert r.layers == [n - 2 - j for j in range(7)]
    W = read_head(smollm2_path)
    # the CPU kernel multiplies Q8_0 weights by the activation quantized to Q8_0: do the same in numpy
    hq = gguf.quants.dequantize(gguf.quants.quantize(r.hidden, gguf.GGMLQuantizationType.Q8_0),
                                gguf.GGMLQuantizationType.Q8_0).reshape(r.hidden.shape)
    assert _rel_err(r.logits, hq.astype(np.float64) @ W.T) < 1e-4
    # and f(W . h) in full precision within the activation quantization error
    assert _rel_err(r.logits, r.hidden.astype(np.float64) @ W.T) < 2e-2
    # raw residual states of SmolLM2 are large (docs/led.md: |h| about 700)
    assert np.linalg.norm(r.hidden, axis=1).mean() > 100


def test_gemma3_head_and_final_norm_are_read_off_its_graph(gemma3_path):
    """gemma3's builder (scaled embeddings, its own norms) through the same generic post-pass."""
    with Llama(gemma3_path, n_threads=1) as llm:
        n = llm.n_layer()
        last = llm.latents(PROMPT, layers=[n - 1], norm=True)
        r = llm.latents(PROMPT)
    np.testing.assert_array_equal(last.logits[0], last.final_logits)
    assert r.layers == [n - 2 - j for j in range(7)]
    W = read_head(gemma3_path)
    hq = gguf.quants.dequantize(gguf.quants.quantize(r.hidden, gguf.GGMLQuantizationType.Q8_0),
                                gguf.GGMLQuantizationType.Q8_0).reshape(r.hidden.shape)
    assert _rel_err(r.logits, hq.astype(np.float64) @ W.T) < 1e-4


def test_rows_of_parallel_sequences_are_their_own(tiny_path):
    """Each sequence in a batch gets the latents of its own row."""
    prompts = ["the cat", "a dog ran far away", "on the mat"]
    with Llama(tiny_path, n_threads=1, n_seq_max=4) as llm:
        alone = [llm.latents(p, layers=[2, 0]) for p in prompts]
        llm.engine.set_latents([2, 0], True, False)
        llm.reset()
        entries = []
        for seq, p in enumerate(prompts):
            toks = llm.tokenize(p)
            entries += [(t, i, seq, i == len(toks) - 1) for i, t in enumerate(toks)]
        rows = llm.engine.decode(entries)
        from led_local._native import ffi
        for seq, row in enumerate(rows):
            ptr = llm.engine.lib.llama_get_latent_logits_ith(llm.engine.ctx, row)
            got = np.frombuffer(ffi.buffer(ptr, 4 * 2 * llm.n_vocab()), np.float32).reshape(2, -1)
            np.testing.assert_allclose(got, alone[seq].logits, rtol=1e-4, atol=1e-4)
        llm.engine.set_latents((), False, False)


def test_readout_off_hands_out_nothing(tiny_path):
    from led_local._native import ffi
    with Llama(tiny_path, n_threads=1) as llm:
        llm.latents("the cat")  # on, then off again
        toks = llm.tokenize("the cat")
        llm.reset()
        llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
        assert llm.engine.lib.llama_n_latents(llm.engine.ctx) == 0
        assert llm.engine.lib.llama_get_latent_states_ith(llm.engine.ctx, -1) == ffi.NULL


def test_set_latents_between_a_decode_and_a_getter_leaves_no_stale_rows(tiny_path):
    """Rows saved under 2 blocks have another stride than 3 blocks' rows: after the change a getter finds
    none (the next decode fills them), never the old rows read with the new stride."""
    from led_local._native import ffi
    with Llama(tiny_path, n_threads=1) as llm:
        toks = llm.tokenize("the cat")
        llm.reset()
        llm.engine.set_latents([1, 2], with_logits=False, norm=False)
        llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
        assert llm.engine.lib.llama_get_latent_states_ith(llm.engine.ctx, -1) != ffi.NULL
        llm.engine.set_latents([0, 1, 2], with_logits=False, norm=False)
        assert llm.engine.lib.llama_get_latent_states_ith(llm.engine.ctx, -1) == ffi.NULL
        assert llm.engine.lib.llama_get_latent_logits_ith(llm.engine.ctx, -1) == ffi.NULL
        llm.engine.decode([(llm.token_eos(), len(toks), 0, True)])
        assert llm.engine.lib.llama_get_latent_states_ith(llm.engine.ctx, -1) != ffi.NULL  # the next decode's rows


def test_latents_leave_final_logits_unchanged(tiny_path):
    with Llama(tiny_path, n_threads=1) as llm:
        toks = llm.tokenize(PROMPT)
        llm.reset()
        llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
        plain = llm.engine.logits(-1)
        r = llm.latents(toks)
    np.testing.assert_array_equal(plain, r.final_logits)


def test_invalid_layers(tiny_path):
    with Llama(tiny_path, n_threads=1) as llm:
        with pytest.raises(ValueError, match="layer index"):
            llm.latents("x", layers=[4])
        with pytest.raises(ValueError, match="layer index"):
            llm.latents("x", layers=[-2])
        with pytest.raises(ValueError, match="at least one"):
            llm.latents("x", layers=[])
        with pytest.raises(TypeError):
            llm.latents("x", layers=["1"])


@pytest.mark.parametrize("norm", [False, True])
def test_head_on_demand_equals_head_in_graph(tiny_paths, smollm2_path, norm):
    """With the head off in the graph, the getter runs it over the saved states for that row only."""
    from led_local._native import ffi
    for path in (tiny_paths["llama-untied"], tiny_paths["qwen2-untied-think"], smollm2_path):
        with Llama(path, n_threads=1, n_seq_max=2) as llm:
            layers = llm.default_latent_layers(min(8, llm.n_layer()))
            in_graph = llm.latents(PROMPT, layers=layers, norm=norm)
            llm.engine.set_latents(layers, False, norm)
            llm.reset()
            toks = in_graph.tokens
            llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
            ptr = llm.engine.lib.llama_get_latent_logits_ith(llm.engine.ctx, -1)
            assert ptr != ffi.NULL
            lazy = np.frombuffer(ffi.buffer(ptr, 4 * len(layers) * llm.n_vocab()), np.float32).reshape(len(layers), -1)
            np.testing.assert_allclose(lazy, in_graph.logits, rtol=1e-5, atol=1e-5 * np.abs(in_graph.logits).max())
            llm.engine.set_latents((), False, False)


def test_latent_rows_are_bounded_by_n_seq_max(tiny_path):
    """The context reserves n_seq_max output rows (one per parallel sequence), which bounds the latent
    buffers at n_vocab x n_latent x n_seq_max: a decode asking for more outputs is refused with a clear error
    (llama.cpp itself would abort), and within the bound every row has its own, right latents."""
    from led_local._native import ffi
    with Llama(tiny_path, n_threads=1, n_seq_max=2) as llm:
        toks = llm.tokenize(PROMPT)
        ref = [llm.latents(toks[: n], layers=[2, 0]) for n in (len(toks) - 1, len(toks))]
        llm.engine.set_latents([2, 0], True, False)
        try:
            llm.reset()
            with pytest.raises(ValueError, match="at most n_seq_max=2 outputs"):
                llm.engine.decode([(t, i, 0, i >= len(toks) - 3) for i, t in enumerate(toks)])  # 3 outputs
            llm.reset()
            rows = llm.engine.decode([(t, i, 0, i >= len(toks) - 2) for i, t in enumerate(toks)])  # 2 outputs
            assert len(rows) == 2
            for row, want in zip(rows, ref):
                ptr = llm.engine.lib.llama_get_latent_logits_ith(llm.engine.ctx, row)
                assert ptr != ffi.NULL
                got = np.frombuffer(ffi.buffer(ptr, 4 * 2 * llm.n_vocab()), np.float32).reshape(2, -1)
                np.testing.assert_allclose(got, want.logits, rtol=1e-4, atol=1e-4)
        finally:
            llm.engine.set_latents((), False, False)
