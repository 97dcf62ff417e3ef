"""Errors that name the request field they come from: the server's 400 says it as OpenAI's `param`, the
Python API raises them as the ValueError they are."""

from __future__ import annotations


class FieldError(ValueError):
    """A bad value of one request field (`param`: its name, dotted for nested ones: "led.k")."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def naming(param: str, e: ValueError) -> ValueError:
    """`e`, naming `param` unless it already names a field."""
    return e if getattr(e, "param", None) else FieldError(str(e), param)
