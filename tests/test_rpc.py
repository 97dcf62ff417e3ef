"""llama.cpp's RPC backend on loopback: `led-local rpc-server` processes hold a model's layers the way other
machines would (issues "The patch holds on every backend" and "Past one machine").

Each server runs ggml's CPU backend, so the remote layers compute with the same kernels as the local ones:
tokens and latents must agree with a local run bit for bit here (across real machines with other CPUs or
GPUs, within the tolerances README "Backends" states). What RPC adds is a second device and copies that
really are asynchronous (a client thread receives them after decode returns), the conditions under which
the latent readout's host buffer, its row gathers and its head placement matter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from led_local import Llama
from serving import free_port, start_rpc_server, start_server

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def rpc_servers():
    started = [start_rpc_server() for _ in range(2)]
    yield [endpoint for _, endpoint in started]
    for proc, _ in started:
        proc.terminate()
        proc.wait(timeout=10)


def _libasan() -> str | None:
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


ASAN_SCRIPT = r'''
import json, sys
import numpy as np
from led_local import Llama
from led_local._native import ffi
path, server = sys.argv[1], sys.argv[2]
LAYERS = [10, 20, 28]

def rows(llm):
    toks = llm.tokenize("The capital of France is")
    llm.reset()
    llm.engine.set_latents(LAYERS, with_logits=False, norm=False)
    # decode 1 reads out one row; decode 2 three, more than the latent buffer has room for, issued while
    # decode 1's copies may still be arriving (no getter in between waits for them)
    llm.engine.decode([(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
    llm.engine.decode([(toks[-1], len(toks), s, True) for s in range(3)])
    n, d = len(LAYERS), llm.n_embd()
    out = []
    for i in range(3):
        p = llm.engine.lib.llama_get_latent_states_ith(llm.engine.ctx, i)
        assert p != ffi.NULL
        out.append(np.frombuffer(ffi.buffer(p, n * d * 4), dtype=np.float32).copy())
    return np.stack(out)

with Llama(path, n_ctx=512, n_seq_max=4, n_threads=1) as llm:
    local = rows(llm)
with Llama(path, n_ctx=512, n_seq_max=4, n_threads=1, rpc_servers=[server], n_gpu_layers=99) as llm:
    remote = rows(llm)
print(json.dumps({"max_diff": float(np.abs(local - remote).max())}))
'''


def test_growing_latent_rows_while_rpc_copies_are_in_flight_are_clean_under_asan(rpc_servers, smollm2_path):
    """The latent rows' buffer grows only after the copies still arriving into the old one are done: under
    AddressSanitizer's allocator (preloaded: its recv() interceptor checks where the RPC thread writes),
    a write into the freed buffer is reported as a heap-use-after-free."""
    asan = _libasan()
    if asan is None:
        pytest.skip("gcc's libasan is not installed")
    r = subprocess.run([sys.executable, "-c", ASAN_SCRIPT, str(smollm2_path), rpc_servers[0]], capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "LD_PRELOAD": asan, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"})
    assert "AddressSanitizer" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["max_diff"] == 0.0


def test_a_model_split_across_two_servers_and_the_cpu_matches_the_local_run(rpc_servers, smollm2_path):
    """smollm2 (30 blocks), n_gpu_layers=20 (llama.cpp counts the head as a layer): blocks 0-10 local,
    11-29 and the head split between two servers. Greedy tokens, latent states and logits (blocks on every
    device, the head remote, with the final norm), LED and four parallel LED samples equal the local run's."""
    layers = [4, 12, 22, 29]
    runs = {}
    for name, kwargs in {"local": {}, "split": dict(rpc_servers=rpc_servers, n_gpu_layers=20,
                                                     tensor_split=[1, 1])}.items():
        with Llama(smollm2_path, n_ctx=1024, n_seq_max=4, n_threads=1, **kwargs) as llm:
            lat = llm.latents(PROMPT, layers=layers, norm=True)
            runs[name] = dict(
                greedy=llm.create_completion(PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"],
                states=lat.hidden.copy(), logits=lat.logits.copy(),
                led=llm.create_completion(PROMPT, max_tokens=24, temperature=1.2, seed=7, sampler="led",
                                          led={"latent_norm": True})["choices"][0]["text"],
                led4=[c["text"] for c in llm.create_completion(PROMPT, max_tokens=16, temperature=1.2, seed=9, n=4,
                                                               sampler="led")["choices"]],
            )
    local, split = runs["local"], runs["split"]
    assert split["greedy"] == local["greedy"]
    np.testing.assert_array_equal(split["states"], local["states"])
    np.testing.assert_array_equal(split["logits"], local["logits"])
    assert split["led"] == local["led"]
    assert split["led4"] == local["led4"] and len(set(local["led4"])) > 1


SCHED_SCRIPT = r'''
import sys
from led_local import Llama
path, server = sys.argv[1], sys.argv[2]
with Llama(path, n_ctx=512, n_seq_max=2, n_threads=1, rpc_servers=[server], n_gpu_layers=15, verbose=True) as llm:
    llm.latents("The capital of France is", layers=[5, 20], norm=False)
'''


def test_latent_rows_are_gathered_on_the_device_that_holds_their_block(rpc_servers, smollm2_path):
    """Blocks 0-14 on the CPU, 15-29 on the server: block 20's output rows are gathered on the server, so
    only the gathered rows cross to the head, not the block's whole state (ggml's scheduler, left alone,
    puts the gather with the head). Read off the scheduler's own assignment log (GGML_SCHED_DEBUG=2)."""
    r = subprocess.run([sys.executable, "-c", SCHED_SCRIPT, str(smollm2_path), rpc_servers[0]], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "GGML_SCHED_DEBUG": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    # "node #998 (  GET_ROWS):   led_latent_rows-20 (   4K) [RPC0[         ] ..." (names cut to 5 characters)
    placed = dict(re.findall(r"GET_ROWS\):\s+led_latent_rows-(\d+) \(\s*\S+\) \[\s*(\S+?)\s", r.stderr))
    assert placed.get("5") == "CPU", placed
    assert placed.get("20", "").startswith("RPC"), placed


def test_bad_rpc_addresses_fail_before_anything_connects(smollm2_path):
    for bad in ("localhost", "127.0.0.1:", "127.0.0.1:99999", ":50052", ["127.0.0.1:1", 5]):
        with pytest.raises(ValueError, match="host:port"):
            Llama(smollm2_path, rpc_servers=bad)


def test_an_rpc_server_that_is_down_at_load_is_a_clear_error(smollm2_path):
    with pytest.raises(ConnectionError, match="cannot reach the RPC server at 127.0.0.1:.*led-local rpc-server"):
        Llama(smollm2_path, rpc_servers=[f"127.0.0.1:{free_port()}"], n_gpu_layers=99)
    with Llama(smollm2_path, n_ctx=256, n_seq_max=1, n_threads=1) as llm:  # the process is still usable
        assert llm.create_completion(PROMPT, max_tokens=2, temperature=0)["choices"][0]["text"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "led_local.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_command_puts_layers_on_rpc_servers(rpc_servers, smollm2_path):
    args = ["generate", PROMPT, "--model", str(smollm2_path), "--threads", "1", "--no-chat", "--sampler",
            "standard", "--temperature", "0", "--max-tokens", "12"]
    local = _cli(*args)
    remote = _cli(*args, "--rpc", ",".join(rpc_servers))
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    down = _cli(*args, "--rpc", f"127.0.0.1:{free_port()}")
    assert down.returncode == 2 and down.stderr.count("\n") == 1 and "cannot reach the RPC server" in down.stderr


def test_an_rpc_server_that_cannot_listen_is_one_line_and_exit_2(rpc_servers):
    taken = rpc_servers[0].rpartition(":")[2]
    r = _cli("rpc-server", "--port", taken, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"led-local: error: the RPC server could not listen on 127.0.0.1:{taken} "
                                                 "(in use, or not an address of this machine)")


def test_a_server_that_dies_mid_generation_is_a_clear_error_and_the_process_goes_on(smollm2_path):
    from led_local import RPCServerLost

    proc, endpoint = start_rpc_server()
    try:
        llm = Llama(smollm2_path, n_ctx=512, n_seq_max=1, n_threads=1, rpc_servers=[endpoint], n_gpu_layers=-1)
        stream = llm.create_completion(PROMPT, max_tokens=400, temperature=0, stop=[], stream=True)
        next(stream)
        next(stream)
        proc.kill()
        proc.wait(timeout=10)
        with pytest.raises(RPCServerLost, match="stopped answering"):
            for _ in stream:
                pass
        with pytest.raises(RPCServerLost, match="open a new one"):
            llm.create_completion(PROMPT, max_tokens=2)
        llm.close()
    finally:
        proc.kill()
    with Llama(smollm2_path, n_ctx=256, n_seq_max=1, n_threads=1) as local:
        assert local.create_completion(PROMPT, max_tokens=2, temperature=0)["choices"][0]["text"]


def test_the_server_answers_503_when_its_rpc_server_is_gone(smollm2_path):
    import httpx

    rpc_proc, endpoint = start_rpc_server()
    server, base = start_server(smollm2_path, "--rpc", endpoint)
    try:
        rpc_proc.kill()
        rpc_proc.wait(timeout=10)
        for _ in range(2):  # the request that meets the loss, then one on the lost model
            r = httpx.post(f"{base}/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=120)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "rpc_server_lost"
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
        rpc_proc.kill()


SPLIT_SCRIPT = r'''
import sys
from led_local import Llama
with Llama(sys.argv[1], n_ctx=256, n_seq_max=1, n_threads=1, rpc_servers=sys.argv[2:], n_gpu_layers=-1, verbose=True):
    pass
'''


def test_rpc_server_mem_sets_how_layers_are_split(smollm2_path):
    """llama.cpp splits layers across devices by the free memory they report: `--mem 64` beside `--mem 192`
    gets a quarter of smollm2's 30 blocks (7.5 x 2.25 MiB) and the other server the rest and the head
    (24.6 MiB): 18 % of the weights. Reporting the machine's memory on both would give the first 37 %."""
    servers = [start_rpc_server("--mem", mb) for mb in ("64", "192")]
    try:
        r = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT, str(smollm2_path), *[e for _, e in servers]],
                           capture_output=True, text=True, timeout=300)
    finally:
        for proc, _ in servers:
            proc.kill()
    assert r.returncode == 0, r.stderr[-3000:]
    sizes = {e: float(mb) for e, mb in re.findall(r"RPC\d+\[([\d.:]+)\] model buffer size =\s*([\d.]+) MiB", r.stderr)}
    small, large = (sizes[e] for _, e in servers)
    assert 0.12 < small / (small + large) < 0.25, sizes
