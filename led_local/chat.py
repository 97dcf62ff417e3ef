"""Chat: a request's messages (and tools) rendered by the model's chat template, and the answer parsed back
into `content`, `reasoning_content` and `tool_calls`, both by the pinned llama.cpp's common/chat (what
llama-server uses: its own Jinja engine, the template's tool-call format and grammar, its output parser;
csrc/led_common.h). Here: the checks that give a clear error first, and OpenAI's message shapes."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from .errors import FieldError, naming
from .grammar import LlamaGrammar
from .grammar_bounds import check_schema

ROLES = ("system", "user", "assistant", "tool")
# what a message may carry; anything else is refused by name rather than dropped
MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content"}
TOOL_CHOICES = ("auto", "none", "required")
# bounds on what one request may ask the template to render (50,000 messages took 32 s to render)
MAX_MESSAGES = 2048
MAX_TOOLS = 128


class ChatTemplateError(ValueError):
    """The model has no usable chat template, or the template cannot render the request (`param`: the
    request field it cannot render, where one is to blame)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _text_content(i: int, content: object, may_be_empty: bool) -> str | None:
    if content is None:
        if not may_be_empty:
            raise ValueError(f"messages[{i}]['content'] must be a string")
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"messages[{i}]['content'][{j}] is a {kind!r} part; only text parts "
                                 "({'type': 'text', 'text': ...}) can be rendered (this model reads no images or audio)")
            if set(part) - {"type", "text"}:
                raise ValueError(f"messages[{i}]['content'][{j}] has fields that cannot be honoured: "
                                 f"{', '.join(sorted(set(part) - {'type', 'text'}))}")
        return "".join(part["text"] for part in content)  # OpenAI's parts read as one text
    raise ValueError(f"messages[{i}]['content'] must be a string or a list of text parts")


def _tool_call(i: int, j: int, call: object) -> dict:
    where = f"messages[{i}]['tool_calls'][{j}]"
    if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(call.get("function"), dict):
        raise ValueError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'arguments': ...}}}}")
    fn = call["function"]
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"{where}['function']['name'] must be a non-empty string")
    args = fn.get("arguments", "{}")
    if not isinstance(args, str):
        args = json.dumps(args)
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def validate_messages(messages: object) -> list[dict]:
    """OpenAI chat messages, checked: roles, text content, an assistant's tool_calls, a tool's reply."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    if len(messages) > MAX_MESSAGES:
        raise ValueError(f"{len(messages)} messages: the limit is {MAX_MESSAGES}; drop the oldest turns")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}]['role'] must be one of {', '.join(ROLES)}, got {m['role']!r}")
        extra = set(m) - MESSAGE_FIELDS
        if extra:
            raise ValueError(f"messages[{i}] has fields the chat template cannot render: {', '.join(sorted(extra))}")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list)):
            raise ValueError(f"messages[{i}]['tool_calls'] must be a list, on an assistant message")
        msg = {"role": m["role"], "content": _text_content(i, m.get("content"), may_be_empty=True)}
        if msg["content"] is None and not calls:
            msg["content"] = ""
        if calls:
            msg["tool_calls"] = [_tool_call(i, j, c) for j, c in enumerate(calls)]
        for key in ("name", "tool_call_id", "reasoning_content"):
            if m.get(key) is not None:
                if not isinstance(m[key], str):
                    raise ValueError(f"messages[{i}]['{key}'] must be a string")
                msg[key] = m[key]
        out.append(msg)
    return out


def validate_tools(tools: object, tool_choice: object) -> tuple[list[dict] | None, str]:
    """OpenAI's `tools` and `tool_choice` as common/chat takes them: the tools and "auto", "none" or
    "required". A named function ({"type": "function", "function": {"name": ...}}) keeps only that tool
    and requires a call of it."""
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise ValueError("tool_choice names a tool but the request has no tools")
        return None, "none"
    if not isinstance(tools, list):
        raise ValueError("tools must be a list of {'type': 'function', 'function': {...}}")
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"{len(tools)} tools: the limit is {MAX_TOOLS}")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}]['function']['name'] must be a non-empty string")
        if not isinstance(fn.get("parameters", {}), dict):
            raise ValueError(f"tools[{i}]['function']['parameters'] must be a JSON schema object")
        try:  # the template turns each schema into grammar rules: the same bounds as response_format's
            check_schema(fn.get("parameters", {}))
        except ValueError as e:
            raise ValueError(f"tools[{i}]: {e}") from None
        names.append(fn["name"])
    if tool_choice is None:
        return tools, "auto"
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise ValueError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or a named function, "
                             f"got {tool_choice!r}")
        return tools, tool_choice
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not isinstance(fn, dict) or tool_choice.get("type") != "function" or not isinstance(fn.get("name"), str):
        raise ValueError("tool_choice must be a string or {'type': 'function', 'function': {'name': ...}}")
    if fn["name"] not in names:
        raise ValueError(f"tool_choice names {fn['name']!r}, which is not among the tools ({', '.join(names)})")
    return [t for t in tools if t["function"]["name"] == fn["name"]], "required"


@dataclass(frozen=True)
class Rendered:
    """A chat request as the template renders it: the prompt, what constrains and stops the answer, and
    how the answer is read back (Reply)."""

    prompt: str
    grammar: LlamaGrammar | None   # the template's tool-call grammar (None: free text)
    stops: tuple[str, ...]          # the template's own stop strings
    parser: str                     # common/chat's parser for led_chat_parse (JSON)
    tools: bool                     # tool calls are parsed out of the answer
    thinking: bool                  # `<think>` sections are split out into reasoning_content
    lead: str = ""                  # what the answer starts with, already at the end of the prompt


def render(llama, messages: object, tools: object = None, tool_choice: object = None,
           parallel_tool_calls: object = None) -> Rendered:
    if llama.chat_template() is None:
        raise ChatTemplateError(
            "this model has no chat template (tokenizer.chat_template); use create_completion with a plain prompt")
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ValueError(f"parallel_tool_calls must be true or false, got {parallel_tool_calls!r}")
    try:
        checked = validate_messages(messages)
    except ValueError as e:
        raise naming("messages", e) from None
    try:
        tool_list, choice = validate_tools(tools, tool_choice)
    except ValueError as e:
        raise naming("tools" if tools else "tool_choice", e) from None
    if isinstance(tool_choice, dict) and parallel_tool_calls is None:
        parallel_tool_calls = False  # a named function: one call of it
    request = {"messages": checked, "tools": tool_list, "tool_choice": choice}
    if parallel_tool_calls is not None:
        request["parallel_tool_calls"] = parallel_tool_calls
    r = _apply(llama, request)
    caps = r["caps"]
    if llama.chat_format == "chatml-function-calling" and not (caps.get("supports_tools")
                                                               and "<|im_start|>" in llama.chat_template()):
        raise ChatTemplateError("chat_format='chatml-function-calling' needs a model whose own template is ChatML "
                                "with tools (Qwen2.5's is); this one's is not: leave chat_format out")
    if tool_list and (not caps.get("supports_tools") or (choice != "none" and not r["grammar"])):
        raise ChatTemplateError("this model's chat template takes no tools (it renders no tool definitions or has "
                                "no tool-call format); leave tools out, or use a model whose template has them", "tools")
    if any(m.get("tool_calls") for m in checked) and not caps.get("supports_tool_calls"):
        raise ChatTemplateError("this model's chat template cannot render an assistant's tool_calls",
                                "messages.tool_calls")
    lead = ""
    if choice == "required":
        # A required call starts the answer: the template's call opener (the trigger of its lazy grammar under
        # "auto") goes at the end of the prompt. llama.cpp's grammar alone would allow free text before the
        # call, which small models fill forever (Qwen2.5-Coder-1.5B writes ```json and never the opener).
        auto = _apply(llama, {**request, "tool_choice": "auto"})
        words = [t["value"] for t in auto["grammar_triggers"] if t["type"] == "word"]
        lead = words[0] if words else ""
    grammar = None
    if r["grammar"]:
        # llama.cpp's common sampling turns its trigger kinds into patterns so (common/sampling.cpp)
        patterns = [_trigger_pattern(t) for t in r["grammar_triggers"] if t["type"] != "token"]
        tokens = tuple(t["token"] for t in r["grammar_triggers"] if t["type"] == "token")
        try:  # the template's grammar of the tools' schemas, under the same bounds as any other
            grammar = LlamaGrammar(r["grammar"], lazy=r["grammar_lazy"], trigger_patterns=tuple(patterns),
                                   trigger_tokens=tokens, prefill="" if r["grammar_lazy"] else r["generation_prompt"] + lead)
        except ValueError as e:
            raise FieldError(f"the tools' call grammar: {e}", "tools") from None
    parser = json.dumps({"format": r["format"], "parser": r["parser"], "generation_prompt": r["generation_prompt"]})
    return Rendered(prompt=r["prompt"] + lead, grammar=grammar, stops=tuple(r["additional_stops"]), parser=parser,
                    tools=bool(tool_list) and choice != "none", thinking=bool(r["supports_thinking"]), lead=lead)


def _apply(llama, request: dict) -> dict:
    try:
        return json.loads(llama.engine.chat_templates().apply(json.dumps(request)))
    except ValueError as e:
        raise ChatTemplateError(f"the model's chat template cannot render this request: {e}") from None


def _trigger_pattern(trigger: dict) -> str:
    value = trigger["value"]
    if trigger["type"] == "word":
        return re.escape(value)
    if trigger["type"] == "pattern_full":
        return ("" if value.startswith("^") else "^") + value + ("" if value.endswith("$") else "$") if value else "^$"
    return value


def parse(llama, rendered: Rendered, text: str, partial: bool) -> dict:
    """The answer's text as common/chat reads it back: {"role", "content", "reasoning_content"?, "tool_calls"?}."""
    return json.loads(llama.engine.chat_templates().parse(rendered.lead + text, partial, rendered.parser))


def finish_reason(reason: str | None, called: bool) -> str | None:
    """OpenAI's finish reason: "tool_calls" for an answer that ended by itself with calls in it."""
    return "tool_calls" if reason == "stop" and called else reason


class Reply:
    """How one chat answer's text becomes OpenAI's assistant message, whole (`message`) or as stream deltas
    (`delta`): as it is, or parsed by common/chat when the request has tools or the template thinks."""

    def __init__(self, llama, rendered: Rendered) -> None:
        self._llama, self._rendered = llama, rendered
        self._parsed = rendered.tools or rendered.thinking
        self._text = ""
        self._sent = {"content": "", "reasoning_content": "", "calls": []}  # what deltas have handed out
        self._ids: list[str] = []

    def _read(self, text: str, partial: bool) -> dict:
        if not self._parsed:
            return {"content": text}
        m = parse(self._llama, self._rendered, text, partial)
        calls = m.get("tool_calls") or []
        for i, c in enumerate(calls):
            if i == len(self._ids):
                self._ids.append(c.get("id") or f"call_{uuid.uuid4().hex[:24]}")
            c["id"] = self._ids[i]
        return {"content": m.get("content") or "", "reasoning_content": m.get("reasoning_content") or "",
                "calls": calls}

    def message(self, text: str) -> dict:
        m = self._read(text, partial=False)
        out = {"role": "assistant", "content": m["content"]}
        if m.get("reasoning_content"):
            out["reasoning_content"] = m["reasoning_content"]
        if m.get("calls"):
            out["content"] = m["content"] or None
            out["tool_calls"] = m["calls"]
        return out

    def delta(self, text: str, final: bool) -> dict:
        """The fields of a chunk's `delta` for `text` more of the answer (final: the answer has ended)."""
        self._text += text
        if not self._parsed:
            return {"content": text} if text else {}
        m = self._read(self._text, partial=not final)
        out: dict = {}
        for key in ("reasoning_content", "content"):
            new, sent = m[key], self._sent[key]
            if len(new) > len(sent) and new.startswith(sent):
                out[key] = new[len(sent):]
                self._sent[key] = new
        deltas = []
        for i, call in enumerate(m["calls"]):
            args = call["function"]["arguments"]
            if i == len(self._sent["calls"]):
                # a call's first delta names it; its arguments follow as they grow
                if not call["function"]["name"]:
                    break
                self._sent["calls"].append("")
                deltas.append({"index": i, "id": call["id"], "type": "function",
                               "function": {"name": call["function"]["name"], "arguments": ""}})
            sent = self._sent["calls"][i]
            if len(args) > len(sent) and args.startswith(sent):
                self._sent["calls"][i] = args
                if deltas and deltas[-1]["index"] == i:
                    deltas[-1]["function"]["arguments"] = args[len(sent):]
                else:
                    deltas.append({"index": i, "function": {"arguments": args[len(sent):]}})
        if deltas:
            out["tool_calls"] = deltas
        return out

    @property
    def called(self) -> bool:
        """Tool calls have been handed out (the finish reason is then "tool_calls")."""
        return bool(self._sent["calls"])
