"""Chat formatting: the GGUF's own Jinja chat template, rendered in jinja2's sandbox.

Templates are written for Hugging Face's renderer; they expect `messages`, `add_generation_prompt`,
`bos_token`/`eos_token`, `raise_exception` and sometimes `strftime_now`, which we provide.
"""

from __future__ import annotations

import datetime
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(ValueError):
    """The model has no usable chat template, or the template refused the messages."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the model's chat template does not parse: {e}") from e


def validate_messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}]['role'] must be one of {', '.join(ROLES)}, got {m['role']!r}")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] must be a string")
        out.append({**m, "content": content})
    return out


def render(template: str | None, messages: list[dict], bos_token: str, eos_token: str,
           add_generation_prompt: bool = True) -> str:
    if not template:
        raise ChatTemplateError(
            "this model has no chat template (tokenizer.chat_template); use create_completion with a plain prompt"
        )
    try:
        return _compile(template).render(
            messages=validate_messages(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the model's chat template failed: {e}") from e
