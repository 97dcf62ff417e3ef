"""ggml's RPC backend: layers on other machines (`Llama(rpc_servers=...)`) and this machine's devices served
to others (`led-local rpc-server`).

The protocol is llama.cpp's own and unauthenticated: anyone who reaches a server's port can run graphs on
it and read or write its memory. Serve on loopback (the default) or a trusted network only.

ggml aborts the process when an RPC server cannot be reached, so reachability is checked here first.
"""

from __future__ import annotations

import signal
import socket

from . import _native

DEFAULT_PORT = 50052


class RPCServerLost(ConnectionError):
    """An RPC server holding this model's layers stopped answering mid-run. The Llama cannot go on (its
    layers and cache there are gone): close it and open a new one; the process itself stays usable."""


def parse_servers(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The endpoints of llama-cpp-python's `rpc_servers` ("host:port,host:port") or a list of them, checked
    for form before anything connects (ValueError)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    servers = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"rpc_servers takes 'host:port' strings, got {item!r}")
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"RPC server {item!r} is not 'host:port' (for example 127.0.0.1:{DEFAULT_PORT})")
        servers.append(f"{host}:{int(port)}")
    if not servers:
        raise ValueError("rpc_servers is empty: give at least one 'host:port'")
    return servers


def check_reachable(servers: list[str], timeout: float = 5.0) -> None:
    """ConnectionError naming the first server that does not accept a connection."""
    for endpoint in servers:
        host, _, port = endpoint.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as e:
            raise ConnectionError(
                f"cannot reach the RPC server at {endpoint} ({e.strerror or e}); start one there with "
                f"`led-local rpc-server --host {host} --port {port}`"
            ) from None


def require_support(lib) -> None:
    if not lib.led_rpc_supported():
        raise RuntimeError("this build of led-local has no RPC backend; reinstall without CMAKE_ARGS=-DGGML_RPC=OFF")


def serve(host: str, port: int, threads: int, mem_mb: int | None = None, verbose: bool = False) -> None:
    """Serve this machine's devices at host:port until the process is stopped (Ctrl-C or SIGTERM). mem_mb:
    the memory each device reports to clients, which split layers across devices by it (default: what it
    has)."""
    lib = _native.lib(verbose=verbose)
    require_support(lib)
    # the C call blocks for good: let Ctrl-C end the process instead of waiting for Python's handler
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if lib.led_rpc_server_run(f"{host}:{port}".encode(), threads, (mem_mb or 0) << 20) != 0:
        raise RuntimeError("the RPC server could not start")
    raise OSError(f"the RPC server could not listen on {host}:{port} (in use, or not an address of this machine)")
