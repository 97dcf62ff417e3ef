"""One KV pool against one KV stream per slot: memory and throughput of n = 8 samples of a 1,000-token prompt.

    python bench/bench_pool.py [--model qwen2.5-coder-1.5b] [--before DIR] [--rounds 2]

Each run is a fresh process (one thread) that opens `Llama(n_ctx=..., n_seq_max=8)`, runs the 8 samples of
64 tokens (end of generation banned, so every sample runs its 64) and reports llama.cpp's KV buffer size (its
log), the process's peak RSS, and the seconds and tokens/s of the call. Configurations:
- pool, smallest n_ctx: 1,000 + 8 x 64 = 1,512 (padded by llama.cpp to 1,536): what the shared pool needs;
- pool, n_ctx 8,512: the same context as the per-slot build needs, to compare speed alone;
- per-slot streams (`--before DIR`: a folder holding the led_local package as it was before the pool, commit
  1165e5b, with its libraries; put first on PYTHONPATH): n_ctx 8,512, the smallest where each of the 8 slots
  holds the prompt and its answer (8 x 1,064). `python bench/bench_pool.py --make-before DIR` makes it: the
  old Python files from git, this install's llama.cpp libraries, the old C surface compiled against them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _results import save_result

WORKER = r"""
import json, re, resource, sys, time, os
from led_local import Llama, models
path, n_ctx = sys.argv[1], int(sys.argv[2])
import tempfile
model = models.path(path)
with tempfile.TemporaryFile() as f:
    saved = os.dup(2)
    os.dup2(f.fileno(), 2)             # llama.cpp's log (verbose) to a file, read after the load
    llm = Llama(model, n_ctx=n_ctx, n_seq_max=8, n_threads=1, verbose=True)
    os.dup2(saved, 2)
    f.seek(0)
    log = f.read().decode(errors="replace")
kv = sum(float(m) for m in re.findall(r"KV buffer size\s*=\s*([\d.]+) MiB", log))
text = " ".join(f"Sentence {i}: the river carries silt to the delta, where it settles into new land." for i in range(80))
prompt = llm.tokenize(text)[:1000]
ban = {llm.token_eos(): -float("inf")}
t0 = time.perf_counter()
r = llm.create_completion(prompt, n=8, max_tokens=64, temperature=0.6, seed=0, logit_bias=ban)
dt = time.perf_counter() - t0
print(json.dumps({"n_ctx": n_ctx, "kv_mib": kv, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": dt, "completion_tokens": r["usage"]["completion_tokens"],
                  "tok_s": r["usage"]["completion_tokens"] / dt}))
"""


def run(pythonpath: str | None, model: str, n_ctx: int) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    r = subprocess.run([sys.executable, "-c", WORKER, model, str(n_ctx)], capture_output=True, text=True,
                       timeout=3600, env=env)
    if r.returncode != 0:
        raise SystemExit(f"worker ({pythonpath or 'this install'}, n_ctx {n_ctx}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


BEFORE = "1165e5b"  # the last commit with one KV stream per slot


def make_before(dest: Path) -> None:
    import led_local

    repo = Path(__file__).resolve().parent.parent
    installed = Path(led_local.__file__).parent
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", BEFORE, "led_local", "csrc"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    shutil.copytree(installed / "lib", dest / "led_local" / "lib")
    shutil.copy2(installed / "registry.json", dest / "led_local" / "registry.json")
    headers = sorted(repo.glob("build/*/llama.cpp-patched"))[-1]
    csrc, lib = dest / "csrc", dest / "led_local" / "lib"
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-fPIC", "-shared", f"-I{csrc}",
                    f"-I{headers / 'include'}", f"-I{headers / 'ggml' / 'include'}",
                    *[str(csrc / f) for f in ("led_engine.c", "led_core.c", "led_sampler.c")],
                    f"-L{lib}", "-lllama", "-lggml", "-lm", "-Wl,-rpath,$ORIGIN", "-o", str(lib / "libled_engine.so")],
                   check=True)
    print(f"{dest}: led_local as of {BEFORE} (one KV stream per slot)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--before", default=None, help="folder holding led_local as it was with one KV stream per slot")
    ap.add_argument("--make-before", default=None, help="make that folder (from git commit 1165e5b) and stop")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.make_before:
        make_before(Path(args.make_before))
        return
    configs = [("pool, n_ctx 1512", None, 1512), ("pool, n_ctx 8512", None, 8512)]
    if args.before:
        configs.append(("per-slot streams, n_ctx 8512", args.before, 8512))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for _ in range(args.rounds):  # back to back, alternating
        for name, pythonpath, n_ctx in configs:
            runs[name].append(run(pythonpath, args.model, n_ctx))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"n_ctx": rs[0]["n_ctx"], "kv_mib": rs[0]["kv_mib"],
                         "rss_mib": statistics.median(r["rss_mib"] for r in rs),
                         "tok_s": statistics.median(r["tok_s"] for r in rs),
                         "completion_tokens": rs[0]["completion_tokens"]}
        s = summary[name]
        print(f"{name:32} KV {s['kv_mib']:7.1f} MiB  peak RSS {s['rss_mib']:7.0f} MiB  "
              f"{s['tok_s']:6.2f} tok/s ({s['completion_tokens']} tokens)")
    save_result("pool", {"model": args.model, "rounds": args.rounds, "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
