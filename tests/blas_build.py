"""A BLAS variant of led-local's native libraries, built once and cached like the upstream reference: ggml's
BLAS backend over OpenBLAS from Debian's packages (fetched with `apt-get download` and unpacked, nothing
installed), the kind of build a Mac gets by default with Accelerate. Used by tests/test_backends.py.

Cache: $LED_LOCAL_CACHE/blas-<key> (default ~/.cache/led-local), keyed by our C sources, patches and CMake.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

from upstream_build import cpu_flags
from variant_build import cached_variant, source_key

DEBS = ("libopenblas0-pthread", "libopenblas-pthread-dev", "libgfortran5")
# what led_engine needs at run time, and the BLAS backend
LIBS = ("libled_engine.so", "libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "libggml-blas.so",
        "libggml-rpc.so")


def _openblas(home: Path) -> Path:
    """Debian's OpenBLAS (and the Fortran runtime it links) unpacked under home/root."""
    root = home / "root"
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        subprocess.run(["apt-get", "download", *DEBS], cwd=tmp, check=True, capture_output=True)
        for deb in glob.glob(f"{tmp}/*.deb"):
            subprocess.run(["dpkg", "-x", deb, str(root)], check=True)
    return root


def ensure_blas_build() -> Path:
    """The folder holding the BLAS build's libraries, for LED_LOCAL_LIB_DIR (and LD_LIBRARY_PATH: OpenBLAS
    finds its Fortran runtime there)."""
    def configure(home: Path) -> list[str]:
        root = _openblas(home)
        arch = glob.glob(str(root / "usr/lib/*/openblas-pthread/libopenblas.so"))[0]
        include = glob.glob(str(root / "usr/include/*/openblas-pthread"))[0]
        return ["-DGGML_BLAS=ON", "-DGGML_BLAS_VENDOR=OpenBLAS", f"-DBLAS_LIBRARIES={arch}",
                f"-DBLAS_INCLUDE_DIRS={include}", *cpu_flags()]

    def runtime(home: Path, lib: Path) -> None:
        for pattern in ("usr/lib/*/openblas-pthread/libopenblas.so.0", "usr/lib/*/libgfortran.so.5"):
            shutil.copy2(glob.glob(str(home / "root" / pattern))[0], lib)

    # led_engine and what it links (not the common library: these tests need no chat templates)
    return cached_variant("blas", source_key(*DEBS, *cpu_flags()), configure, ("led_engine", "ggml-blas", "ggml-rpc"),
                          LIBS, runtime)
