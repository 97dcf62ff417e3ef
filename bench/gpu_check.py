"""The GPU check (issue "Fast by default on every machine", item 3): one prepared script that builds led-local
with a GPU backend on a machine that has no network, checks the latent readout and LED there, and
benchmarks LED against standard decoding.

Here, with network (writes .gpu/, which git ignores; about 4 MB):

    python bench/gpu_check.py pack

There, from the repository's root, in two calls on one warm machine (the device tool: carry [".gpu"];
timeout_s 590 for the build, which resumes where it stopped if it runs out; about 300 for the test):

    python3 bench/gpu_check.py build      # GGML_CUDA for this GPU only, into build/gpu-check/ (minutes)
    python3 bench/gpu_check.py test       # models, tests/test_gpu.py, bench -> $OUT (else build/gpu-check/results)

$OUT gets build-cuda.log/.json, test_gpu.xml, bench_explore.json and gpu-check.json (the summary, with the
goal: LED >= 0.97x standard tok/s on the GPU).

What travels: the project (the working tree), the pinned llama.cpp source pruned to what a CUDA build
compiles (our patches apply to it at configure, as in any install), and wheels of the Python packages such a
machine lacks (cffi, pycparser, gguf: the versions installed here, for CPython 3.12 and this interpreter).
The machine is expected to have nvcc, CMake, ninja and a Python with numpy and pytest.

`test` writes a random model with Qwen2.5-Coder-1.5B's shapes (models/tiny.py QWEN15_SHAPES, f16, 3.1 GB:
real weights cannot travel), runs tests/test_gpu.py on it and the tiny models with every layer on the GPU
(against numpy and against the same build's CPU backend), then bench/bench_explore.py with every layer on
the GPU: one exploring step against a decode, and LED against standard on open-ended chat (goal >= 0.97x).

The proof without a GPU (what was run on a CPU-only machine; the checks then hold bit for bit):

    python bench/gpu_check.py build --backend cpu && python bench/gpu_check.py test --backend cpu --layers 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from upstream_build import VERSION, pinned_sdist  # noqa: E402  (the pinned sdist, fetched once and cached)

PACK = REPO / ".gpu"
WORK = REPO / "build" / "gpu-check"
SOURCE_TAR = PACK / "llama.cpp.tar.gz"
WHEELS = PACK / "wheels"
WHEEL_PACKAGES = ("cffi", "pycparser", "gguf")  # what led-local and its tests import that such a machine lacks

# Of the llama.cpp tree, what a library build with `common` reads. ggml/src keeps the CPU backend, the GPU
# backends a check may build and every directory our patches touch; the other backends, tools, examples,
# docs, tests and the vocabulary files (most of the 77 MB) stay behind.
KEEP_TOP = ("CMakeLists.txt", "LICENSE", "cmake/", "include/", "src/", "common/", "vendor/", "licenses/", "ggml/")
GGML_BACKENDS_KEPT = ("ggml-cpu", "ggml-cuda", "ggml-hip", "ggml-metal", "ggml-vulkan", "ggml-rpc", "ggml-blas")


def _kept(rel: str) -> bool:
    if not rel.startswith(KEEP_TOP) and rel not in KEEP_TOP:
        return False
    parts = rel.split("/")
    if parts[:2] == ["ggml", "src"] and len(parts) > 3 and parts[2].startswith("ggml-"):
        return parts[2] in GGML_BACKENDS_KEPT
    return True


def pack(a) -> None:
    PACK.mkdir(exist_ok=True)
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    kept = skipped = 0
    tmp = SOURCE_TAR.with_suffix(".part")
    with tarfile.open(pinned_sdist()) as src, tarfile.open(tmp, "w:gz", compresslevel=9) as out:
        for m in src:
            if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(prefix):]
            if rel == ".git" or not _kept(rel + ("/" if m.isdir() else "")):
                skipped += 1
                continue
            m.name = "llama.cpp/" + rel
            # a long name travels in a PAX header, which would win over the new name when written
            m.pax_headers = {k: v for k, v in m.pax_headers.items() if k not in ("path", "linkpath")}
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
            kept += 1
    with tarfile.open(tmp) as check:
        stray = [n for n in check.getnames() if not n.startswith("llama.cpp/")]
    if stray:
        sys.exit(f"packing went wrong: {len(stray)} entries outside llama.cpp/, e.g. {stray[0]}")
    tmp.replace(SOURCE_TAR)  # never a half-written archive under the final name
    print(f"{SOURCE_TAR.relative_to(REPO)}: {kept} entries kept, {skipped} left out, "
          f"{SOURCE_TAR.stat().st_size / 2**20:.1f} MB")

    if WHEELS.exists():
        shutil.rmtree(WHEELS)
    WHEELS.mkdir()
    pins = [f"{p}=={version(p)}" for p in WHEEL_PACKAGES]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for py in sorted({"3.12", here}):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", py, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(WHEELS), *pins], check=True)
    size = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    print(f"{WHEELS.relative_to(REPO)}: {', '.join(sorted(f.name for f in WHEELS.iterdir()))}")
    print(f".gpu/ in all: {size / 2**20:.1f} MB (the device carries 64 MiB with the working tree)")


def _run(cmd: list[str], log: Path) -> float:
    """Runs cmd with its output to log (and the tail to stdout on failure); returns the seconds it took."""
    t = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-60:]))
        sys.exit(f"failed ({rc}): {' '.join(cmd)} (whole log: {log})")
    return time.perf_counter() - t


def _results() -> Path:
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else WORK / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _site() -> Path:
    """The packed wheels installed where only this check looks (the machine's own packages stay as they are)."""
    site = WORK / "site"
    if not (site / "gguf").exists():
        if not WHEELS.exists():
            sys.exit(f"{WHEELS} is missing: run `python bench/gpu_check.py pack` on a machine with network first")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--find-links", str(WHEELS), "--target", str(site), *WHEEL_PACKAGES], check=True)
    return site


def build(a) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    results = _results()
    log = results / f"build-{a.backend}.log"
    log.write_text("")
    info: dict = {"backend": a.backend, "machine": platform.machine(), "cpus": os.cpu_count()}
    if not SOURCE_TAR.exists():
        sys.exit(f"{SOURCE_TAR} is missing: run `python bench/gpu_check.py pack` on a machine with network first")
    _site()
    # one folder per packed source: CMake re-copies and re-patches when the folder it is given changes
    digest = hashlib.sha256(SOURCE_TAR.read_bytes()).hexdigest()[:12]
    src = WORK / f"llama.cpp-{digest}"
    if not src.exists():
        part = WORK / f"llama.cpp-{digest}.part"
        shutil.rmtree(part, ignore_errors=True)
        with tarfile.open(SOURCE_TAR) as t:
            t.extractall(part, filter="data")
        (part / "llama.cpp").rename(src)
        part.rmdir()
    flags = [f"-DLED_LOCAL_LLAMA_SOURCE={src}", "-DCMAKE_BUILD_TYPE=Release"]
    if a.backend == "cuda":
        nvcc = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None)
        if not nvcc:
            sys.exit("nvcc not found: put CUDA's bin folder on PATH")
        os.environ.setdefault("CUDACXX", nvcc)
        # where the toolkit keeps libcudart and libcublas, in case the loader is not told (test adds them)
        root = Path(nvcc).resolve().parent.parent
        dirs = (root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib")
        info["cuda_lib_dirs"] = sorted({str(d.resolve()) for d in dirs if d.is_dir() and any(d.glob("libcudart.so*"))})
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
        info["gpu"] = smi.stdout.strip() if smi else None
        arch = a.cuda_arch
        cap = smi.stdout.strip().splitlines()[0].split(",")[-1].strip() if smi and smi.returncode == 0 and smi.stdout else ""
        if arch == "native" and re.fullmatch(r"\d+\.\d+", cap):
            arch = cap.replace(".", "")  # what CMake's "native" would find, without its probe program
        info["cuda_arch"] = arch
        # this GPU only (minutes instead of an hour of kernels); NCCL is for several GPUs and is not installed
        flags += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DGGML_CUDA_NCCL=OFF"]
        info["nvcc"] = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    flags += a.cmake_arg
    for tool in ("cmake", "ninja"):
        found = shutil.which(tool)
        info[tool] = subprocess.run([found, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if found else None
    if not info["cmake"]:
        sys.exit("cmake not found (3.21 or newer is needed)")
    info["python"] = sys.version.split()[0]
    tree = WORK / f"cmake-{a.backend}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    info["configure_s"] = _run(["cmake", "-S", str(REPO), "-B", str(tree), *gen, *flags], log)
    info["compile_s"] = _run(["cmake", "--build", str(tree), "-j", str(os.cpu_count() or 2)], log)
    _run(["cmake", "--install", str(tree), "--prefix", str(WORK / f"install-{a.backend}")], log)
    print(json.dumps(info, indent=2))
    (results / f"build-{a.backend}.json").write_text(json.dumps(info, indent=2))
    (WORK / f"build-{a.backend}.json").write_text(json.dumps(info, indent=2))


def test(a) -> None:
    results = _results()
    lib = WORK / f"install-{a.backend}" / "led_local" / "lib"
    if not lib.exists():
        sys.exit(f"{lib} is missing: run `python bench/gpu_check.py build --backend {a.backend}` first")
    site = _site()
    env = dict(os.environ, LED_LOCAL_LIB_DIR=str(lib), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    summary: dict = {"backend": a.backend}
    record = WORK / f"build-{a.backend}.json"  # (beside the build: $OUT is emptied between calls)
    built = json.loads(record.read_text()) if record.exists() else {}
    extra = [d for d in built.get("cuda_lib_dirs", []) if d not in os.environ.get("LD_LIBRARY_PATH", "")]
    if extra:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(extra + [os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    if shutil.which("ldd"):  # a library the loader cannot find is named here, not as a bare ImportError later
        missing = sorted({line.split()[0] for f in lib.glob("*.so") for line in subprocess.run(
            ["ldd", str(f)], capture_output=True, text=True, env=env).stdout.splitlines() if "not found" in line})
        if missing:
            sys.exit(f"the loader cannot find {', '.join(missing)} for {lib}: add their folder to LD_LIBRARY_PATH")

    # the random 1.5B-shaped model (what the GPU decodes and the bench measures)
    sys.path[:0] = [str(site), str(REPO / "models")]
    import dataclasses
    from tiny import QWEN15_SHAPES, write_tiny_model

    spec = dataclasses.replace(QWEN15_SHAPES, n_layer=a.layers) if a.layers else QWEN15_SHAPES
    model = WORK / "models" / f"qwen15-shapes-{spec.n_layer}l.gguf"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        part = write_tiny_model(model.with_suffix(".part"), spec)
        part.replace(model)
        summary["model_write_s"] = round(time.perf_counter() - t, 1)
    summary["model"] = {"path": str(model), "n_layer": spec.n_layer, "bytes": model.stat().st_size}

    probe = ("import json, led_local; print(json.dumps([d.__dict__ for d in led_local.devices()]))")
    summary["devices"] = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                                   text=True, check=True).stdout)
    print(json.dumps(summary, indent=2), flush=True)

    expected = {"cuda": "CUDA", "cpu": "CPU"}[a.backend]
    t = time.perf_counter()
    junit = results / "test_gpu.xml"
    rc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_gpu.py",
                         f"--junitxml={junit}"], cwd=REPO,
                        env=dict(env, LED_LOCAL_GPU_CHECK=expected, LED_LOCAL_GPU_BIG_MODEL=str(model))).returncode
    summary["tests"] = {"exit": rc, "seconds": round(time.perf_counter() - t, 1), "junit": junit.name}

    ngl = "-1" if a.backend != "cpu" else "0"
    bench_args = ["--model", str(model), "--n-gpu-layers", ngl, "--threads", str(a.threads),
                  "--steps", str(a.steps), "--tokens", str(a.tokens), "--rounds", str(a.rounds),
                  "--result", "gpu-check-explore"]
    t = time.perf_counter()
    brc = subprocess.run([sys.executable, "bench/bench_explore.py", *bench_args], cwd=REPO, env=env).returncode
    summary["bench"] = {"exit": brc, "seconds": round(time.perf_counter() - t, 1), "args": bench_args}
    if brc == 0:
        data = json.loads((REPO / "bench" / "results" / "gpu-check-explore.json").read_text())
        summary["bench"]["result"] = data
        if a.backend != "cpu" and "open_chat" in data:  # the goal on a GPU (bench_explore's are the CPU's)
            r = data["open_chat"]["led_over_standard"]
            summary["gpu_goal"] = {"led_over_standard": r, "goal": ">= 0.97", "met": r >= 0.97,
                                   "explored_share_mean": data["open_chat"]["explored_share_mean"]}
        shutil.copy(REPO / "bench" / "results" / "gpu-check-explore.json", results / "bench_explore.json")
    (results / "gpu-check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "devices"}, indent=2))
    if rc != 0 or brc != 0:
        sys.exit(f"the GPU check failed: tests exit {rc}, bench exit {brc} (results in {results})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    sub.add_parser("pack", help="here, with network: the pruned llama.cpp source and the wheels, into .gpu/")
    b = sub.add_parser("build", help="there: build led-local with the GPU backend into build/gpu-check/")
    t = sub.add_parser("test", help="there: models, tests/test_gpu.py and the bench; results to $OUT")
    for p in (b, t):
        p.add_argument("--backend", choices=("cuda", "cpu"), default="cuda",
                       help="cpu: the proof of this script on a machine without a GPU")
    b.add_argument("--cuda-arch", default="native", help="CMAKE_CUDA_ARCHITECTURES (native: the GPU present)")
    b.add_argument("--cmake-arg", action="append", default=[],
                   help="one more -D... for the configure (repeatable), e.g. --cmake-arg=-DGGML_CUDA_FA=OFF")
    t.add_argument("--layers", type=int, default=0, help="blocks of the 1.5B-shaped model (default its 28)")
    t.add_argument("--threads", type=int, default=4)
    t.add_argument("--steps", type=int, default=24)
    t.add_argument("--tokens", type=int, default=128)
    t.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    {"pack": pack, "build": build, "test": test}[a.step](a)


if __name__ == "__main__":
    main()
