"""The tests that assert on generated tokens, run once more against a build with other CPU kernels
(tests/kernels_build.py: x86-64-v2, no AVX): a test may only rest on which tokens a model picks after
establishing that premise on the machine it runs on, and this catches the ones that do not, on any one CPU.

The files below are the suite's model-behaviour tests; they run in a child pytest with LED_LOCAL_LIB_DIR
pointing at the variant, so every `Llama` and every `led-local` they start uses its kernels.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels_build import ensure_kernels_build, supported

REPO = Path(__file__).resolve().parent.parent
BEHAVIOUR = ("tests/test_generation.py", "tests/test_scheduler.py", "tests/test_led_generation.py",
             "tests/test_constraints.py", "tests/test_tools.py")


@pytest.mark.slow
@pytest.mark.skipif(not supported(), reason="the x86-64-v2 variant is an x86-64 Linux build")
def test_model_behaviour_tests_pass_with_other_kernels():
    lib = ensure_kernels_build()
    # the premise: the variant's kernels are not this machine's (ggml reports what it was compiled with)
    variant = ctypes.CDLL(str(lib / "libggml-cpu.so"))
    assert variant.ggml_cpu_has_sse3() == 1 and variant.ggml_cpu_has_avx() == 0 and variant.ggml_cpu_has_avx2() == 0
    env = {**os.environ, "LED_LOCAL_LIB_DIR": str(lib), "LED_LOCAL_KERNELS_VARIANT": "x86-64-v2"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BEHAVIOUR], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=3000)
    tail = "\n".join(r.stdout.splitlines()[-40:])
    assert r.returncode == 0, f"with the x86-64-v2 kernels:\n{tail}\n{r.stderr[-2000:]}"
    assert " passed" in r.stdout.splitlines()[-1], tail
