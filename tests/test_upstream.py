"""With latents off, our build generates exactly what upstream llama-cpp-python on unpatched llama.cpp does.

The reference runs in a subprocess (llama-cpp-python binds its library at import time). llama.cpp's own
default turns flash attention on where supported (auto) and led-local keeps that default, while
llama-cpp-python turns it off by default; the reference is asked for flash_attn=True so that both run the
same kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from led_local import Llama

pytestmark = pytest.mark.upstream

REFERENCE = r"""
import json, sys
import llama_cpp
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=512, n_threads=1, n_batch=512, verbose=False, flash_attn=True)
tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
out = []
for t in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
    if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t) or len(out) >= n:
        break
    out.append(t)
print(json.dumps({"prompt": tokens, "tokens": out}))
"""


def upstream_greedy(upstream, path, prompt: str, n: int) -> dict:
    py_dir, lib_dir = upstream
    env = {**os.environ, "PYTHONPATH": str(py_dir), "LLAMA_CPP_LIB_PATH": str(lib_dir),
           "LD_LIBRARY_PATH": str(lib_dir), "DYLD_LIBRARY_PATH": str(lib_dir)}
    r = subprocess.run([sys.executable, "-c", REFERENCE, str(path), prompt, str(n)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def ours_greedy(path, prompt: str, n: int) -> dict:
    with Llama(path, n_ctx=512, n_threads=1) as llm:
        tokens = llm.tokenize(prompt, add_bos=True, special=True)
        got: list[int] = []
        # the token loop of generate.py, recorded token by token
        from led_local.generate import stream_deltas
        from led_local.sampling import StandardSampling

        spec = StandardSampling(temperature=0.0)
        orig = llm.token_to_bytes

        def record(token, special=False):
            got.append(token)
            return orig(token, special)

        llm.token_to_bytes = record
        for _ in stream_deltas(llm, tokens, n=1, max_tokens=n, spec=spec, seed=0, stop=[], usage={}):
            pass
        return {"prompt": tokens, "tokens": got}


@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):"])
def test_greedy_identical_to_upstream_smollm2(upstream, smollm2_path, prompt):
    ref = upstream_greedy(upstream, smollm2_path, prompt, 48)
    ours = ours_greedy(smollm2_path, prompt, 48)
    assert ours["prompt"] == ref["prompt"]
    assert len(ref["tokens"]) >= 10
    assert ours["tokens"] == ref["tokens"]


@pytest.mark.parametrize("name", ["llama-untied", "qwen2-untied-think"])
def test_greedy_identical_to_upstream_tiny(upstream, tiny_paths, name):
    ref = upstream_greedy(upstream, tiny_paths[name], "the cat sat", 32)
    ours = ours_greedy(tiny_paths[name], "the cat sat", 32)
    assert ours == ref
