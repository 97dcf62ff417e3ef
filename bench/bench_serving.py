"""Concurrent streaming clients against `led-local serve` and against unpatched `llama-server` built from the
same pinned source (tests/upstream_build.py), one thread each, back to back; and a bounded load test.

    python bench/bench_serving.py [--model qwen2.5-coder-1.5b] [--clients 8] [--requests 2] [--max-tokens 64]
    python bench/bench_serving.py --load [--model smollm2-135m] [--total 200] [--clients 16]

Throughput mode: `--clients` clients each stream `--requests` chat requests one after another (T=0.6, top-k
20, top-p 0.95), to each server with `--parallel` = clients: aggregate completion tokens/s and time to first
token (p50, max), and bursts (the largest share of one stream's chunks that arrived within 100 ms: chunks
delivered as generated give about 1/tokens), for llama-server, led-local standard and led-local LED. Goals
(issue "A server that no request can take down"): led-local standard >= 0.95x llama-server's tokens/s and
p50 TTFT <= 1.2x; LED >= 0.95x standard's tokens/s; no stream's burst share above twice llama-server's worst.

Load mode: `--total` requests, `--clients` at a time, samplers standard/LED/DoLa in turn, every fifth client
hanging up mid-stream: counts unintended errors (must be 0) and malformed streams (must be 0), and compares
the server's resident memory after the run with after a warm-up (goal <= 1.1x). All traffic is loopback.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _results import save_result  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, path: str, parallel: int, ctx: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "llama-server":
        from upstream_build import ensure_llama_server

        cmd = [str(ensure_llama_server()), "-m", path, "-t", "1", "-tb", "1", "-np", str(parallel), "-c", str(ctx),
               "--port", str(port), "--host", "127.0.0.1", "--no-webui"]
    else:
        cmd = [sys.executable, "-m", "led_local.cli", "serve", "--model", path, "--threads", "1", "--parallel",
               str(parallel), "--ctx", str(ctx), "--port", str(port), "--max-queue", "1000", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{kind} did not start:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"{kind} did not start in time")


def stream_chat(base: str, body: dict, hang_up_after: int | None = None) -> dict:
    """One streamed chat request: time to first token, tokens, whether the stream was well-formed."""
    t0 = time.perf_counter()
    ttft, tokens, done, chunks, arrivals = None, 0, False, 0, []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=600) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {r.read()[:200]!r}"}
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)  # malformed JSON raises: counted as an error
            if "error" in chunk:
                return {"error": chunk["error"]}
            chunks += 1
            for c in chunk.get("choices", []):
                if c.get("delta", {}).get("content"):
                    tokens += 1
                    arrivals.append(time.perf_counter() - t0)
                    ttft = ttft if ttft is not None else arrivals[-1]
            if hang_up_after is not None and chunks >= hang_up_after:
                return {"hung_up": True}
    return {"ttft": ttft, "tokens": tokens, "done": done, "wall": time.perf_counter() - t0,
            "burst": burst_share(arrivals)}


BURST_WINDOW_S = 0.1


def burst_share(arrivals: list[float]) -> float:
    """The largest share of a stream's content chunks that arrived within any BURST_WINDOW_S: about 1/tokens
    for chunks delivered as they are generated (a token takes longer than the window at 8 clients), near 1
    for a stream held back and delivered at once (issue "A server that no request can take down")."""
    if not arrivals:
        return 0.0
    most, start = 0, 0
    for end, t in enumerate(arrivals):
        while t - arrivals[start] > BURST_WINDOW_S:
            start += 1
        most = max(most, end - start + 1)
    return most / len(arrivals)


def throughput(kind: str, path: str, a, sampler: str | None) -> dict:
    proc, base = start(kind, path, a.clients, a.ctx)
    try:
        body = {"model": "m", "max_tokens": a.max_tokens, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
        if sampler:
            body["sampler"] = sampler
        stream_chat(base, {**body, "messages": [{"role": "user", "content": "Warm up."}], "max_tokens": 4})
        results: list[dict] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            for j in range(a.requests):
                msg = f"Client {i}, request {j}: tell me three facts about the sea, with numbers."
                r = stream_chat(base, {**body, "messages": [{"role": "user", "content": msg}], "seed": i * 100 + j})
                with lock:
                    results.append(r)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.clients) as pool:
            list(pool.map(client, range(a.clients)))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    errors = [r["error"] for r in results if "error" in r]
    ttfts = sorted(r["ttft"] for r in results if r.get("ttft") is not None)
    bursts = sorted(r["burst"] for r in results if "burst" in r)
    return {"server": kind, "sampler": sampler or "standard", "tokens_per_s": sum(r.get("tokens", 0) for r in results) / wall,
            "ttft_p50_s": statistics.median(ttfts), "ttft_max_s": ttfts[-1], "requests": len(results),
            "errors": len(errors), "wall_s": wall, "burst_p50": statistics.median(bursts), "burst_max": bursts[-1]}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(path: str, a) -> dict:
    proc, base = start("led-local", path, a.parallel, a.ctx)
    samplers = [{}, {"sampler": "led"}, {"sampler": "dola", "dola_layers": "high"}]
    try:
        def one(i: int) -> dict:
            body = {"model": "m", "max_tokens": a.max_tokens, "temperature": 0.7, "seed": i, **samplers[i % 3],
                    "messages": [{"role": "user", "content": f"Request {i}: name an animal and say why."}]}
            try:
                return stream_chat(base, body, hang_up_after=3 if i % 5 == 4 else None)
            except Exception as e:  # noqa: BLE001 (counted)
                return {"error": repr(e)}

        with ThreadPoolExecutor(a.clients) as pool:  # warm-up: every sampler, every slot
            list(pool.map(one, range(3 * a.parallel)))
        warm = rss_kb(proc.pid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.clients) as pool:
            results = list(pool.map(one, range(a.total)))
        wall = time.perf_counter() - t0
        time.sleep(1.0)
        after = rss_kb(proc.pid)
        health = httpx.get(f"{base}/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    errors = [r["error"] for r in results if "error" in r]
    completed = [r for r in results if "hung_up" not in r and "error" not in r]
    malformed = [r for r in completed if not r["done"]]
    return {"mode": "load", "model": a.model, "total": a.total, "clients": a.clients, "parallel": a.parallel,
            "hung_up": sum("hung_up" in r for r in results), "completed": len(completed), "errors": len(errors),
            "error_samples": errors[:3], "malformed": len(malformed), "rss_warm_mb": warm / 1024,
            "rss_after_mb": after / 1024, "rss_ratio": after / warm, "health_after": health, "wall_s": wall,
            "met": not errors and not malformed and after / warm <= 1.1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--total", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    a = ap.parse_args()
    from led_local import models

    if a.load:
        a.model, a.clients = a.model or "smollm2-135m", a.clients or 16
        out = load(str(models.path(a.model)), a)
        print(json.dumps(out, indent=2))
        save_result(f"serving-load-{a.model}", out)
        return
    a.model, a.clients = a.model or "qwen2.5-coder-1.5b", a.clients or 8
    path = str(models.path(a.model))
    rows = []
    for _ in range(a.rounds):
        for kind, sampler in (("llama-server", None), ("led-local", None), ("led-local", "led")):
            rows.append(throughput(kind, path, a, sampler))
            print(json.dumps(rows[-1]), flush=True)

    def med(kind, sampler, key):
        return statistics.median(r[key] for r in rows if r["server"] == kind and r["sampler"] == sampler)
    ref_tps, ref_ttft = med("llama-server", "standard", "tokens_per_s"), med("llama-server", "standard", "ttft_p50_s")
    ours_tps, ours_ttft = med("led-local", "standard", "tokens_per_s"), med("led-local", "standard", "ttft_p50_s")
    out = {"model": a.model, "clients": a.clients, "requests_per_client": a.requests, "max_tokens": a.max_tokens,
           "rounds": a.rounds, "runs": rows, "tokens_per_s_ratio": ours_tps / ref_tps,
           "ttft_p50_ratio": ours_ttft / ref_ttft,
           "led_vs_standard_tokens_per_s": med("led-local", "led", "tokens_per_s") / ours_tps,
           "burst_max": {f"{kind} {sampler}": max(r["burst_max"] for r in rows
                                                  if r["server"] == kind and r["sampler"] == sampler)
                         for kind, sampler in (("llama-server", "standard"), ("led-local", "standard"),
                                               ("led-local", "led"))},
           "led": {"tokens_per_s": med("led-local", "led", "tokens_per_s"),
                   "ttft_p50_s": med("led-local", "led", "ttft_p50_s")}}
    ours_burst = max(out["burst_max"]["led-local standard"], out["burst_max"]["led-local led"])
    out["met"] = {"tokens_per_s >= 0.95x llama-server": out["tokens_per_s_ratio"] >= 0.95,
                  "ttft_p50 <= 1.2x llama-server": out["ttft_p50_ratio"] <= 1.2,
                  "LED tokens_per_s >= 0.95x standard": out["led_vs_standard_tokens_per_s"] >= 0.95,
                  "no bursts: worst stream's share in 100 ms <= 2x llama-server's":
                      ours_burst <= 2 * out["burst_max"]["llama-server standard"]}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    save_result(f"serving-{a.model}", out)


if __name__ == "__main__":
    main()
