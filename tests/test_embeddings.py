"""Embeddings (led_local/embedding.py): llama-cpp-python's `embed` / `create_embedding` on an embedding
Llama, mean-pooled for a generative GGUF, equal to upstream's with the same pooling; `/v1/embeddings`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from led_local import Llama
from upstream_build import upstream_env

TEXTS = ["Hello, world!", "The cat sat on the mat.", "Quantized models run on laptops."]

UPSTREAM = r"""
import json, sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_ctx=512,
                      n_threads=1, flash_attn=True, verbose=False)
print(json.dumps(llm.embed(json.loads(sys.argv[2]))))
"""


@pytest.fixture(scope="module")
def emb(smollm2_path):
    with Llama(smollm2_path, n_threads=1, embedding=True, n_ctx=1024) as llm:
        yield llm


@pytest.mark.upstream
def test_mean_pooled_embeddings_equal_llama_cpp_python_s(emb, upstream, smollm2_path):
    env = {**os.environ, **upstream_env(upstream)}
    r = subprocess.run([sys.executable, "-c", UPSTREAM, str(smollm2_path), json.dumps(TEXTS)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    want = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    got = np.array(emb.embed(TEXTS))
    assert got.shape == want.shape == (3, emb.n_embd())
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_create_embedding_shape_and_normalize(emb):
    out = emb.create_embedding(TEXTS)
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1, 2]
    assert out["usage"]["prompt_tokens"] == sum(len(emb.tokenize(t)) for t in TEXTS)
    raw = np.array([d["embedding"] for d in out["data"]])
    unit = np.array(emb.embed(TEXTS, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-9)
    assert len(emb.embed("one string")) == emb.n_embd()  # a string gives one vector, a list a list of them
    assert not np.allclose(raw[0], raw[1])


def test_embedding_errors(emb, smollm2_path):
    with pytest.raises(ValueError, match="embedding=True, which computes embeddings only"):
        emb.create_completion("hi", max_tokens=2)
    with pytest.raises(ValueError, match="truncate=True"):
        emb.embed("word " * 2000, truncate=False)
    assert len(emb.embed("word " * 2000)) == emb.n_embd()  # cut to one batch
    with pytest.raises(TypeError, match="input must be"):
        emb.embed([1, 2])
    with Llama(smollm2_path, n_threads=1, n_seq_max=1, n_ctx=256) as gen:
        with pytest.raises(ValueError, match="embedding=True"):
            gen.embed("hi")
