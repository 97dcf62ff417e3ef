"""A variant of led-local's native libraries built with AddressSanitizer and UndefinedBehaviorSanitizer: ggml,
llama.cpp (its grammar parser and grammar sampler) and our led_engine (the sampler chains), built once and
cached like the BLAS variant; beside them llama.cpp's JSON-schema-to-grammar converter (common/
json-schema-to-grammar.cpp and the JSON it reads), compiled alone with the same sanitizers into a library
that is preloaded, so it takes the place of the uninstrumented converter in the product's common library.
(The whole common library under ASan takes about an hour to compile on a 2-core machine; the converter alone
a minute.) Used by tests/test_fuzz.py.

Cache: $LED_LOCAL_CACHE/asan-<key> (default ~/.cache/led-local), keyed by the switches and our C sources,
patches and CMake files.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from variant_build import cached_variant, source_key

SANITIZE = "-fsanitize=address,undefined -fno-omit-frame-pointer"
# ggml's CPU kernels for a portable x86-64 (no -march=native: the point is the parsers and samplers, not the
# kernels, and this keeps the build the same on every CI machine)
FLAGS = (f"-DCMAKE_C_FLAGS={SANITIZE}", f"-DCMAKE_CXX_FLAGS={SANITIZE}",
         "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined", "-DGGML_NATIVE=OFF", "-DGGML_RPC=OFF",
         "-DGGML_OPENMP=OFF")
LIBS = ("libled_engine.so", "libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so")
CONVERTER = "libled_schema_asan.so"
CONVERTER_SOURCES = ("common/json-schema-to-grammar.cpp", "common/json-schema.cpp", "common/json.cpp")
# what the product's common library needs beside the variant's (it links libllama.so by name)
PRODUCT_LIBS = ("libled_common.so", "libllama-common.so")


def _compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


def runtimes() -> list[str] | None:
    """The sanitizers' runtime libraries of the compiler that builds the variant, for LD_PRELOAD (an
    uninstrumented Python must load them before anything else); None where the compiler has none."""
    cxx = _compiler()
    if cxx is None:
        return None
    found = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not path or not Path(path).is_absolute() or not Path(path).exists():
            return None
        found.append(str(Path(path).resolve()))
    return found


def supported() -> bool:
    return platform.system() == "Linux" and shutil.which("cmake") is not None and runtimes() is not None


def _converter(home: Path, lib: Path) -> None:
    source = home / "build" / "llama.cpp-patched"  # the pinned, patched source the variant was built from
    subprocess.run([_compiler(), "-std=c++17", "-O1", "-g", "-fPIC", "-shared", *SANITIZE.split(),
                    *(f"-I{source / d}" for d in ("common", "include", "vendor", "ggml/include")),
                    *(str(source / f) for f in CONVERTER_SOURCES), "-o", str(lib / CONVERTER)],
                   check=True, capture_output=True)


def ensure_asan_build() -> Path:
    """The folder holding the sanitized libraries and the converter."""
    return cached_variant("asan", source_key(*FLAGS), lambda home: list(FLAGS), ("led_engine",), LIBS, _converter)


def asan_environment(product_lib: Path, into: Path) -> dict[str, str]:
    """A lib folder in `into` (the variant's libraries and the product's common library, which then runs on
    the variant's llama.cpp) and the environment that runs led_local on it under the sanitizers."""
    variant = ensure_asan_build()
    into.mkdir(parents=True, exist_ok=True)
    for name in LIBS + (CONVERTER,):
        shutil.copy2(variant / name, into / name)
    for name in PRODUCT_LIBS:
        shutil.copy2(product_lib / name, into / name)
    # the converter before the common library: its definitions come first in the global scope and take the
    # place of the common library's own; what it calls of the rest of common resolves to the common library
    preload = [*runtimes(), str(into / CONVERTER), str(into / "libllama-common.so")]
    return {"LED_LOCAL_LIB_DIR": str(into), "LD_PRELOAD": ":".join(preload),
            # Python itself is not instrumented and keeps what it allocates: leaks are not what this looks for
            "ASAN_OPTIONS": "detect_leaks=0:exitcode=86",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87"}
