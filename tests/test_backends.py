"""The patch on other backends than the plain CPU one (issue "The patch holds on every backend").

BLAS: a build with ggml's BLAS backend (OpenBLAS; tests/blas_build.py) offers every backend list a second
host-memory backend that computes only matrix products. The same script runs on both builds: LED with
`latent_norm=True` (the on-demand latent head replays the final norm) on smollm2, and a readout with the
norm and the head on gemma3 (which scales its embeddings), must neither abort nor differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from blas_build import ensure_blas_build

SCRIPT = r'''
import json, sys
import numpy as np
from led_local import Llama, devices
from led_local.devices import gpu_offload_supported
smol, gemma = sys.argv[1], sys.argv[2]
out = {"devices": [[d.name, d.kind] for d in devices()], "gpu_offload": gpu_offload_supported(),
       "cpu_memory": next(d.memory_total for d in devices() if d.kind == "cpu")}
with Llama(smol, n_ctx=512, n_seq_max=2, n_threads=1) as llm:
    # a short prompt: under ggml-blas's 32-row threshold, so every matmul is the CPU backend's and the
    # builds must agree bit for bit; LED explores on most steps here (T=1.5), running the on-demand head
    r = llm.create_completion("The cat", max_tokens=24, temperature=1.5, seed=3, sampler="led",
                              led={"latent_norm": True}, trace=True)
    out["led_tokens"] = [t["token"] for t in r["choices"][0]["led_trace"]["steps"]]
    out["explored"] = r["choices"][0]["led_trace"]["explored"]
    # a long prompt: its matmuls go to BLAS
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
    r = llm.create_completion(long, max_tokens=8, temperature=1.0, seed=5, sampler="led", led={"latent_norm": True})
    out["long_text"] = r["choices"][0]["text"]
with Llama(gemma, n_ctx=512, n_seq_max=1, n_threads=1) as llm:
    lat = llm.latents("The capital of France is", layers=[10, 14], norm=True)
    out["gemma_logits"] = np.asarray(lat.logits[:, :20000], dtype=np.float64).round(4).tolist()
    r = llm.create_completion("The capital of France is", max_tokens=12, temperature=1.5, seed=1, sampler="led",
                              led={"latent_norm": True}, trace=True)
    out["gemma_led_tokens"] = [t["token"] for t in r["choices"][0]["led_trace"]["steps"]]
print(json.dumps(out))
'''


def _run(smol, gemma, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(smol), str(gemma)], capture_output=True, text=True,
                       timeout=900, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def blas_lib():
    return ensure_blas_build()


def test_latents_and_led_on_a_blas_build_run_and_agree_with_the_plain_build(blas_lib, smollm2_path, gemma3_path):
    plain = _run(smollm2_path, gemma3_path)
    blas = _run(smollm2_path, gemma3_path, {"LED_LOCAL_LIB_DIR": str(blas_lib),
                                            "LD_LIBRARY_PATH": f"{blas_lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"})
    # what each build registered (led_local.devices): the CPU (with its memory), and BLAS as an accelerator
    assert plain["devices"] == [["CPU", "cpu"]] and blas["devices"] == [["BLAS", "accel"], ["CPU", "cpu"]]
    assert not plain["gpu_offload"] and not blas["gpu_offload"] and plain["cpu_memory"] > 2**28
    assert plain["explored"] > 0  # the on-demand head ran
    assert blas["led_tokens"] == plain["led_tokens"]
    assert blas["long_text"]  # (BLAS's f32 products differ in the last bits from the quantized CPU ones)
    np.testing.assert_allclose(blas["gemma_logits"], plain["gemma_logits"], atol=2e-3)
    assert blas["gemma_led_tokens"] == plain["gemma_led_tokens"]
