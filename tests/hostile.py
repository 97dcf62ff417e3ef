"""Hostile and odd requests for `led-local serve`, shared by tests/test_hostile.py (which asserts each one's
answer) and bench/bench_hostile.py (which reports how /health and a neighbour's request fare meanwhile).

A case: what to send, the status that must come back, and the `param` its OpenAI-shaped error names (None:
any). Every body asks for at most a few tokens, so a case that wrongly gets through ends quickly.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import dataclass, field

import httpx

CHAT = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    param: str | None = None
    path: str = "/v1/chat/completions"
    method: str = "POST"
    body: object = None           # JSON body (json.dumps allows NaN and Infinity, as a hostile client may)
    content: bytes | None = None  # raw body instead
    headers: dict = field(default_factory=dict)
    says: str = ""                # a phrase the error's message must hold (which guard answered)


def chat(**fields) -> dict:
    return {"messages": CHAT, "max_tokens": 2, **fields}


def completion(**fields) -> dict:
    return {"prompt": "Hello", "max_tokens": 2, **fields}


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


CASES = [
    # grammars (GBNF): llama.cpp's parser is recursive, its grammar step multiplies nullable positions
    Case("grammar nested 30,000 parentheses (60 KB)", 400, "grammar",
         body=chat(grammar="root ::= " + "(" * 30000 + '"a"' + ")" * 30000)),
    Case("grammar nested 10,000 parentheses", 400, "grammar",
         body=chat(grammar="root ::= " + "(" * 10000 + '"a"' + ")" * 10000)),
    Case("grammar nested 65 deep", 400, "grammar", body=chat(grammar="root ::= " + "(" * 65 + '"a"' + ")" * 65),
         says="nests parentheses 65 deep"),  # counted before parsing, not by the parser's own guard
    Case("grammar nullable repetition {0,200}", 400, "grammar", body=chat(grammar='root ::= ("a"?){0,200}')),
    Case("grammar 200 optional items in a row", 400, "grammar", body=chat(grammar="root ::= " + '"a"? ' * 200)),
    Case("grammar nested nullable repetitions", 400, "grammar", body=chat(grammar='root ::= (("a"?){0,8}){0,8}'),
         says="match nothing"),
    Case("grammar repetitions expanding to 4 M elements", 400, "grammar",
         body=chat(grammar='root ::= (("a"{100}){100}){400}')),
    Case("grammar over 256 KiB", 400, "grammar",
         body=chat(grammar="root ::= " + " | ".join(f'"w{i}"' for i in range(40000)))),
    Case("grammar repetition {3,1} (llama.cpp expands it until memory runs out)", 400, "grammar",
         body=chat(grammar='root ::= "a"{3,1}'), says="maximum below its minimum"),
    Case("grammar left-recursive through an empty item (llama.cpp runs out of memory)", 400, "grammar",
         body=chat(grammar='root ::= r0 root "a" | "b"\nr0 ::= "c"?'), says="can reach itself"),
    Case("grammar nested 5,000 deep after a broken token (found by tests/fuzz_grammar.py)", 400, "grammar",
         body=chat(grammar="root ::= <[151" + "(" * 10 + ">" + "(" * 5000 + '"n"' + ")" * 5010 + "644]>"),
         says="groups nest more than 64"),
    Case("grammar that does not parse", 400, "grammar", body=chat(grammar="root ::= ((")),
    Case("grammar with left recursion", 400, "grammar", body=chat(grammar='root ::= root "a" | "b"')),
    Case("grammar without root", 400, "grammar", body=chat(grammar='start ::= "a"')),
    Case("grammar on a completion, nested 30,000", 400, "grammar", path="/v1/completions",
         body=completion(grammar="root ::= " + "(" * 30000 + '"a"' + ")" * 30000)),
    # JSON schemas, before json-schema-to-grammar converts them
    Case("schema with 2,000 optional properties (40 KB)", 400, "response_format",
         body=chat(response_format=_schema_format(
             {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}))),
    Case("schema nested 40 deep", 400, "response_format", body=chat(response_format=_schema_format(_nested_schema(40)))),
    Case("schema enum of 5,000 values", 400, "response_format",
         body=chat(response_format=_schema_format({"enum": list(range(5000))}))),
    Case("schema over 64 KiB", 400, "response_format",
         body=chat(response_format=_schema_format({"description": "x" * 70000, "type": "object"}))),
    Case("json_object schema with 2,000 properties", 400, "response_format",
         body=chat(response_format={"type": "json_object", "schema": {
             "type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(2000)}}})),
    Case("schema minLength above maxLength (found by tests/fuzz_grammar.py)", 400, "response_format",
         body=chat(response_format=_schema_format({"type": "string", "minLength": 3, "maxLength": 1}))),
    Case("schema whose allOf refers to itself (the converter's stack overflows)", 400, "response_format",
         body=chat(response_format=_schema_format({"$defs": {"d": {"type": "object", "properties": {
             "p0": {"allOf": [{"$ref": "#/$defs/d"}]}}}}, "$ref": "#/$defs/d"})),
         says="merging it never ends"),
    Case("schema anyOf that refers to itself first (left recursion)", 400, "response_format",
         body=chat(response_format=_schema_format({"$defs": {"d": {"anyOf": [{"$ref": "#/$defs/d"},
                                                                            {"type": "null"}]}},
                                                   "$ref": "#/$defs/d"}))),
    Case("schema minItems above maxItems", 400, "response_format",
         body=chat(response_format=_schema_format({"type": "array", "minItems": 9, "maxItems": 2}))),
    Case("response_format of an unknown type", 400, "response_format",
         body=chat(response_format={"type": "yaml"})),
    Case("200 tools", 400, "tools", body=chat(tools=[_tool(f"f{i}", {"type": "object"}) for i in range(200)])),
    Case("a tool whose schema has 2,000 properties", 400, "tools",
         body=chat(tools=[_tool("f", {"type": "object", "properties": {f"p{i}": {"type": "string"}
                                                                      for i in range(2000)}})])),
    # sizes at the door
    Case("a 50 MB prompt", 413, content=json.dumps(completion(prompt="x" * (50 << 20))).encode(),
         path="/v1/completions", headers={"content-type": "application/json"}),
    Case("a 9 MB body declared by Content-Length", 413, content=b" " * (9 << 20),
         headers={"content-type": "application/json"}),
    Case("a 7 MB prompt, under the body limit", 400, "prompt", path="/v1/completions",
         body=completion(prompt="word " * ((7 << 20) // 5)), says="bytes, more than the context window"),
    Case("a 7 MB chat message, under the body limit", 400, "messages",
         body={"messages": [{"role": "user", "content": "word " * ((7 << 20) // 5)}], "max_tokens": 2},
         says="bytes, more than the context window"),
    Case("a grammar of 2,000 alternatives", 400, "grammar",
         body=chat(grammar="root ::= " + " | ".join(f'"w{i}"' for i in range(2000))), says="alternatives"),
    Case("50,000 messages (2 MB)", 400, "messages", body={"messages": CHAT * 50000, "max_tokens": 2}),
    Case("2,000 stop strings of 400 characters", 400, "stop", body=chat(stop=["x" * 400] * 2000)),
    Case("a stop string of 10,000 characters", 400, "stop", body=chat(stop="y" * 10000)),
    # integers out of range: a 400 naming the field, never a 500 or an allocation sized by the request
    Case("top_k = 10**12", 400, "top_k", body=chat(top_k=10**12)),
    Case("led.k = 2e9", 400, "led.k", body=chat(sampler="led", led={"k": 2 * 10**9})),
    Case("led.k = 2e8", 400, "led.k", body=chat(sampler="led", led={"k": 2 * 10**8})),
    Case("led.k beyond the vocabulary", 400, "led.k", body=chat(sampler="led", led={"k": 100000})),
    Case("led.d = 10**6", 400, "led.d", body=chat(sampler="led", led={"d": 10**6})),
    Case("led.d beyond the model's blocks", 400, "led.d", body=chat(sampler="led", led={"d": 40})),
    Case("seed = 2**40", 400, "seed", body=chat(seed=2**40)),
    Case("seed = -1", 400, "seed", body=chat(seed=-1)),
    Case("n = 10**12", 400, "n", body=chat(n=10**12)),
    Case("max_tokens = 10**15", 400, "max_tokens", body=chat(max_tokens=10**15)),
    Case("legacy logprobs = 1000", 400, "logprobs", path="/v1/completions", body=completion(logprobs=1000)),
    Case("top_logprobs = 100", 400, "top_logprobs", body=chat(logprobs=True, top_logprobs=100)),
    Case("temperature = NaN", 400, "temperature", body=chat(temperature=float("nan"))),
    Case("temperature = Infinity", 400, "temperature", body=chat(temperature=float("inf"))),
    Case("logit_bias of 200,000 unknown tokens", 400, "logit_bias",
         body=chat(logit_bias={str(10**6 + i): 1 for i in range(200000)})),
    Case("mirostat = 7", 400, "mirostat", body=chat(mirostat=7)),
    # DNS rebinding: a loopback server answers only this machine's names
    Case("Host: evil.example", 403, path="/v1/models", method="GET", headers={"host": "evil.example"}),
    Case("Host: evil.example:8080 on a chat", 403, body=chat(), headers={"host": "evil.example:8080"}),
    Case("Host: localhost.evil.example", 403, path="/v1/models", method="GET",
         headers={"host": "localhost.evil.example"}),
    Case("Host: 127.0.0.1.nip.io", 403, path="/v1/models", method="GET", headers={"host": "127.0.0.1.nip.io"}),
    # OpenAI's error shape for what FastAPI would answer itself
    Case("unknown path", 404, path="/v1/nothing-here", method="GET"),
    Case("wrong method", 405, path="/v1/chat/completions", method="GET"),
    Case("body that is not JSON", 400, content=b"{not json", headers={"content-type": "application/json"}),
    Case("body that is a JSON list", 400, content=b"[1, 2]", headers={"content-type": "application/json"}),
    Case("empty body", 400, content=b"", headers={"content-type": "application/json"}),
    Case("JSON nested 100,000 deep", 400, content=b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}",
         headers={"content-type": "application/json"}),
    Case("no messages", 400, "messages", body={"messages": [], "max_tokens": 2}),
    Case("unknown field", 400, "frobnicate", body=chat(frobnicate=1)),
]

# hosts a loopback server must keep answering
GOOD_HOSTS = ["localhost", "127.0.0.1", "127.8.9.10:1234", "[::1]:8080", "app.localhost"]


def encoded(case: Case) -> bytes | None:
    """The case's body as sent."""
    if case.content is not None:
        return case.content
    return json.dumps(case.body).encode() if case.body is not None else None


def send(base: str, case: Case, timeout: float = 120, content: bytes | None = None) -> httpx.Response:
    """`base`: http://127.0.0.1:PORT (no /v1). `content`: the body already encoded (encoded(case))."""
    content = encoded(case) if content is None else content
    headers = dict(case.headers)
    if content is not None:
        headers.setdefault("content-type", "application/json")
    return httpx.request(case.method, base + case.path, content=content, headers=headers, timeout=timeout)


def error_of(response: httpx.Response) -> dict:
    """The OpenAI-shaped error of a response ({"error": {message, type, param, code}}), checked."""
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    return err


def normal_completion(base: str, max_tokens: int = 2, timeout: float = 60) -> dict:
    r = httpx.post(base + "/v1/completions", json={"prompt": "Hello", "max_tokens": max_tokens, "temperature": 0},
                   timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


@dataclass
class Neighbours:
    """How the rest of the server fared while a hostile request was in flight."""
    health_seconds: list[float]
    completion_seconds: float


def while_in_flight(base: str, case: Case) -> tuple[httpx.Response, Neighbours]:
    """Send the case and, while it is in flight, poll /health (from the start until it is answered, at least
    once) and run a 2-token completion on another slot beside it."""
    # the client's own work stays out of the window: the body is encoded before, and the polls reuse one
    # connection (a new httpx client per poll builds an SSL context, tens of milliseconds of this process's
    # GIL, which encoding a 3 MB body in the sending thread would also hold)
    content = encoded(case)
    with concurrent.futures.ThreadPoolExecutor(2) as pool, httpx.Client(timeout=30) as poller:
        hostile = pool.submit(send, base, case, 120, content)

        def beside() -> float:
            started = time.perf_counter()
            normal_completion(base)
            return time.perf_counter() - started
        completion = pool.submit(beside)
        health = []
        while True:
            t = time.perf_counter()
            assert poller.get(base + "/health").status_code == 200
            health.append(time.perf_counter() - t)
            if (hostile.done() and completion.done()) or len(health) >= 200:
                break
            time.sleep(0.01)
        return hostile.result(), Neighbours(health, completion.result())
