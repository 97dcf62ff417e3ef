"""A BLAS variant of led-local's native libraries, built once and cached like the upstream reference: ggml's
BLAS backend over OpenBLAS from Debian's packages (fetched with `apt-get download` and unpacked, nothing
installed), the kind of build a Mac gets by default with Accelerate. Used by tests/test_backends.py.

Cache: $LED_LOCAL_CACHE/blas-<key> (default ~/.cache/led-local), keyed by our C sources, patches and CMake.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from upstream_build import cache_root, cpu_flags

REPO = Path(__file__).resolve().parent.parent
DEBS = ("libopenblas0-pthread", "libopenblas-pthread-dev", "libgfortran5")
# what led_engine needs at run time, and the BLAS backend
LIBS = ("libled_engine.so", "libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so", "libggml-blas.so",
        "libggml-rpc.so")


def _key() -> str:
    h = hashlib.sha256(" ".join([*DEBS, *cpu_flags()]).encode())
    for path in sorted([*REPO.glob("csrc/**/*"), REPO / "CMakeLists.txt"]):
        if path.is_file():
            h.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:12]


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
    home = cache_root() / f"blas-{_key()}"
    lib, done = home / "lib", home / "READY"
    if done.exists():
        return lib
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    root = _openblas(home)
    arch = glob.glob(str(root / "usr/lib/*/openblas-pthread/libopenblas.so"))[0]
    include = glob.glob(str(root / "usr/include/*/openblas-pthread"))[0]
    build = home / "build"
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_BLAS=ON",
                    "-DGGML_BLAS_VENDOR=OpenBLAS", f"-DBLAS_LIBRARIES={arch}", f"-DBLAS_INCLUDE_DIRS={include}",
                    *cpu_flags()], check=True, stdout=subprocess.DEVNULL)
    # led_engine and what it links (not the common library: these tests need no chat templates)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "led_engine",
                    "ggml-blas", "ggml-rpc"], check=True, stdout=subprocess.DEVNULL)
    lib.mkdir()
    for name in LIBS:
        (found,) = [p for p in build.rglob(name) if p.is_file()]
        shutil.copy2(found, lib / name)
    for pattern in ("usr/lib/*/openblas-pthread/libopenblas.so.0", "usr/lib/*/libgfortran.so.5"):
        shutil.copy2(glob.glob(str(root / pattern))[0], lib)
    shutil.rmtree(build)
    done.write_text("ok\n")
    return lib
