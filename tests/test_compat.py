"""llama-cpp-python's documented high-level examples (its README: completion, streaming, chat, JSON mode,
JSON schema, logprobs, tokenize) run against `led_local.Llama` with only the import swapped, and the same
script against upstream `llama_cpp.Llama` on the reference build: what each returns is checked (keys, types,
JSON that parses and validates) and the response keys agree with upstream's.

Function calling (README's `chatml-function-calling` example) runs on Qwen2.5-Coder-1.5B-Instruct, whose own
template is ChatML with tools; embeddings on SmolLM2 with `embedding=True`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from upstream_build import upstream_env

# the examples, as a user would write them; IMPORT is the one line that differs
SCRIPT = r'''
import json, sys
IMPORT
path = sys.argv[1]
out = {}
llm = Llama(model_path=path, n_ctx=2048, n_threads=1, seed=1337, logits_all=True, verbose=False,
            flash_attn=True)  # (llama-cpp-python's default is off, led-local's llama.cpp's auto: same kernels)

out["completion"] = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\n"],
                        echo=True, temperature=0)
out["stream"] = [c for c in llm.create_completion("Once upon a time", max_tokens=6, stream=True, seed=3)]
out["chat"] = llm.create_chat_completion(messages=[
    {"role": "system", "content": "You are an assistant who perfectly describes images."},
    {"role": "user", "content": "Describe this image in detail please."}], max_tokens=24, seed=2)
out["json_mode"] = llm.create_chat_completion(messages=[
    {"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
    {"role": "user", "content": "Who won the world series in 2020"}],
    response_format={"type": "json_object"}, temperature=0.7, max_tokens=200, seed=4)
out["json_schema"] = llm.create_chat_completion(messages=[
    {"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
    {"role": "user", "content": "Who won the world series in 2020"}],
    response_format={"type": "json_object", "schema": {
        "type": "object", "properties": {"team_name": {"type": "string", "maxLength": 40}},
        "required": ["team_name"]}}, temperature=0.7, max_tokens=200, seed=4)
out["logprobs"] = llm.create_completion("The capital of France is", max_tokens=4, logprobs=3, temperature=0)
out["chat_logprobs"] = llm.create_chat_completion(messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
                                                   logprobs=True, top_logprobs=2, temperature=0)
tokens = llm.tokenize(b"Hello, world!")
out["tokenize"] = {"tokens": tokens, "text": llm.detokenize(tokens).decode()}
out["accessors"] = {"n_ctx": llm.n_ctx(), "n_vocab": llm.n_vocab(), "n_embd": llm.n_embd(),
                    "token_bos": llm.token_bos(), "token_eos": llm.token_eos()}
embedder = Llama(model_path=path, embedding=True, verbose=False)
out["embedding"] = embedder.create_embedding(["Hello, world!", "Goodbye, world!"])
print(json.dumps(out, default=float))  # (upstream hands out numpy floats)
'''

# README's function calling example, as written (a ChatML model: Qwen2.5-Coder-1.5B-Instruct)
FUNCTION_SCRIPT = r'''
import json, sys
IMPORT
llm = Llama(model_path=sys.argv[1], chat_format="chatml-function-calling", n_threads=2, verbose=False)
out = {"function_calling": llm.create_chat_completion(
      messages = [
        {"role": "system", "content": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. The assistant calls functions with appropriate input when necessary"},
        {"role": "user", "content": "Extract Jason is 25 years old"}
      ],
      tools=[{
        "type": "function",
        "function": {
          "name": "UserDetail",
          "parameters": {
            "type": "object",
            "title": "UserDetail",
            "properties": {
              "name": {"title": "Name", "type": "string"},
              "age": {"title": "Age", "type": "integer"}
            },
            "required": [ "name", "age" ]
          }
        }
      }],
      tool_choice={"type": "function", "function": {"name": "UserDetail"}},
      temperature=0)}
print(json.dumps(out))
'''

OURS = "from led_local import Llama"
UPSTREAM = "from llama_cpp import Llama"

# what led-local adds beyond llama-cpp-python 0.3.36's responses: OpenAI's usage.prompt_tokens_details, and a
# stream's closing chunk with the usage (OpenAI's stream_options.include_usage shape)
EXTRA_KEYS = ("usage.prompt_tokens_details", "usage.prompt_tokens_details.cached_tokens")
STREAM_EXTRA = ("[].usage", "[].usage.completion_tokens", "[].usage.prompt_tokens", "[].usage.total_tokens")


def run(script: str, model: str, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", script, model], capture_output=True, text=True, timeout=900,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def shape(value, prefix: str = "") -> dict[str, str]:
    """Every key path in a response with the JSON type found there (lists: their items)."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            out[path] = "null" if v is None else type(v).__name__
            out |= shape(v, path)
    elif isinstance(value, list):
        for v in value:
            out |= shape(v, prefix + "[]")
    return out


@pytest.fixture(scope="module")
def ours(smollm2_path):
    return run(SCRIPT.replace("IMPORT", OURS), str(smollm2_path))


@pytest.fixture(scope="module")
def upstream_out(upstream, smollm2_path):
    return run(SCRIPT.replace("IMPORT", UPSTREAM), str(smollm2_path), upstream_env(upstream))


@pytest.fixture(scope="module")
def ours_functions(qwen15_path):
    return run(FUNCTION_SCRIPT.replace("IMPORT", OURS), str(qwen15_path))


def test_function_calling_example(ours_functions):
    import jsonschema

    choice = ours_functions["function_calling"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "UserDetail" and call["id"]
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                               "required": ["name", "age"]})
    assert args == {"name": "Jason", "age": 25}


@pytest.mark.upstream
def test_function_calling_agrees_with_upstream(ours_functions, upstream, qwen15_path):
    theirs = run(FUNCTION_SCRIPT.replace("IMPORT", UPSTREAM), str(qwen15_path), upstream_env(upstream))
    a, b = shape(ours_functions), shape(theirs)
    # upstream also repeats the first call as the deprecated `function_call`, which OpenAI's API does not
    # return beside tool_calls (nor does llama-server)
    missing = {k: v for k, v in b.items() if k not in a and ".message.function_call" not in k}
    assert not missing, missing
    mine = json.loads(ours_functions["function_calling"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    want = json.loads(theirs["function_calling"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert mine == want


def test_the_examples_return_what_they_document(ours):
    import jsonschema

    c = ours["completion"]
    assert c["object"] == "text_completion" and c["choices"][0]["text"].startswith("Q: Name the planets")
    assert "\n" not in c["choices"][0]["text"] and c["usage"]["completion_tokens"] >= 1
    assert ours["stream"][-1]["usage"]["completion_tokens"] == 6  # the closing chunk carries the usage
    text = "".join(ch["choices"][0]["text"] for ch in ours["stream"] if ch["choices"])
    assert text and all(ch["object"] == "text_completion" for ch in ours["stream"])
    assert ours["chat"]["choices"][0]["message"]["role"] == "assistant"
    for key in ("json_mode", "json_schema"):
        choice = ours[key]["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        answer = json.loads(choice["message"]["content"])
        assert isinstance(answer, dict)
    jsonschema.validate(json.loads(ours["json_schema"]["choices"][0]["message"]["content"]),
                        {"type": "object", "properties": {"team_name": {"type": "string"}}, "required": ["team_name"]})
    lp = ours["logprobs"]["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 4 and all(len(t) == 3 for t in lp["top_logprobs"])
    assert all(x <= 0 for x in lp["token_logprobs"])
    content = ours["chat_logprobs"]["choices"][0]["logprobs"]["content"]
    assert content and all(len(c["top_logprobs"]) == 2 for c in content)
    assert ours["tokenize"]["text"].endswith("Hello, world!")
    e = ours["embedding"]
    assert e["object"] == "list" and [d["index"] for d in e["data"]] == [0, 1]
    assert all(len(d["embedding"]) == ours["accessors"]["n_embd"] for d in e["data"])
    assert all(isinstance(x, float) for x in e["data"][0]["embedding"]) and e["usage"]["prompt_tokens"] > 0


@pytest.mark.upstream
def test_the_examples_agree_with_upstream(ours, upstream_out):
    """Same keys and types as llama-cpp-python's answers (led-local's additions listed in EXTRA_KEYS), the
    same greedy text where both decode greedily, the same tokens and model facts."""
    for case in ours:
        a, b = shape(ours[case]), shape(upstream_out[case])
        missing = {k: v for k, v in b.items() if k not in a}
        assert not missing, (case, missing)
        extra = {k for k in a if k not in b and not k.endswith(EXTRA_KEYS) and not (case == "stream" and k.startswith(STREAM_EXTRA))}
        assert not extra, (case, extra)
        differ = {k: (a[k], b[k]) for k in b if a[k] != b[k] and "null" not in (a[k], b[k])
                  and {a[k], b[k]} != {"int", "float"}}
        assert not differ, (case, differ)
    assert ours["completion"]["choices"][0]["text"] == upstream_out["completion"]["choices"][0]["text"]
    assert ours["tokenize"] == upstream_out["tokenize"]
    assert ours["accessors"] == upstream_out["accessors"] | {"n_ctx": ours["accessors"]["n_ctx"]}
    want = [t for t in upstream_out["logprobs"]["choices"][0]["logprobs"]["tokens"]]
    assert ours["logprobs"]["choices"][0]["logprobs"]["tokens"] == want
    for x, y in zip(ours["logprobs"]["choices"][0]["logprobs"]["token_logprobs"],
                    upstream_out["logprobs"]["choices"][0]["logprobs"]["token_logprobs"]):
        assert x == pytest.approx(y, abs=1e-4)
