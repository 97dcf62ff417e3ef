"""Generation through the Llama object: OpenAI shapes, streaming, stops, and parallel samples."""

from __future__ import annotations

import numpy as np
import pytest

from led_local import Llama


@pytest.fixture(scope="module")
def tiny(tiny_paths):
    with Llama(tiny_paths["qwen2-untied-think"], n_threads=1, n_seq_max=8, n_ctx=2048) as llm:
        yield llm


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with Llama(smollm2_path, n_threads=1, n_seq_max=8, n_ctx=2048) as llm:
        yield llm


def texts(result):
    return [c["text"] for c in result["choices"]]


def test_completion_shape_and_usage(tiny):
    r = tiny.create_completion("the cat", max_tokens=12, temperature=0)
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    (c,) = r["choices"]
    assert c["index"] == 0 and c["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["prompt_tokens"] == len(tiny.tokenize("the cat", special=True))
    assert 0 < u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_greedy_is_deterministic(smol):
    a = smol.create_completion("The capital of France is", max_tokens=16, temperature=0)
    b = smol.create_completion("The capital of France is", max_tokens=16, temperature=0, seed=123)
    assert texts(a) == texts(b) and "Paris" in texts(a)[0]


def test_streaming_equals_plain(smol):
    kw = dict(max_tokens=20, temperature=0.9, seed=7)
    plain = smol.create_completion("Once upon a time", **kw)
    chunks = list(smol.create_completion("Once upon a time", stream=True, **kw))
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert chunks[-1]["choices"] == [] and all(chunks[-1]["usage"][k] == plain["usage"][k] for k in counts)
    # the second call found the prompt cached (all but its last token, which is evaluated again for its row)
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == plain["usage"]["prompt_tokens"] - 1
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == texts(plain)[0]
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


def test_parallel_samples_reproducible_and_independent(smol):
    kw = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = smol.create_completion("My favourite animal is", n=4, seed=11, **kw)
    b = smol.create_completion("My favourite animal is", n=4, seed=11, **kw)
    assert texts(a) == texts(b)
    assert len(set(texts(a))) == 4  # independent draws, not one sample copied
    assert [c["index"] for c in a["choices"]] == [0, 1, 2, 3]
    assert 4 <= a["usage"]["completion_tokens"] <= 4 * 24


def test_parallel_equals_one_by_one(smol):
    kw = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    together = texts(smol.create_completion("My favourite animal is", n=4, seed=11, **kw))
    alone = [texts(smol.create_completion("My favourite animal is", n=1, seed=11 + i, **kw))[0] for i in range(4)]
    assert together == alone


def test_parallel_chat_equals_one_by_one_when_samples_end_at_different_steps(smol):
    # Which samples end early depends on the CPU's kernels (AVX2 and AVX-512 builds pick other tokens), so
    # the premise is found on this machine: seed blocks are tried until some samples end early and the others
    # run on; every block tried must already satisfy the property.
    msgs = [{"role": "user", "content": "Name one colour."}]
    kw = dict(max_tokens=40, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    for base in range(5, 5 + 6 * 8, 6):
        together = smol.create_chat_completion(msgs, n=6, seed=base, **kw)
        alone = [smol.create_chat_completion(msgs, n=1, seed=base + i, **kw)["choices"][0] for i in range(6)]
        assert [c["message"] for c in together["choices"]] == [c["message"] for c in alone]
        assert [c["finish_reason"] for c in together["choices"]] == [c["finish_reason"] for c in alone]
        early = sum(c["finish_reason"] == "stop" for c in alone)
        if 2 <= early < 6 and len({len(c["message"]["content"]) for c in alone}) > 1:
            return
    pytest.fail("no block of 6 seeds had samples ending at different steps: the premise was never met")


def test_parallel_streaming(smol):
    kw = dict(max_tokens=10, temperature=1.0, seed=3, n=3)
    plain = texts(smol.create_completion("Hello", **kw))
    got = ["", "", ""]
    for chunk in smol.create_completion("Hello", stream=True, **kw):
        for c in chunk["choices"]:
            got[c["index"]] += c["text"]
    assert got == plain


def test_stop_strings(smol):
    full = texts(smol.create_completion("Count: 1, 2, 3,", max_tokens=20, temperature=0))[0]
    assert " 5" in full
    r = smol.create_completion("Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=[" 5", "zzz"])
    assert r["choices"][0]["text"] == full[: full.index(" 5")]
    assert r["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["text"] for c in
                       smol.create_completion("Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=" 5", stream=True)
                       if c["choices"])
    assert streamed == r["choices"][0]["text"]


def test_max_tokens_length(tiny_paths):
    with Llama(tiny_paths["qwen2-no-eos"], n_threads=1, n_seq_max=3) as llm:  # never ends on its own
        r = llm.create_completion("the", max_tokens=5, temperature=1.0, seed=1, n=3, trace=True)
    for c in r["choices"]:
        assert c["finish_reason"] == "length" and len(c["led_trace"]["steps"]) == 5
    assert r["usage"]["completion_tokens"] == 15


def test_context_fills_up_cleanly(tiny_paths):
    with Llama(tiny_paths["llama-tied"], n_threads=1, n_ctx=32, n_seq_max=2) as llm:
        r = llm.create_completion("the cat", max_tokens=None, temperature=1.0, seed=0, n=2,
                                  top_k=0, top_p=1.0, min_p=0.0)
        assert r["usage"]["total_tokens"] <= 32 + 2
        assert all(c["finish_reason"] in ("length", "stop") for c in r["choices"])


def test_chat_completion(smol):
    msgs = [{"role": "user", "content": "What is 2+3? Reply with the number."}]
    r = smol.create_chat_completion(msgs, max_tokens=30, temperature=0)
    assert r["object"] == "chat.completion"
    m = r["choices"][0]["message"]
    assert m["role"] == "assistant" and "5" in m["content"]
    assert r["choices"][0]["finish_reason"] == "stop"  # the template's end-of-turn token ends it
    chunks = list(smol.create_chat_completion(msgs, max_tokens=30, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == m["content"]


def test_chat_template_of_tiny_model(tiny):
    from led_local.generate import chat_prompt_tokens
    toks = chat_prompt_tokens(tiny, [{"role": "user", "content": "hi"}])
    text = tiny.detokenize(toks, special=True).decode()
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenize_roundtrip(smol):
    text = "Grüße, 世界! 12+30=42"
    toks = smol.tokenize(text, add_bos=False)
    assert smol.detokenize(toks).decode() == text


def test_utf8_split_across_tokens_streams_whole_characters(tiny):
    """Byte-level vocabulary: a multi-byte character arrives one byte per token. The streamed deltas decode
    the bytes as one stream (a character split across tokens comes out whole), exactly as the whole output
    decodes at once."""
    found = 0
    for seed in range(40):
        kw = dict(max_tokens=40, temperature=1.5, seed=seed, top_k=0, top_p=1.0, min_p=0.0)
        chunks = [c["choices"][0]["text"] for c in tiny.create_completion("é", stream=True, trace=True, **kw)
                  if c["choices"]]
        tokens = [t["token"] for t in tiny.create_completion("é", trace=True, **kw)["choices"][0]["led_trace"]["steps"]]
        data = b"".join(tiny.token_to_bytes(t) for t in tokens if not tiny.is_eog(t))
        assert "".join(chunks) == data.decode("utf-8", errors="replace")
        # a valid multi-byte character whose bytes came from different tokens
        text = data.decode("utf-8", errors="replace")
        found += any(ord(ch) > 127 and ch != "\ufffd" for ch in text) and any(
            len(tiny.token_to_bytes(t)) == 1 and tiny.token_to_bytes(t)[0] >= 0xC2 for t in tokens)
    assert found >= 1  # the case the test is named after really happened


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))


def test_logprobs_are_the_log_softmax_of_the_final_logits(smollm2_path):
    """Standard (and DoLa) sampling: each token's logprob and alternatives are a numpy log-softmax of the
    raw final logits at that step, without llama-cpp-python's logits_all."""
    from led_local import Llama

    with Llama(smollm2_path, n_threads=1, n_seq_max=2) as llm:
        prompt = llm.tokenize("The capital of France is")
        for sampler in ("standard", "dola"):
            out = llm.create_completion(prompt, max_tokens=5, temperature=0.8, seed=3, logprobs=3, sampler=sampler)
            lp = out["choices"][0]["logprobs"]
            tokens = llm.tokenize(out["choices"][0]["text"], add_bos=False)
            assert "".join(lp["tokens"]) == out["choices"][0]["text"] and len(lp["tokens"]) == 5
            for i, token in enumerate(tokens[:3]):
                ref = _log_softmax(llm.latents(prompt + tokens[:i], layers=[0]).final_logits)
                assert lp["token_logprobs"][i] == pytest.approx(ref[token], abs=1e-4)
                best = np.argsort(-ref)[:3]
                assert list(lp["top_logprobs"][i].values()) == pytest.approx(list(ref[best]), abs=1e-4)


def test_led_logprobs_are_those_of_the_distribution_drawn_from(smollm2_path):
    """LED: the log of the branch's distribution over the candidates (trace: probs), for the token and its
    alternatives."""
    from led_local import Llama

    with Llama(smollm2_path, n_threads=1, n_seq_max=2) as llm:
        out = llm.create_chat_completion([{"role": "user", "content": "Name a fruit."}], max_tokens=8, seed=2,
                                         temperature=0.8, sampler="led", trace=True, logprobs=True, top_logprobs=4)
        c = out["choices"][0]
        for step, item in zip(c["led_trace"]["steps"], c["logprobs"]["content"]):
            probs = dict(zip(step["candidates"], step["probs"]))
            assert item["logprob"] == pytest.approx(np.log(probs[step["token"]]), abs=1e-6)
            best = sorted(probs.values(), reverse=True)[:4]
            assert [t["logprob"] for t in item["top_logprobs"]] == pytest.approx(list(np.log(best)), abs=1e-6)


@pytest.mark.parametrize("kwargs", [dict(logprobs=21), dict(logprobs=-1), dict(logprobs=True)])
def test_bad_logprobs_are_refused(smollm2_path, kwargs):
    from led_local import Llama

    with Llama(smollm2_path, n_threads=1, n_seq_max=1, n_ctx=512) as llm:
        with pytest.raises(ValueError, match="logprobs"):
            llm.create_completion("hi", max_tokens=1, **kwargs)
        with pytest.raises(ValueError, match="logprobs"):
            llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=1, top_logprobs=2)


def test_flash_attn_switch_reaches_the_context(smollm2_path):
    """llama-cpp-python's flash_attn keyword: off and on run other kernels (the logits move in the last
    digits); None is llama.cpp's auto, which on the CPU is on."""
    from led_local import Llama

    logits = {}
    for fa in (None, True, False):
        with Llama(smollm2_path, n_threads=1, n_seq_max=1, n_ctx=512, flash_attn=fa) as llm:
            logits[fa] = llm.latents(llm.tokenize("The capital of France is"), layers=[0]).final_logits
    assert np.array_equal(logits[None], logits[True])
    assert not np.array_equal(logits[True], logits[False])
    with pytest.raises(ValueError, match="flash_attn"):
        Llama(smollm2_path, flash_attn="yes")


def test_llama_cpp_python_accessors_and_from_pretrained(smollm2_path):
    from led_local import Llama

    with Llama(smollm2_path, n_threads=1, n_seq_max=2, n_ctx=1024) as llm:
        assert llm.n_ctx() == 1024 and llm.n_ctx_seq == 1024  # one pool: a request may use it all
        assert llm.token_to_bytes(llm.token_nl()) == b"\n"
        llm.set_seed(42)
        a = llm.create_completion("Once", max_tokens=8, temperature=1.0)["choices"][0]["text"]
        b = llm.create_completion("Once", max_tokens=8, temperature=1.0, seed=42)["choices"][0]["text"]
        assert a == b
        echoed = llm.create_completion("Once", max_tokens=4, temperature=0, echo=True)["choices"][0]["text"]
        assert echoed == "Once" + llm.create_completion("Once", max_tokens=4, temperature=0)["choices"][0]["text"]
        with pytest.raises(ValueError, match="echo with logprobs"):
            llm.create_completion("Once", max_tokens=2, echo=True, logprobs=1)
    with pytest.raises(RuntimeError, match="registry model"):
        Llama.from_pretrained("no-such/repo-GGUF", "*.gguf")


def test_suffix_fills_in_the_middle(tiny_paths):
    """`suffix`: the model's FIM prompt (prefix token, prompt, suffix token, suffix, middle token), as a
    hand-built token prompt gives; a model without FIM tokens says so."""
    from led_local import Llama

    with Llama(tiny_paths["qwen2-fim"], n_threads=1, n_seq_max=1, n_ctx=512) as llm:
        pre, suf, mid = llm.fim_tokens()
        by_hand = [pre] + llm.tokenize("def add(a, b):", add_bos=False) + [suf] + \
            llm.tokenize("    return c", add_bos=False) + [mid]
        want = llm.create_completion(by_hand, max_tokens=12, temperature=0)
        got = llm.create_completion("def add(a, b):", suffix="    return c", max_tokens=12, temperature=0)
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
        assert got["usage"]["prompt_tokens"] == len(by_hand)
    with Llama(tiny_paths["llama-tied"], n_threads=1, n_seq_max=1, n_ctx=512) as llm:
        assert llm.fim_tokens() is None
        with pytest.raises(ValueError, match="FIM tokens"):
            llm.create_completion("x", suffix="y", max_tokens=2)
