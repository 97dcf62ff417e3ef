"""With latents off, our build generates exactly what upstream llama-cpp-python on unpatched llama.cpp does:
greedy, seeded sampling with each of top-k, top-p, min-p, typical-p, the repetition, frequency and presence
penalties and a GBNF grammar, and the defaults.

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
from led_local.generate import create_completion
from led_local.sampling import StandardSampling
from upstream_build import upstream_env

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


# seeded sampling: llama-cpp-python's own chain (penalties, top-k, typical, top-p, min-p, temperature, dist)
SAMPLED = r"""
import json, sys
import llama_cpp
path, prompt, n, seed, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=512, n_threads=1, n_batch=512, verbose=False, flash_attn=True)
tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
if "grammar" in settings:
    settings["grammar"] = llama_cpp.LlamaGrammar.from_string(settings["grammar"], verbose=False)
llm.set_seed(seed)
out = []
for t in llm.generate(tokens, reset=True, **settings):
    if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t) or len(out) >= n:
        break
    out.append(t)
print(json.dumps({"prompt": tokens, "tokens": out}))
"""

# the documented defaults of create_completion, and what a default seeded call returns
DEFAULTS = r"""
import inspect, json, sys
import llama_cpp
path, prompt, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
sig = inspect.signature(llama_cpp.Llama.create_completion).parameters
names = ["max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty"]
llm = llama_cpp.Llama(path, n_ctx=512, n_threads=1, n_batch=512, verbose=False, flash_attn=True)
text = llm.create_completion(prompt, seed=seed)["choices"][0]["text"]
print(json.dumps({"defaults": {k: sig[k].default for k in names}, "text": text}))
"""


def run_upstream(upstream, script: str, *args) -> dict:
    env = {**os.environ, **upstream_env(upstream)}
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def upstream_greedy(upstream, path, prompt: str, n: int) -> dict:
    return run_upstream(upstream, REFERENCE, path, prompt, n)


def ours_greedy(path, prompt: str, n: int) -> dict:
    return ours_tokens(path, prompt, n, StandardSampling(temperature=0.0), seed=0)


def ours_tokens(path, prompt: str, n: int, spec: StandardSampling, seed: int) -> dict:
    with Llama(path, n_ctx=512, n_threads=1) as llm:
        tokens = llm.tokenize(prompt, add_bos=True, special=True)
        got: list[int] = []
        # the token loop of generate.py, recorded token by token
        from led_local.generate import stream_deltas

        orig = llm.token_to_bytes

        def record(token, special=False):
            got.append(token)
            return orig(token, special)

        llm.token_to_bytes = record
        for _ in stream_deltas(llm, tokens, n=1, max_tokens=n, spec=spec, seed=seed, stop=[], usage={}):
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


UNFILTERED = dict(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


@pytest.mark.parametrize("settings", [
    dict(temp=1.2, top_k=5),
    dict(temp=1.0, top_p=0.6),
    dict(temp=1.0, min_p=0.15),
    dict(temp=0.9, repeat_penalty=1.4),
    dict(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1),
    dict(temp=1.0, frequency_penalty=1.2),
    dict(temp=1.0, presence_penalty=1.5),
    dict(temp=1.0, typical_p=0.4),
    dict(temp=1.0, grammar='root ::= [a-z ]+ "."'),
], ids=["top_k", "top_p", "min_p", "repeat_penalty", "all", "frequency_penalty", "presence_penalty", "typical_p",
        "grammar"])
def test_seeded_sampling_identical_to_upstream(upstream, smollm2_path, settings):
    """Each filter, seeded at T > 0, against llama-cpp-python's own chain: the same tokens. The unfiltered
    draw with the same seed differs, so a filter that were ignored could not pass."""
    s = UNFILTERED | settings
    prompt, seed, n = "Once upon a time, in a small village,", 1234, 40
    ref = run_upstream(upstream, SAMPLED, smollm2_path, prompt, n, seed, json.dumps(s))
    spec = StandardSampling(temperature=s["temp"], top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"],
                            repeat_penalty=s["repeat_penalty"], frequency_penalty=s.get("frequency_penalty", 0.0),
                            presence_penalty=s.get("presence_penalty", 0.0), typical_p=s.get("typical_p", 1.0),
                            grammar=s.get("grammar"))
    ours = ours_tokens(smollm2_path, prompt, n, spec, seed)
    assert ours == ref
    unfiltered = ours_tokens(smollm2_path, prompt, n, StandardSampling(temperature=s["temp"], top_k=0, top_p=1.0,
                                                                       min_p=0.0), seed)
    assert unfiltered["tokens"] != ref["tokens"]


def test_defaults_are_llama_cpp_python_s(upstream, smollm2_path):
    """create_completion's sampling defaults are llama-cpp-python's, and a default seeded call returns the
    same text."""
    import inspect

    ref = run_upstream(upstream, DEFAULTS, smollm2_path, "Once upon a time", 77)
    ours = inspect.signature(create_completion).parameters
    assert {k: ours[k].default for k in ref["defaults"]} == ref["defaults"]
    with Llama(smollm2_path, n_ctx=512, n_threads=1) as llm:
        assert llm.create_completion("Once upon a time", seed=77)["choices"][0]["text"] == ref["text"]
