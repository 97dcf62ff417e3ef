"""Grammars that constrain generation, as llama-cpp-python's `LlamaGrammar`: GBNF text (llama.cpp's grammar
format, checked when a request uses it) from a string, a file or a JSON schema (converted by the pinned
llama.cpp's common/json-schema-to-grammar, as llama-server does); and OpenAI's `response_format` as one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _native
from .grammar_bounds import MAX_SCHEMA_BYTES, check_grammar, check_schema


@dataclass(frozen=True, repr=False)
class LlamaGrammar:
    """A GBNF grammar with a `root` rule; pass it (or the text) as `grammar=`.

    A chat template's tool-call grammar (chat.py) also sets: `lazy` with its triggers (it constrains
    nothing until the output matches a trigger pattern or token, then the output from there on) and
    `prefill`, text the grammar takes before the output (the template's generation prompt)."""

    gbnf: str
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()
    trigger_tokens: tuple[int, ...] = ()
    prefill: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.gbnf, str) or not self.gbnf.strip():
            raise ValueError("a grammar needs GBNF text with a `root` rule")
        if self.lazy and not (self.trigger_patterns or self.trigger_tokens):
            raise ValueError("a lazy grammar needs trigger patterns or tokens")
        check_grammar(self.gbnf)  # before llama.cpp's parser sees it (grammar_bounds.py)

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "LlamaGrammar":
        return cls(grammar)

    @classmethod
    def from_file(cls, file: str | os.PathLike, verbose: bool = True) -> "LlamaGrammar":
        return cls(Path(file).read_text(encoding="utf-8"))

    @classmethod
    def from_json_schema(cls, json_schema: str | dict, verbose: bool = True) -> "LlamaGrammar":
        """Output that is JSON valid against the schema (JSON text or a dict)."""
        text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        if len(text.encode("utf-8", "replace")) > MAX_SCHEMA_BYTES:
            raise ValueError(f"the JSON schema is over {MAX_SCHEMA_BYTES} bytes; simplify it")
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        check_schema(parsed)
        try:
            return cls(_native.json_schema_to_grammar(text))
        except ValueError as e:
            raise ValueError(f"the JSON schema cannot be turned into a grammar: {e}") from None

    def __repr__(self) -> str:
        return f"LlamaGrammar({self.gbnf[:60]!r}{'...' if len(self.gbnf) > 60 else ''})"


def response_format_grammar(response_format: Any) -> str | None:
    """GBNF for OpenAI's `response_format`: {"type": "text"} (None: no grammar), {"type": "json_object"}
    (any JSON object, or llama-cpp-python's optional "schema"), {"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}}."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise ValueError('response_format must be an object with a "type": "text", "json_object" or "json_schema"')
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema") or {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ValueError('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
        schema = spec.get("schema") or {"type": "object"}
    else:
        raise ValueError(f"response_format type {kind!r} is not supported; use text, json_object or json_schema")
    if not isinstance(schema, dict):
        raise ValueError("response_format's schema must be a JSON object")
    return LlamaGrammar.from_json_schema(schema).gbnf
