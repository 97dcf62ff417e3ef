"""A server that no request can take down: hostile and odd requests against a real `led-local serve`
(SmolLM2-135M, the real llama.cpp, no mocks). Each case must get its status in OpenAI's error shape, naming
the field to blame; while it is in flight /health answers and a 2-token completion on the other slot
finishes; after it, the server still answers a normal request. The cases live in tests/hostile.py, shared
with bench/bench_hostile.py, which reports the worst /health latency against the 100 ms goal (a timed
assertion here uses a looser bound: these tests share a 2-core machine with whatever else runs)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import CASES, GOOD_HOSTS, Case, chat, error_of, normal_completion, send, while_in_flight
from serving import start_server

pytestmark = pytest.mark.slow

HEALTH_BOUND = 0.5  # seconds: generous on a loaded CI machine; bench_hostile.py measures the 100 ms goal


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


@pytest.fixture(scope="module")
def served(smollm2_path):
    # a small pool, so that warming it up whole (below) is quick
    proc, base = start_server(smollm2_path, "--parallel", "2", "--max-sample-seconds", "0.15", "--ctx", "2048")
    root = base[: -len("/v1")]
    # warm: the first requests allocate what every later one reuses, concurrent ones the worker threads
    # (each with its own C heap arena)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: normal_completion(root, 8), range(16)))
    # and a prompt over (nearly) the whole KV pool, whose pages are touched only when cells are first used
    r = httpx.post(root + "/v1/completions", json={"prompt": "Once upon a time " * 500, "max_tokens": 1},
                   timeout=600)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 1900, r.text[:300]
    yield proc, root, {"rss_before": _rss(proc.pid)}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_request_gets_its_error_and_harms_no_one(served, case):
    proc, root, _ = served
    response, neighbours = while_in_flight(root, case)
    assert response.status_code == case.status, response.text[:300]
    err = error_of(response)
    if case.param is not None:
        assert err["param"] == case.param, err
    assert case.says in err["message"], err
    assert max(neighbours.health_seconds) < HEALTH_BOUND, neighbours
    assert proc.poll() is None
    assert normal_completion(root)["choices"][0]["finish_reason"] in ("length", "stop")


def test_preparing_a_request_never_blocks_the_event_loop(smollm2_path):
    """The most a chat may ask the template and the tokenizer to do (2,047 turns, just under the prompt's
    byte bound of an 8,192-cell server): /health, polled meanwhile, answers in well under the request's own
    time, which it could not if rendering or tokenizing ran on the event loop."""
    proc, base = start_server(smollm2_path, "--ctx", "8192")
    root = base[: -len("/v1")]
    turns = [{"role": ("user", "assistant")[i % 2], "content": "word " * 60} for i in range(2047)]
    case = Case("2,047 turns", 400, body={"messages": turns, "max_tokens": 2})
    started = time.perf_counter()
    response, neighbours = while_in_flight(root, case)
    took = time.perf_counter() - started
    proc.terminate()
    proc.wait(timeout=10)
    assert response.status_code == 400, response.text[:300]
    assert max(neighbours.health_seconds) < max(0.1, took / 3), (neighbours.health_seconds, took)


def test_count_of_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_this_machines_names_are_answered(served, host):
    _, root, _ = served
    assert httpx.get(root + "/v1/models", headers={"host": host}).status_code == 200


def _banned_for(smollm2_path, first_bytes: tuple[bytes, ...]) -> dict:
    from led_local import Llama
    with Llama(str(smollm2_path), n_ctx=64, n_seq_max=1) as smol:
        return {str(t): float("-inf") for t in range(smol.n_vocab()) if smol.token_to_bytes(t)[:1] in first_bytes}


def test_constraints_that_allow_no_token_are_a_400_streamed_or_not(served, smollm2_path):
    _, root, _ = served
    body = chat(grammar='root ::= "yes" | "no"', logit_bias=_banned_for(smollm2_path, (b"y", b"n")))
    headers = {"content-type": "application/json"}  # (-Infinity: JSON as Python writes it, not httpx's json=)
    r = httpx.post(root + "/v1/chat/completions", content=json.dumps(body), headers=headers, timeout=60)
    assert r.status_code == 400 and error_of(r)["param"] == "grammar"
    with httpx.stream("POST", root + "/v1/chat/completions", content=json.dumps({**body, "stream": True}),
                      headers=headers, timeout=60) as s:
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:") and "[DONE]" not in line]
    err = events[-1]["error"]
    assert set(err) == {"message", "type", "param", "code"} and "allow no token" in err["message"]
    normal_completion(root)


def _rule_chain(n: int) -> str:
    """A grammar the static bounds pass (each rule has one optional item) but whose step is slow: n links
    that all accept the same character, so every token of a's splits over all of them."""
    rules = [f'r{i} ::= "a"? r{i + 1}' for i in range(n)] + [f'r{n} ::= "b"', "root ::= r0"]
    return "\n".join(rules)


def test_a_grammar_too_costly_per_token_ends_with_an_error_and_the_others_go_on(served):
    """The server runs with --max-sample-seconds 0.15; an 80-link chain costs ~0.5 s a token here."""
    _, root, _ = served
    neighbour: dict = {}

    def stream_beside():
        with httpx.stream("POST", root + "/v1/completions", json={"prompt": "Once", "max_tokens": 24,
                                                                    "temperature": 0}, timeout=120) as s:
            neighbour["status"] = s.status_code
            neighbour["text"] = s.read()

    t = threading.Thread(target=stream_beside)
    t.start()
    r = httpx.post(root + "/v1/completions", json={"prompt": "a", "max_tokens": 8, "grammar": _rule_chain(80)},
                   timeout=120)
    t.join()
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["code"] == "sampling_too_costly" and err["param"] == "grammar"
    assert neighbour["status"] == 200 and json.loads(neighbour["text"])["usage"]["completion_tokens"] > 0


def test_a_non_streamed_request_whose_client_hangs_up_frees_its_slot(served):
    _, root, _ = served
    port = int(root.rsplit(":", 1)[1])
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 1.0}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.send(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.time() + 30
    while httpx.get(root + "/health").json()["slots_processing"] == 0:
        assert time.time() < deadline
        time.sleep(0.02)
    s.close()
    t = time.time()
    while httpx.get(root + "/health").json()["slots_processing"] > 0:
        assert time.time() - t < 5, "the slot still generates for a client that hung up"
        time.sleep(0.02)


def test_connections_that_never_finish_their_headers_are_closed(served):
    _, root, _ = served
    port = int(root.rsplit(":", 1)[1])
    socks = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.send(b"GET /v1/models HTTP/1.1\r\nHost: local")
        socks.append(s)
    assert normal_completion(root)  # the server answers meanwhile
    started = time.time()
    for s in socks:
        s.settimeout(30)
        assert s.recv(100) == b""  # closed by the server, not by us
        s.close()
    assert time.time() - started < 20


# --- property-based: generated bodies never get a 5xx -------------------------------------------------------

_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                       | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4),
                       max_leaves=12)
_fields = ["model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stop", "seed", "sampler",
           "led", "dola_layers", "repeat_penalty", "frequency_penalty", "presence_penalty", "logit_bias",
           "typical_p", "mirostat", "grammar", "response_format", "logprobs", "top_logprobs", "tools",
           "tool_choice", "echo", "suffix", "messages", "prompt", "stream_options", "user"]
_bodies = st.dictionaries(st.sampled_from(_fields), _values, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=_bodies, endpoint=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       base=st.sampled_from([{"messages": [{"role": "user", "content": "hi"}]}, {"prompt": "hi"}, {}]))
def test_generated_bodies_never_get_a_server_error(served, body, endpoint, base):
    _, root, _ = served
    merged = {**base, **body}
    # a body that happens to be valid still finishes quickly
    if not isinstance(merged.get("max_tokens"), int) or not 0 < merged["max_tokens"] <= 4:
        merged["max_tokens"] = 2
    merged.pop("max_completion_tokens", None)
    r = httpx.post(root + endpoint, content=json.dumps(merged).encode(),
                   headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code < 500, (merged, r.text[:300])
    if r.status_code >= 400:
        error_of(r)


def test_memory_after_the_whole_hostile_run(served):
    """Every case once more (so the test stands alone, as the mutation check runs it), then RSS within 1.1x
    of what it was after warm-up."""
    proc, root, state = served
    for case in CASES:
        send(root, case)
    normal_completion(root)
    assert _rss(proc.pid) <= 1.1 * state["rss_before"], (_rss(proc.pid), state["rss_before"])


# --- the queue bound and shutdown: servers of their own -----------------------------------------------------

def test_the_queue_bound_counts_streams(smollm2_path):
    proc, base = start_server(smollm2_path, "--parallel", "1", "--max-queue", "2")
    try:
        codes: list[int] = []

        def one():
            with httpx.stream("POST", base + "/completions", json={"prompt": "Once", "max_tokens": 30, "stream": True},
                              timeout=120) as r:
                codes.append(r.status_code)
                r.read()
        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # one running and two waiting at the most; the rest refused at the door
        assert codes.count(200) <= 3 and codes.count(503) >= 17, codes
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("state", ["idle", "mid-stream", "mid-prompt"])
def test_sigterm_exits_within_5_seconds_and_ends_streams_with_an_error(smollm2_path, qwen15_path, state):
    """mid-prompt: the 1.5B evaluating a 6,000-token prompt, whose every 512-token step takes several
    seconds on one thread (the step in progress must be aborted, not waited for)."""
    model = qwen15_path if state == "mid-prompt" else smollm2_path
    proc, base = start_server(model, "--parallel", "2", "--ctx", "8192")
    try:
        lines: list[str] = []
        if state != "idle":
            prompt = "Once upon a time " * (1500 if state == "mid-prompt" else 1)
            stream = httpx.stream("POST", base + "/completions", json={"prompt": prompt, "max_tokens": 2000,
                                                                       "stream": True}, timeout=60)
            response = stream.__enter__()
            it = response.iter_lines()
            if state == "mid-stream":
                lines.append(next(it))
            else:
                time.sleep(1.0)
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        if state != "idle":
            lines.extend(it)
        proc.wait(timeout=30)
        assert time.time() - started <= 5
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
        if state != "idle":
            events = [json.loads(x[5:]) for x in lines if x.startswith("data:") and "[DONE]" not in x]
            assert events and events[-1].get("error", {}).get("code") == "server_shutting_down", lines[-3:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- fuzz: generated grammars and schemas through the real llama.cpp parsers (in process: a crash fails the run)

_atoms = st.sampled_from(['"a"', '"ab"', '""', "[a-z]", "[^x]", ".", "r1", "root", "<[1]>", '"\\\\n"', "[\\\\]]"])
_postfix = st.sampled_from(["", "", "?", "*", "+", "{2}", "{0,3}", "{1,}", "{40}", "{0,2000}"])
_pieces = st.recursive(
    st.tuples(_atoms, _postfix).map("".join),
    lambda inner: st.tuples(st.lists(inner, min_size=1, max_size=4).map(" ".join), st.sampled_from([" ", " | "]),
                            st.lists(inner, min_size=1, max_size=3).map(" ".join), _postfix)
    .map(lambda t: f"({t[0]}{t[1]}{t[2]}){t[3]}"),
    max_leaves=12)
_grammars = st.one_of(
    st.tuples(_pieces, _pieces).map(lambda t: f"root ::= {t[0]}\nr1 ::= {t[1]}"),
    st.text(alphabet='root:= ()|"ab[]*+?{},0123456789\\\n#.<>!-', max_size=120))


@pytest.fixture(scope="module")
def smol_llama(smollm2_path):
    from led_local import Llama
    with Llama(str(smollm2_path), n_ctx=128, n_seq_max=1) as llm:
        yield llm


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(text=_grammars)
def test_generated_grammars_are_refused_or_parsed_never_a_crash(smol_llama, text):
    from led_local.sampling import Constraints
    try:
        Constraints(grammar=text).check(smol_llama.engine)  # llama.cpp's parser and its grammar's first stacks
    except ValueError:
        pass


_schemas = st.recursive(
    st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null")]
                    + [{"enum": [1, "a", None]}, {"const": "x"}, {"type": "string", "pattern": "^a+b?$"},
                       {"type": "string", "minLength": 2, "maxLength": 5000}, {"$ref": "#/nowhere"}]),
    lambda inner: st.one_of(
        st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=5)
        .map(lambda p: {"type": "object", "properties": p}),
        st.tuples(st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=5), st.booleans())
        .map(lambda t: {"type": "object", "properties": t[0], "required": list(t[0]) if t[1] else [],
                        "additionalProperties": t[1]}),
        inner.map(lambda i: {"type": "array", "items": i, "minItems": 1, "maxItems": 3}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"anyOf": xs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"allOf": xs})),
    max_leaves=15)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(schema=_schemas)
def test_generated_schemas_are_refused_or_converted_never_a_crash(smol_llama, schema):
    from led_local import LlamaGrammar
    from led_local.sampling import Constraints
    try:
        Constraints(grammar=LlamaGrammar.from_json_schema(schema)).check(smol_llama.engine)
    except ValueError:
        pass
