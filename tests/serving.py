"""`led-local serve` and `led-local rpc-server` started for a test or a bench: a free loopback port, the
process, and its address once it answers."""

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


SERVER_ADDRESS_SPACE = 16 << 30


def _bounded_memory() -> None:
    """A server under test that runs away with memory (a planted bug, a grammar llama.cpp expands without
    end) fails its own allocations at 16 GiB of address space, not the machine's other processes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (SERVER_ADDRESS_SPACE, SERVER_ADDRESS_SPACE))


def start_server(model, *args: str, threads: int = 1, timeout: float = 60,
                 access_log: bool = False) -> tuple[subprocess.Popen, str]:
    """Without `access_log` the server runs `--quiet`: nothing reads its stderr while it runs, and a pipe that
    fills up would stall it."""
    port = free_port()
    quiet = [] if access_log else ["--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "led_local.cli", "serve", "--model", str(model), "--threads",
                             str(threads), "--port", str(port), *quiet, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_bounded_memory)
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


def start_rpc_server(*args: str, timeout: float = 30) -> tuple[subprocess.Popen, str]:
    """`led-local rpc-server` on a free loopback port: the process and its "127.0.0.1:port" once it accepts."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "led_local.cli", "rpc-server", "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the RPC server did not start")
