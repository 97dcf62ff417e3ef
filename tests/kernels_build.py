"""A variant of led-local's native libraries with other CPU kernels: x86-64-v2 (SSE4.2; no AVX, AVX2 or
AVX-512), built once and cached like the BLAS variant. The tests that assert on generated tokens run once
more against it (tests/test_kernels.py): AVX2 and AVX-512 machines pick other tokens than each other, and a
test that holds only for the tokens this machine's kernels pick fails on a user's machine. This build's
kernels differ from both, so it catches that class of test on any one machine.

Cache: $LED_LOCAL_CACHE/kernels-<key> (default ~/.cache/led-local), keyed by our C sources, patches, CMake.
"""

from __future__ import annotations

import platform
from pathlib import Path

from variant_build import cached_variant, source_key

FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF",
         "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF")
LIBS = ("libled_engine.so", "libled_common.so", "libllama.so", "libllama-common.so", "libggml.so",
        "libggml-base.so", "libggml-cpu.so", "libggml-rpc.so")


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and platform.system() == "Linux"


def ensure_kernels_build() -> Path:
    """The folder holding the x86-64-v2 build's libraries, for LED_LOCAL_LIB_DIR."""
    return cached_variant("kernels", source_key(*FLAGS), lambda home: list(FLAGS),
                          ("led_engine", "led_common", "ggml-rpc"), LIBS)
