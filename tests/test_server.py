"""`led-local serve` end to end: the official `openai` client against the running server on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from serving import free_port, start_server

KEY = "test-key"


@pytest.fixture(scope="module")
def server(tiny_paths):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "led_local.cli", "serve", "--model", str(tiny_paths["qwen2-no-eos"]), "--threads", "1",
         "--port", str(port), "--api-key", KEY, "--parallel", "4", "--max-tokens-limit", "16000", "--ctx", "16384",
         "--quiet"],  # (nothing reads its stderr while it runs: an access log would fill the pipe)
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read())
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60)


CHAT = [{"role": "user", "content": "hello"}]


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["qwen2-no-eos"]


def test_chat_plain_and_streamed(client):
    r = client.chat.completions.create(model="x", messages=CHAT, max_tokens=12, temperature=0.7, seed=5)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens >= 1 and r.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="x", messages=CHAT, max_tokens=12, temperature=0.7, seed=5,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_and_n(client):
    r = client.completions.create(model="x", prompt="the cat", max_tokens=8, n=3, temperature=1.0, seed=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = client.completions.create(model="x", prompt="the cat", max_tokens=8, n=3, temperature=1.0, seed=2)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]
    streamed = ["", "", ""]
    for c in client.completions.create(model="x", prompt="the cat", max_tokens=8, n=3, temperature=1.0, seed=2,
                                       stream=True):
        for ch in c.choices:
            streamed[ch.index] += ch.text
    assert streamed == [c.text for c in r.choices]


@pytest.fixture(scope="module")
def direct(tiny_paths):
    """The server's model opened here the way `serve` opens it: what a direct call gives is the reference."""
    from led_local import Llama

    with Llama(tiny_paths["qwen2-no-eos"], n_threads=1, n_seq_max=4, n_ctx=16384) as llm:
        yield llm


BASE = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=7, max_tokens=24)
LED = {"d": 4, "k": 8, "latent_norm": False, "exploit": False, "think_only": False}

# (what differs from BASE, as Llama keywords); each group's first entry is what the others are compared with
FIELD_CASES = {
    "standard": [{}, {"top_p": 0.3}, {"top_k": 3}, {"min_p": 0.3}, {"repeat_penalty": 1.5}, {"temperature": 0.3},
                 {"frequency_penalty": 1.5}, {"presence_penalty": 1.5}, {"logit_bias": {"50": 6.0, "60": -100.0}},
                 {"typical_p": 0.4}, {"mirostat_mode": 2, "mirostat_tau": 1.0}, {"grammar": 'root ::= [a-e ]+ "."'}],
    "dola": [{"sampler": "dola", "dola_layers": "high"}, {"sampler": "dola", "dola_layers": "low"},
             {"sampler": "dola", "dola_layers": [1]}],
    # (a draw on which every LED field changes the text: on this flat model the coin explores ~90 % of the
    # steps either way, so `exploit` shows on a long enough answer only)
    "led": [{"sampler": "led", "led": LED | change, "temperature": 0.6, "seed": 5, "max_tokens": 64} for change in
            ({}, {"d": 3}, {"k": 2}, {"latent_norm": True}, {"exploit": True}, {"think_only": True})]
           + [{"sampler": "led", "led": LED, "temperature": 0.6, "seed": 5, "max_tokens": 64} | change for change in
              ({"logit_bias": {"50": 6.0}}, {"frequency_penalty": 1.5}, {"grammar": 'root ::= [a-e ]+ "."'})],
}


def _server_kwargs(case: dict) -> dict:
    """The same request through the official client: OpenAI's own fields as such, ours in extra_body."""
    kw = BASE | case
    extra = {k: kw.pop(k) for k in ("top_k", "min_p", "repeat_penalty", "sampler", "led", "dola_layers", "typical_p",
                                    "mirostat_tau", "grammar") if k in kw}
    if "mirostat_mode" in kw:
        extra["mirostat"] = kw.pop("mirostat_mode")  # llama-server's name
    return kw | {"extra_body": extra}


@pytest.mark.parametrize("group", FIELD_CASES)
def test_every_sampling_field_reaches_the_sampler(client, direct, group):
    """Each field changes what a direct Llama call generates, and the server's answer equals that call's:
    a field the server dropped would show."""
    cases = FIELD_CASES[group]
    expected = [direct.create_chat_completion(CHAT, **(BASE | c))["choices"][0]["message"]["content"] for c in cases]
    for case, want in zip(cases[1:], expected[1:]):
        assert want != expected[0], f"{case} does not change the output here; the check would be blind"
    for case, want in zip(cases, expected):
        r = client.chat.completions.create(model="x", messages=CHAT, **_server_kwargs(case))
        assert r.choices[0].message.content == want, case


def test_stop_and_max_completion_tokens_pass_through(client, direct):
    full = direct.create_chat_completion(CHAT, **BASE)["choices"][0]["message"]["content"]
    stop = full[8:11]
    want = direct.create_chat_completion(CHAT, **BASE, stop=[stop])["choices"][0]["message"]["content"]
    assert want == full[: full.index(stop)]
    r = client.chat.completions.create(model="x", messages=CHAT, stop=[stop], **_server_kwargs({}))
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    # OpenAI's newer field wins over the deprecated max_tokens
    kw = _server_kwargs({}) | {"max_tokens": 7}
    r = client.chat.completions.create(model="x", messages=CHAT, max_completion_tokens=5, **kw)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=-1), "temperature"),
    (dict(n=9), "n"),
    (dict(max_tokens=100000), "max_tokens"),  # above --max-tokens-limit
    (dict(extra_body={"sampler": "magic"}), "sampler"),
    (dict(extra_body={"sampler": "led", "led": {"d": 9}}), None),
    (dict(messages=[{"role": "user", "content": "the cat " * 20000}]), None),
])
def test_bad_requests_get_400_in_openai_shape(client, kwargs, param):
    args = dict(model="x", messages=CHAT, max_tokens=5) | kwargs
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    body = e.value.response.json()
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    if param:
        assert param in (body["error"]["param"] or body["error"]["message"])


@pytest.mark.parametrize("extra, param", [
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"echo": True}, "echo"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"grammar": "root ::= ("}, None),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages.tool_calls"),
    ({"logit_bias": {"999999": 1}}, None),
])
def test_fields_that_cannot_be_honoured_get_400(client, extra, param):
    """Never silently ignored: a field that would change the output and is not honoured is refused by name."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=CHAT, max_tokens=3, extra_body=extra)
    body = e.value.response.json()
    assert body["error"]["type"] == "invalid_request_error"
    if param:
        assert body["error"]["param"] == param and param.split(".")[-1] in body["error"]["message"]


def test_json_schema_response_format_through_the_official_client(client):
    import jsonschema

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    for sampler in ("standard", "led"):
        r = client.chat.completions.create(
            model="x", messages=CHAT, max_tokens=60, temperature=1.0, seed=4, extra_body={"sampler": sampler} | ({"led": LED} if sampler == "led" else {}),
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_logprobs_through_the_official_client(client, direct):
    """Chat's and the legacy completions' shapes, equal to a direct call's."""
    kw = dict(max_tokens=6, temperature=0.0)
    want = direct.create_chat_completion(CHAT, logprobs=True, top_logprobs=3, **kw)["choices"][0]["logprobs"]
    r = client.chat.completions.create(model="x", messages=CHAT, logprobs=True, top_logprobs=3, **kw)
    got = r.choices[0].logprobs.model_dump()
    assert len(got["content"]) == r.usage.completion_tokens == len(want["content"])
    for g, w in zip(got["content"], want["content"]):
        assert g["token"] == w["token"] and len(g["top_logprobs"]) == 3
        assert abs(g["logprob"] - w["logprob"]) < 1e-9
    c = client.completions.create(model="x", prompt="the cat", logprobs=2, **kw).choices[0]
    assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.text_offset)
    assert "".join(c.logprobs.tokens) == c.text and c.logprobs.text_offset[0] == len("the cat")


def test_harmless_and_neutral_fields_are_accepted(client):
    r = client.chat.completions.create(model="x", messages=CHAT, max_tokens=3, user="someone", logprobs=False,
                                       extra_body={"tools": [], "response_format": {"type": "text"}})
    assert r.choices[0].message.content is not None


def test_wrong_or_missing_api_key(server):
    bad = openai.OpenAI(base_url=server, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(f"{server}/chat/completions", json={"messages": CHAT})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_concurrent_clients(client):
    results, errors = {}, []

    def one(i: int) -> None:
        try:
            r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": f"hi {i}"}],
                                               max_tokens=16, temperature=0.9, seed=i)
            results[i] = r.choices[0].message.content
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    # each answer is the one its seed gives alone: requests did not disturb each other
    alone = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi 3"}],
                                           max_tokens=16, temperature=0.9, seed=3)
    assert results[3] == alone.choices[0].message.content


def test_disconnect_mid_stream_frees_the_slot(server, client):
    """A client that hangs up mid-stream has its job cancelled at the next step: its slot is idle again long
    before the generation could have ended by itself."""
    health = f"{server.rsplit('/v1', 1)[0]}/health"
    auth = {"Authorization": f"Bearer {KEY}"}
    long = {"prompt": "the cat", "max_tokens": 4000, "temperature": 1.0, "seed": 1}
    t = time.time()
    full = client.completions.create(model="x", **long)
    t_full = time.time() - t
    assert full.usage.completion_tokens == 4000  # long enough to tell an abandoned generation from a stopped one
    # the same generation streamed, and the client drops it after a few chunks
    with httpx.stream("POST", f"{server}/completions", headers=auth, json={**long, "stream": True}, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 5:
                break
    t = time.time()
    while httpx.get(health, headers=auth, timeout=5).json()["slots_processing"] and time.time() - t < t_full:
        time.sleep(0.02)
    assert time.time() - t < t_full / 3  # cancelled, not run to its end
    r = client.completions.create(model="x", prompt="the", max_tokens=4, temperature=0)
    assert r.choices[0].text is not None


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port`, read from /proc/net/tcp (no traffic sent)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # TCP_LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_binds_loopback_by_default_and_takes_the_key_from_the_environment(tiny_paths):
    port = free_port()
    env = {**os.environ, "LED_LOCAL_API_KEY": "from-env"}
    proc = subprocess.Popen([sys.executable, "-m", "led_local.cli", "serve", "--model", str(tiny_paths["llama-tied"]),
                             "--threads", "1", "--port", str(port), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                r = httpx.get(f"{base}/models", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        assert r.status_code == 401  # the key came from LED_LOCAL_API_KEY
        ok = httpx.get(f"{base}/models", headers={"Authorization": "Bearer from-env"}, timeout=5)
        assert ok.status_code == 200
        assert _listening_addresses(port) == {"127.0.0.1"}  # loopback only, not 0.0.0.0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_content_parts(client, direct):
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": parts}],
                                       **_server_kwargs({}))
    want = direct.create_chat_completion(CHAT, **BASE)["choices"][0]["message"]["content"]
    assert r.choices[0].message.content == want  # the same as the plain string "hello"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": [parts[0], image]}],
                                       max_tokens=4)
    assert "image_url" in e.value.response.json()["error"]["message"]


def test_a_disconnect_leaves_the_other_streams_intact(server, client):
    """Two streams decoded side by side; one client hangs up; the other's text is its solo run's."""
    body = {"prompt": "the cat", "max_tokens": 200, "temperature": 1.0, "seed": 9}
    alone = client.completions.create(model="x", **body).choices[0].text
    got: list[str] = []

    def keep() -> None:
        text = ""
        with httpx.stream("POST", f"{server}/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={**body, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
        got.append(text)

    t = threading.Thread(target=keep)
    t.start()
    with httpx.stream("POST", f"{server}/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={**body, "max_tokens": 3000, "stream": True}, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 10:
                break  # hang up
    t.join(timeout=120)
    assert got == [alone]
    # the hung-up job was cancelled at its next step: no slot stays busy
    deadline = time.time() + 10
    while httpx.get(f"{server.rsplit('/v1', 1)[0]}/health", headers={"Authorization": f"Bearer {KEY}"},
                    timeout=5).json()["slots_processing"] and time.time() < deadline:
        time.sleep(0.1)
    health = httpx.get(f"{server.rsplit('/v1', 1)[0]}/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert health.json() == {"status": "ok", "slots_idle": 4, "slots_processing": 0, "queued": 0}


def test_full_queue_gets_503_and_sigterm_ends_streams_cleanly(tiny_paths):
    proc, base = start_server(tiny_paths["qwen2-no-eos"], "--parallel", "1", "--max-queue", "1",
                               "--max-tokens-limit", "100000", "--ctx", "100000")
    try:
        long = {"prompt": "the cat", "max_tokens": 90000, "temperature": 1.0, "seed": 1, "stream": True}
        ended: list[str] = []

        def stream() -> None:
            last = ""
            with httpx.stream("POST", f"{base}/completions", json=long, timeout=60) as r:
                for line in r.iter_lines():
                    last = line or last
            ended.append(last)

        first = threading.Thread(target=stream)  # takes the one slot
        first.start()
        time.sleep(1.0)
        second = threading.Thread(target=stream)  # waits in the queue
        second.start()
        time.sleep(1.0)
        r = httpx.post(f"{base}/completions", json={"prompt": "x", "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "server_error"
        proc.send_signal(signal.SIGTERM)
        first.join(timeout=30)
        second.join(timeout=30)
        assert not first.is_alive() and not second.is_alive()  # the streams ended, nothing hangs
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_concurrent_requests_with_different_samplers_equal_their_solo_runs(client):
    """Standard and LED requests in flight together (decoded in the same steps) each give their solo text."""
    calls = [_server_kwargs({"seed": 3}), _server_kwargs(FIELD_CASES["led"][0])]
    alone = [client.chat.completions.create(model="x", messages=CHAT, **c).choices[0].message.content for c in calls]
    got: dict[int, str] = {}
    start = threading.Barrier(2)

    def one(i: int) -> None:
        start.wait()
        got[i] = client.chat.completions.create(model="x", messages=CHAT, **calls[i]).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [got.get(0), got.get(1)] == alone


def test_batch_invariant_flag_reaches_the_model(tiny_paths):
    proc, _ = start_server(tiny_paths["qwen2-no-eos"], "--batch-invariant")
    try:
        assert "batch-invariant kernels" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_embeddings_endpoint(tiny_paths, client):
    """`serve --embedding`: /v1/embeddings through the official client (base64 on the wire) equals a direct
    embedding Llama's unit vectors; a generation server answers 501 in OpenAI's shape."""
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model="x", input="hello")
    assert e.value.status_code == 501 and "--embedding" in e.value.response.json()["error"]["message"]
    proc, base = start_server(tiny_paths["qwen2-no-eos"], "--embedding")
    try:
        emb = openai.OpenAI(base_url=base, api_key="none", max_retries=0)
        got = emb.embeddings.create(model="x", input=["the cat", "a dog"])
        floats = emb.embeddings.create(model="x", input="the cat", encoding_format="float")
        with pytest.raises(openai.BadRequestError):
            emb.embeddings.create(model="x", input="the cat", dimensions=8)
        with pytest.raises(openai.APIStatusError) as e:
            emb.chat.completions.create(model="x", messages=CHAT, max_tokens=2)
        message = e.value.response.json()["error"]["message"]  # in the server's words, not the Python API's
        assert e.value.status_code == 501 and "started with --embedding" in message and "Llama" not in message
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    from led_local import Llama

    with Llama(tiny_paths["qwen2-no-eos"], n_threads=1, embedding=True) as llm:
        want = llm.embed(["the cat", "a dog"], normalize=True)
    np.testing.assert_allclose([d.embedding for d in got.data], want, atol=1e-6)
    np.testing.assert_allclose(floats.data[0].embedding, want[0], atol=1e-6)
    assert got.usage.prompt_tokens > floats.usage.prompt_tokens > 0


def test_access_log_one_line_per_request_and_quiet(tiny_paths):
    """`serve` logs method, path, status, prompt+completion tokens and time per request (a stream when it
    ends); `--quiet` logs nothing."""
    for quiet in (False, True):
        proc, base = start_server(tiny_paths["qwen2-no-eos"], *(["--quiet"] if quiet else []), access_log=True)
        try:
            httpx.post(f"{base}/completions", json={"prompt": "the cat", "max_tokens": 3}, timeout=60)
            with httpx.stream("POST", f"{base}/completions", timeout=60,
                              json={"prompt": "the cat", "max_tokens": 4, "stream": True}) as r:
                for _ in r.iter_lines():
                    pass
            httpx.post(f"{base}/completions", json={"prompt": "x", "max_tokens": 0}, timeout=60)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        lines = [ln for ln in proc.stderr.read().splitlines() if '"POST /v1/completions"' in ln]
        if quiet:
            assert lines == []
            continue
        assert len(lines) == 3, lines
        assert re.search(r'"POST /v1/completions" 200 \d+\+3 tokens \d+ ms$', lines[0]), lines[0]
        assert re.search(r'"POST /v1/completions" 200 \d+\+4 tokens \d+ ms$', lines[1]), lines[1]
        assert re.search(r'"POST /v1/completions" 400 \d+ ms$', lines[2]), lines[2]



def test_rendering_and_parsing_chats_never_wait_for_the_steps(tiny_paths):
    """The server's event loop renders and parses chats (chat.render, chat.parse) while the step thread holds
    the Llama's lock for each decode; waiting on that lock stalled every stream (8 clients' first tokens at 5.3x
    llama-server's, docs/benchmarks.md). With the lock held elsewhere, both still finish."""
    from led_local import Llama, chat

    with Llama(tiny_paths["qwen2-think-bias"], n_threads=1) as llm:
        held, release, done = threading.Event(), threading.Event(), []

        def hold() -> None:
            with llm.engine.lock:  # as Scheduler.step does
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(10)

        def render_and_parse() -> None:
            rendered = chat.render(llm, CHAT)
            done.append(chat.parse(llm, rendered, "<think>so</think>hello", partial=False))

        worker = threading.Thread(target=render_and_parse)
        worker.start()
        worker.join(10)
        release.set()
        holder.join()
        assert done and done[0]["content"], "rendering or parsing waited for the step thread's lock"
