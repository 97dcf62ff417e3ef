"""Tool calls and reasoning_content: chats rendered and read back by llama.cpp's common/chat (chat.py).

Tool calls run on Qwen2.5-Coder-1.5B-Instruct, the registry's model whose template has tools; the server's
through the official `openai` client. Reasoning runs on a tiny model with a thinking template.
"""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from led_local import Llama, chat
from serving import start_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather in Paris? And what is 2+3?"}]


def _check_calls(message: dict, names: set[str] | None = None) -> list[dict]:
    """The message's tool calls, each naming a tool and with arguments valid against its parameters."""
    calls = message.get("tool_calls")
    assert calls, message
    for c in calls:
        assert c["type"] == "function" and c["id"]
        name = c["function"]["name"]
        assert name in (names or SCHEMAS)
        jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[name])
    return calls


def _from_stream(chunks) -> tuple[dict, str]:
    """A streamed answer put back together as a message (tool calls from their deltas), and its finish reason."""
    content, reasoning, calls, reason = "", "", {}, None
    for ch in chunks:
        for c in ch["choices"]:
            d = c["delta"]
            content += d.get("content") or ""
            reasoning += d.get("reasoning_content") or ""
            for t in d.get("tool_calls") or []:
                call = calls.setdefault(t["index"], {"id": None, "type": "function",
                                                     "function": {"name": "", "arguments": ""}})
                call["id"] = t.get("id") or call["id"]
                call["function"]["name"] += t.get("function", {}).get("name") or ""
                call["function"]["arguments"] += t.get("function", {}).get("arguments") or ""
            reason = c["finish_reason"] or reason
    message = {"role": "assistant", "content": content or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, reason


@pytest.fixture(scope="module")
def qwen(qwen15_path):
    with Llama(qwen15_path, n_ctx=2048, n_seq_max=2, n_threads=2, verbose=False) as llm:
        yield llm


def _without_ids(message: dict) -> dict:
    return {**message, "tool_calls": [{**c, "id": None} for c in message.get("tool_calls", [])]}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["standard", "led"])
def test_required_tool_calls_come_back_as_tool_calls(qwen, sampler):
    """tool_choice="required": the call names a tool and its arguments validate against the tool's
    parameters; streamed, the deltas build the same message as the whole answer."""
    kw = dict(tools=TOOLS, tool_choice="required", max_tokens=80, seed=5, temperature=0.7, sampler=sampler)
    r = qwen.create_chat_completion(ASK, **kw)
    choice = r["choices"][0]
    assert choice["message"]["content"] is None
    # (this small model sometimes repeats its calls until max_tokens cuts the last one short)
    assert choice["finish_reason"] in ("tool_calls", "length")
    calls = choice["message"]["tool_calls"]
    _check_calls({"tool_calls": calls[:-1] if choice["finish_reason"] == "length" else calls})
    streamed, reason = _from_stream(qwen.create_chat_completion(ASK, stream=True, **kw))
    assert reason == choice["finish_reason"] and _without_ids(streamed) == _without_ids(choice["message"])


@pytest.mark.slow
def test_parallel_tool_calls(qwen):
    r = qwen.create_chat_completion(ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=True,
                                    max_tokens=120, temperature=0)
    calls = _check_calls(r["choices"][0]["message"])
    assert {c["function"]["name"] for c in calls} == {"get_weather", "add"}


@pytest.mark.slow
def test_a_named_tool_choice_calls_that_tool(qwen):
    r = qwen.create_chat_completion(ASK, tools=TOOLS, temperature=0, max_tokens=60,
                                    tool_choice={"type": "function", "function": {"name": "add"}})
    calls = _check_calls(r["choices"][0]["message"], {"add"})
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 2, "b": 3}


@pytest.mark.slow
def test_auto_renders_a_lazy_grammar_triggered_by_the_call_opener(qwen):
    from led_local import chat

    r = chat.render(qwen, ASK, TOOLS, "auto")
    assert r.grammar.lazy and r.grammar.trigger_patterns and not r.grammar.prefill and r.lead == ""
    assert any(re.search(p, "text first\n<tool_call>\n{") for p in r.grammar.trigger_patterns)
    required = chat.render(qwen, ASK, TOOLS, "required")
    assert not required.grammar.lazy and required.prompt.endswith(required.lead) and required.lead


def test_a_lazy_grammar_constrains_only_from_its_trigger_on(smollm2_path):
    """llama.cpp's lazy grammar (what tool_choice="auto" uses): the text up to the trigger is the model's
    own (the unconstrained greedy text), from the trigger on it is held to the grammar."""
    from led_local import LlamaGrammar

    with Llama(smollm2_path, n_ctx=512, n_seq_max=1, n_threads=1) as llm:
        free = llm.create_completion("Once upon a time", max_tokens=30, temperature=0)["choices"][0]["text"]
        cut = free.index(" skyscrapers")  # (a word the greedy text reaches after a dozen tokens)
        lazy = LlamaGrammar('root ::= " skyscrapers" [0-9] [0-9] [0-9] "!"', lazy=True,
                            trigger_patterns=(" skyscrapers",))
        text = llm.create_completion("Once upon a time", max_tokens=40, temperature=0,
                                     grammar=lazy)["choices"][0]["text"]
    assert text[:cut] == free[:cut]
    assert re.fullmatch(r" skyscrapers[0-9]{3}!", text[cut:]), text


@pytest.mark.slow
def test_a_tool_round_trip(qwen):
    """The call and the tool's answer go back in the messages, and the model answers from them.

    Which tokens the 1.5B picks depends on the CPU's kernels (AVX2 and AVX-512 builds differ): at temperature 0
    it may answer the tool result with another call. So the rendering is checked exactly, and the answer's
    premise is established on this machine: greedy first, then a few seeds, until one answer is text.
    """
    first = qwen.create_chat_completion(ASK[:1], tools=[WEATHER], tool_choice="required", temperature=0,
                                        parallel_tool_calls=False, max_tokens=40)["choices"][0]["message"]
    call = _check_calls(first, {"get_weather"})[0]
    result = '{"temperature_c": 31}'
    messages = ASK[:1] + [first, {"role": "tool", "tool_call_id": call["id"], "content": result}]
    prompt = chat.render(qwen, messages, tools=[WEATHER]).prompt
    # the call went back as the template writes calls, the tool's answer after it, the new turn last
    assert prompt.index(call["function"]["name"]) < prompt.index(result) < prompt.rindex("<|im_start|>assistant")
    answers = []
    for kw in [dict(temperature=0)] + [dict(temperature=0.7, seed=s) for s in range(6)]:
        r = qwen.create_chat_completion(messages, tools=[WEATHER], max_tokens=80, **kw)
        choice = r["choices"][0]
        assert choice["finish_reason"] in ("stop", "length", "tool_calls")
        answers.append(choice["message"].get("content") or "")
        if "31" in answers[-1]:
            return
    pytest.fail(f"no answer (greedy or 6 seeds) reads the tool's 31: {answers}")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["standard", "led"])
def test_json_schema_output_validates_on_the_1_5b(qwen, sampler):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 7}},
              "required": ["city", "days"], "additionalProperties": False}
    r = qwen.create_chat_completion([{"role": "user", "content": "Plan a trip: which city, how many days?"}],
                                    response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
                                    temperature=1.0, seed=2, max_tokens=60, sampler=sampler)
    assert r["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), schema)


@pytest.mark.slow
def test_tool_calls_through_the_official_openai_client(qwen15_path):
    proc, base = start_server(qwen15_path, "--parallel", "1", "--ctx", "2048", threads=2, timeout=120)
    try:
        client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=300)
        kw = dict(model="x", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0)
        r = client.chat.completions.create(**kw)
        message = r.choices[0].message.model_dump(exclude_none=True)
        assert r.choices[0].finish_reason == "tool_calls"
        _check_calls(message)
        streamed, reason = _from_stream(c.model_dump() for c in client.chat.completions.create(stream=True, **kw))
        assert reason == "tool_calls" and _without_ids(streamed)["tool_calls"] == _without_ids(message)["tool_calls"]
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kw | {"tool_choice": {"type": "function", "function": {"name": "nope"}}})
        assert "nope" in e.value.response.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- without a real model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_paths):
    with Llama(tiny_paths["llama-tied"], n_ctx=256, n_seq_max=1, n_threads=1) as llm:
        yield llm


@pytest.fixture(scope="module")
def thinker(tiny_paths):
    with Llama(tiny_paths["qwen2-think-template"], n_ctx=512, n_seq_max=2, n_threads=1) as llm:
        yield llm


THOUGHT = 'root ::= "<think>" [a-z ]{2,12} "</think>" [a-z ]{1,8}'


def test_reasoning_content_is_split_out_for_a_thinking_template(thinker):
    """The answer's <think> section becomes reasoning_content, the rest content: exactly the raw text's
    parts (the same seeded tokens, decoded as a completion of the same prompt), whole and streamed."""
    from led_local.generate import chat_prompt_tokens

    msgs = [{"role": "user", "content": "hi"}]
    for seed in range(3):
        kw = dict(grammar=THOUGHT, max_tokens=40, temperature=1.0, seed=seed)
        raw = thinker.create_completion(chat_prompt_tokens(thinker, msgs), **kw)["choices"][0]["text"]
        thought, answer = raw[len("<think>"):].split("</think>")
        m = thinker.create_chat_completion(msgs, **kw)["choices"][0]["message"]
        assert m == {"role": "assistant", "content": answer, "reasoning_content": thought}
        streamed, _ = _from_stream(thinker.create_chat_completion(msgs, stream=True, **kw))
        assert streamed == m


def test_without_a_thinking_template_think_tags_stay_in_the_content(tiny_paths):
    with Llama(tiny_paths["qwen2-untied-think"], n_ctx=512, n_seq_max=1, n_threads=1) as llm:
        m = llm.create_chat_completion([{"role": "user", "content": "hi"}], grammar=THOUGHT, max_tokens=40,
                                       seed=1)["choices"][0]["message"]
    assert m["content"].startswith("<think>") and "reasoning_content" not in m


def test_tool_requests_that_cannot_be_honoured_are_refused(tiny, thinker):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="takes no tools") as e:
        tiny.create_chat_completion(msgs, tools=TOOLS, max_tokens=2)
    assert e.value.param == "tools"
    with pytest.raises(ValueError, match="cannot render an assistant's tool_calls"):
        tiny.create_chat_completion(msgs + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}], max_tokens=2)
    with pytest.raises(ValueError, match="no tools"):
        tiny.create_chat_completion(msgs, tool_choice="required", max_tokens=2)
    with pytest.raises(ValueError, match="tools\\[0\\]"):
        tiny.create_chat_completion(msgs, tools=[{"type": "function"}], max_tokens=2)
    with pytest.raises(ValueError, match="fields the chat template cannot render: audio"):
        tiny.create_chat_completion([{"role": "user", "content": "hi", "audio": {"id": "x"}}], max_tokens=2)
    with pytest.raises(ValueError, match="image_url"):
        tiny.create_chat_completion([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(ValueError, match="chat_format"):
        Llama(tiny.model_path, chat_format="functionary-v2")


@pytest.mark.slow
def test_tools_with_a_grammar_or_an_unknown_tool_are_refused(qwen):
    with pytest.raises(ValueError, match="not among the tools"):
        qwen.create_chat_completion(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}})
    with pytest.raises(ValueError, match="cannot be combined"):
        qwen.create_chat_completion(ASK, tools=TOOLS, response_format={"type": "json_object"})
    with pytest.raises(ValueError, match="tool_choice must be"):
        qwen.create_chat_completion(ASK, tools=TOOLS, tool_choice="sometimes")
