"""Layers on another machine (issue "Past one machine"), on loopback: decode speed with every layer on a
`led-local rpc-server` against the local run, and the bytes that cross the wire per token, with LED's latent
readout off and on, when the blocks are split between the local CPU and the server.

    python bench/bench_rpc.py [--model qwen2.5-coder-1.5b] [--tokens 48] [--rounds 2]

The server holds the LM head in the split run, so every token's logits cross the wire, and on LED's
exploring steps the latent logits of its 7 rows too (the on-demand head runs where the head lives; LED's
math runs on the host). The server runs in its own process with 1 thread, the client with 1 thread; they share this machine's cores
and memory, so loopback RPC here shows the protocol's overhead, not a network's. Bytes are counted by a small
TCP relay between client and server. Greedy decoding; decode rate = (tokens - 1) / (time - one-token time).
Writes bench/results/rpc-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from led_local import Llama, models

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _results import save_result  # noqa: E402
from serving import free_port, start_rpc_server  # noqa: E402

PROMPT = "Explain in detail how a hash map works and when to use one."


class Relay:
    """Forwards a TCP port to the server and counts the bytes each way."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self.sent = self.received = 0  # client -> server, server -> client
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                with self._lock:
                    if up:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side closed: close the other (rpc-server serves one connection at a time)
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def total(self) -> int:
        with self._lock:
            return self.sent + self.received


def decode_rate(llm: Llama, tokens: int, **kwargs) -> float:
    def timed(n):
        t = time.perf_counter()
        r = llm.create_completion(PROMPT, max_tokens=n, temperature=0, **kwargs)
        return time.perf_counter() - t, r["usage"]["completion_tokens"]
    t1, _ = timed(1)
    tn, n = timed(tokens)
    return (n - 1) / (tn - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    path = models.path(a.model)
    proc, server = start_rpc_server("--threads", "1")
    relay = Relay(int(server.rpartition(":")[2]))
    endpoint = f"127.0.0.1:{relay.port}"
    try:
        rates = {"local": [], "rpc_all_layers": []}
        with Llama(path, n_ctx=1024, n_seq_max=1, n_threads=1) as local, \
                Llama(path, n_ctx=1024, n_seq_max=1, n_threads=1, rpc_servers=[endpoint], n_gpu_layers=-1) as remote:
            for kind, llm in (("local", local), ("rpc_all_layers", remote)):
                decode_rate(llm, 2)  # warm-up
            for r in range(a.rounds):
                for kind, llm in (("local", local), ("rpc_all_layers", remote)):
                    rates[kind].append(decode_rate(llm, a.tokens))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} tok/s" for k, v in rates.items()), flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}

        # bytes per token, blocks split: llama.cpp's n_gpu_layers counts the head as one more layer, so half
        # of n_layer puts the upper blocks and the head on the server, the rest local
        traffic = {}
        with Llama(path, n_ctx=1024, n_seq_max=1, n_threads=1, rpc_servers=[endpoint]) as probe:
            n_layer = probe.n_layer()
        with Llama(path, n_ctx=1024, n_seq_max=1, n_threads=1, rpc_servers=[endpoint],
                   n_gpu_layers=n_layer // 2) as split:
            for kind, kwargs in (("standard", dict(sampler="standard")),
                                 ("led_readout", dict(sampler="led", led={"latent_norm": False}))):
                split.create_completion(PROMPT, max_tokens=2, temperature=0.6, seed=1, **kwargs)
                before = relay.total()
                split.create_completion(PROMPT, max_tokens=1, temperature=0.6, seed=1, **kwargs)
                one = relay.total() - before
                before = relay.total()
                r = split.create_completion(PROMPT, max_tokens=a.tokens, temperature=0.6, seed=1, stop=[], **kwargs)
                n = r["usage"]["completion_tokens"]
                traffic[kind] = (relay.total() - before - one) / max(n - 1, 1)
        out = {"model": a.model, "threads": "1 client + 1 server", "tokens": a.tokens, "rounds": a.rounds,
               "median_tok_s": med, "rpc_over_local": med["rpc_all_layers"] / med["local"],
               "split_layers": f"blocks 0-{n_layer - n_layer // 2} local, {n_layer - n_layer // 2 + 1}-{n_layer - 1} "
                               "and the LM head on the server",
               "bytes_per_token": traffic,
               "latent_bytes_per_token": traffic["led_readout"] - traffic["standard"], "tok_s": rates}
        print(json.dumps({k: v for k, v in out.items() if k != "tok_s"}, indent=2))
        save_result(f"rpc-{a.model}", out)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
