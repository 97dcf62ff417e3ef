"""`led-local serve` started for a test: a free loopback port, the process, and its base URL once it answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, *args: str, threads: int = 1, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "led_local.cli", "serve", "--model", str(model), "--threads",
                             str(threads), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(f"{base}/models", timeout=1)
            return proc, base
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    raise RuntimeError("the server did not start")
