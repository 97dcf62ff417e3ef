"""Variants of led-local's native libraries built from this checkout with other CMake switches (BLAS, other
CPU kernels), each once and cached like the upstream reference: $LED_LOCAL_CACHE/<name>-<key> (default
~/.cache/led-local), keyed by the switches and our C sources, patches and CMake files."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from upstream_build import cache_root

REPO = Path(__file__).resolve().parent.parent


def source_key(*switches: str) -> str:
    h = hashlib.sha256(" ".join(switches).encode())
    for path in sorted([*REPO.glob("csrc/**/*"), REPO / "CMakeLists.txt"]):
        if path.is_file():
            h.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:12]


def cached_variant(name: str, key: str, configure: Callable[[Path], list[str]], targets: tuple[str, ...],
                   libs: tuple[str, ...], extra: Callable[[Path, Path], None] | None = None) -> Path:
    """The lib folder of the variant (for LED_LOCAL_LIB_DIR), built on first use. `configure(home)` gives the
    CMake switches (it may fetch what they point at into home); `extra(home, lib)` adds files to lib."""
    home = cache_root() / f"{name}-{key}"
    lib, done = home / "lib", home / "READY"
    if done.exists():
        return lib
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    build = home / "build"
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *configure(home)],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *targets],
                   check=True, stdout=subprocess.DEVNULL)
    lib.mkdir()
    for name_ in libs:
        (found,) = [p for p in build.rglob(name_) if p.is_file()]
        shutil.copy2(found, lib / name_)
    if extra is not None:
        extra(home, lib)
    shutil.rmtree(build)
    done.write_text("ok\n")
    return lib
