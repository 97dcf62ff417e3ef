"""A bounded load test of `led-local serve`: N chat requests, C at a time, through the official openai client.

    python bench/bench_server.py [--model smollm2-135m] [--requests 50] [--concurrency 4] [--max-tokens 64]
                                 [--sampler led]

Reports p50/p95 latency, aggregate completion tokens/s and the number of errors (must be 0). The server runs
single-threaded in a subprocess on loopback.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from _results import save_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sampler", default="led", choices=["led", "standard"])
    a = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "led_local.cli", "serve", "--model", a.model, "--threads", "1",
                               "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{base}/models", timeout=1)
                break
            except httpx.HTTPError:
                if server.poll() is not None:
                    raise SystemExit(server.stderr.read())
                time.sleep(0.1)
        client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=600)

        def one(i: int) -> tuple[float, int, str | None]:
            t = time.perf_counter()
            try:
                r = client.chat.completions.create(
                    model=a.model, messages=[{"role": "user", "content": f"Give me fact number {i} about the sea."}],
                    max_tokens=a.max_tokens, temperature=0.7, seed=i, extra_body={"sampler": a.sampler})
                return time.perf_counter() - t, r.usage.completion_tokens, None
            except Exception as e:  # noqa: BLE001 (counted, reported)
                return time.perf_counter() - t, 0, repr(e)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.concurrency) as pool:
            results = list(pool.map(one, range(a.requests)))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=60)

    lat = sorted(r[0] for r in results)
    errors = [r[2] for r in results if r[2]]
    tokens = sum(r[1] for r in results)
    out = {"model": a.model, "requests": a.requests, "concurrency": a.concurrency, "max_tokens": a.max_tokens,
           "sampler": a.sampler, "p50_s": statistics.median(lat), "p95_s": lat[max(0, int(0.95 * len(lat)) - 1)],
           "tokens_per_s": tokens / wall, "wall_s": wall, "errors": len(errors), "error_samples": errors[:3]}
    print(json.dumps(out, indent=2))
    save_result(f"server-{a.model}", out)


if __name__ == "__main__":
    main()
