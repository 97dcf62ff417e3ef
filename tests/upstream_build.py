"""Builds the unpatched upstream reference once and caches it: llama.cpp from the same pinned sdist, with
the same CPU flags as our build, and llama-cpp-python's own Python bindings (installed without their
native build) pointed at it through LLAMA_CPP_LIB_PATH.

Cache: $LED_LOCAL_CACHE/upstream-<key> (default ~/.cache/led-local). Used only by tests and bench/.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"


def cache_root() -> Path:
    root = os.environ.get("LED_LOCAL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "led-local"


def cpu_flags() -> list[str]:
    """The CPU flags of our CMakeLists.txt's default, so both builds run the same kernels: this machine's CPU
    (native), less ggml's AMX kernels on x86-64 (they crash at the pinned llama.cpp; our CMakeLists.txt
    leaves them out of ggml-cpu, here every target, which holds no other AMX code)."""
    flags = ["-DGGML_NATIVE=ON"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        flags += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return flags


def pinned_sdist() -> Path:
    """The pinned llama-cpp-python sdist (vendor/llama.cpp is our llama.cpp), fetched once into the cache."""
    path = cache_root() / "sources" / SDIST
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
                        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={VERSION}", "-d", str(path.parent)],
                       check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {SDIST_SHA256}; delete it")
    return path


def ensure_upstream() -> tuple[Path, Path]:
    """(directory to put on PYTHONPATH, directory holding libllama) of the reference build."""
    flags = cpu_flags()
    rpath = "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON"  # the libraries find each other after being copied
    key = hashlib.sha256(" ".join([SDIST_SHA256, rpath, *flags]).encode()).hexdigest()[:12]
    home = cache_root() / f"upstream-{key}"
    py_dir, lib_dir, done = home / "py", home / "lib", home / "READY"
    if done.exists():
        return py_dir, lib_dir

    sdist = pinned_sdist()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / f"llama_cpp_python-{VERSION}"
        build = Path(tmp) / "build"
        off = [f"-D{o}=OFF" for o in ("LLAMA_BUILD_COMMON", "LLAMA_BUILD_TESTS", "LLAMA_BUILD_TOOLS",
                                      "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_SERVER", "LLAMA_BUILD_APP", "LLAMA_OPENSSL")]
        (src / "vendor" / "llama.cpp" / ".git").unlink(missing_ok=True)
        subprocess.run(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        "-DBUILD_SHARED_LIBS=ON", rpath, *off, *flags], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "llama"],
                       check=True, stdout=subprocess.DEVNULL)
        lib_dir.mkdir()
        for f in (build / "bin").iterdir():
            if f.suffix in (".so", ".dylib", ".dll") or ".so." in f.name:
                shutil.copy2(f, lib_dir / f.name, follow_symlinks=True)
        # llama-cpp-python's Python package alone: LLAMA_BUILD/LLAVA_BUILD off means no native compile
        env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(py_dir), str(src)], check=True, env=env)
    done.write_text("ok\n")
    return py_dir, lib_dir


def upstream_env(upstream: tuple[Path, Path]) -> dict[str, str]:
    """The environment a subprocess needs to import llama-cpp-python's bindings of the reference build."""
    py_dir, lib_dir = upstream
    return {"PYTHONPATH": str(py_dir), "LLAMA_CPP_LIB_PATH": str(lib_dir), "LD_LIBRARY_PATH": str(lib_dir),
            "DYLD_LIBRARY_PATH": str(lib_dir)}


def ensure_llama_server() -> Path:
    """Unpatched `llama-server` from the same pinned source and CPU flags (built once, cached): the reference
    of bench/bench_serving.py."""
    flags = cpu_flags()
    key = hashlib.sha256(" ".join([SDIST_SHA256, "server", *flags]).encode()).hexdigest()[:12]
    home = cache_root() / f"llama-server-{key}"
    binary, done = home / "bin" / "llama-server", home / "READY"
    if done.exists():
        return binary
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        with tarfile.open(pinned_sdist()) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
        (src / ".git").unlink(missing_ok=True)
        build = Path(tmp) / "build"
        opts = ["-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"]
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *opts, *flags],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "llama-server"],
                       check=True, stdout=subprocess.DEVNULL)
        binary.parent.mkdir()
        shutil.copy2(build / "bin" / "llama-server", binary)
    done.write_text("ok\n")
    return binary
