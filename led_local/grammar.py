"""Grammars that constrain generation, as llama-cpp-python's `LlamaGrammar`: GBNF text (llama.cpp's grammar
format, checked when a request uses it) from a string or a file."""

from __future__ import annotations

import os
from pathlib import Path


class LlamaGrammar:
    """A GBNF grammar with a `root` rule; pass it (or the text) as `grammar=`."""

    def __init__(self, gbnf: str) -> None:
        if not isinstance(gbnf, str) or not gbnf.strip():
            raise ValueError("a grammar needs GBNF text with a `root` rule")
        self.gbnf = gbnf

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "LlamaGrammar":
        return cls(grammar)

    @classmethod
    def from_file(cls, file: str | os.PathLike, verbose: bool = True) -> "LlamaGrammar":
        return cls(Path(file).read_text(encoding="utf-8"))

    def __repr__(self) -> str:
        return f"LlamaGrammar({self.gbnf[:60]!r}{'...' if len(self.gbnf) > 60 else ''})"
