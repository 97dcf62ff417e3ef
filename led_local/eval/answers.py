"""Final-answer extraction (last \\boxed{}, then GSM8K's `####`, then the last number) and judging with
math-verify (numbers, fractions, LaTeX and units compared as maths, not strings)."""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    while start >= 0:
        i = text.find("{", start)
        if i >= 0 and text[start + len("\\boxed"):i].strip() == "":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
        start = text.rfind("\\boxed", 0, start)
    return None


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.split("####")[-1].strip()
        if tail:
            return tail.splitlines()[0].strip()
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def is_correct(predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
    except Exception:  # math-verify gives up on some inputs: fall back to comparing the plain strings
        return predicted.strip().replace(",", "") == gold.strip()
