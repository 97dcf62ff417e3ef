"""`led-local rpc-server`: this machine's devices served to other led-local (or llama.cpp) clients."""

from __future__ import annotations

import sys

import click

from .. import rpc
from .common import one_line_errors


@click.command("rpc-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but loopback exposes this machine (see below)")
@click.option("--port", default=rpc.DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 512),
              help="CPU threads when the CPU is the device served")
@click.option("--mem", "mem_mb", default=None, type=click.IntRange(1), metavar="MB",
              help="memory to offer clients, which split layers by it (default: what the device has)")
@click.option("--verbose", is_flag=True, help="show ggml's log")
@one_line_errors
def rpc_server(host, port, threads, mem_mb, verbose):
    """Serve this machine's GPUs (else its CPU) to `Llama(rpc_servers=["HOST:PORT"])` clients, until stopped.

    ggml's RPC protocol is unauthenticated: whoever reaches the port can use this machine's memory and
    compute. Bind loopback (the default) or a trusted network only.
    """
    click.echo(f"led-local: serving this machine's devices at {host}:{port} (unauthenticated: trusted networks only)",
               err=True)
    try:
        rpc.serve(host, port, threads, mem_mb=mem_mb, verbose=verbose)
    except (OSError, RuntimeError) as e:
        click.echo(f"led-local: error: {e}", err=True)
        sys.exit(2)
