"""Maths datasets: the GSM8K JSON of the project's data (a list of {"prompt": [{"from", "value"}],
"final_answer"}) and JSONL with question/answer fields (GSM8K's own `#### answer` form included)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# docs/led.md: the paper's prompt for maths
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class DatasetError(ValueError):
    """The dataset cannot be read; the message says what is wrong and where."""


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": f"{MATH_INSTRUCTION}\n\n{self.question}"}]


def gold_answer(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "") if "####" in answer else answer.strip()


def _from_json(items: object, path: Path) -> list[Problem]:
    if not isinstance(items, list):
        raise DatasetError(f"{path}: expected a JSON list of problems")
    out = []
    for i, item in enumerate(items):
        try:
            turns = item["prompt"]
            question = next(t["value"] for t in turns if t.get("from") in ("user", "human"))
            out.append(Problem(str(item.get("id", i)), question, gold_answer(str(item["final_answer"]))))
        except (KeyError, TypeError, StopIteration):
            raise DatasetError(f"{path}: item {i} lacks prompt[...]{{from: user, value}} or final_answer") from None
    return out


def _from_jsonl(text: str, path: Path) -> list[Problem]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            out.append(Problem(str(item.get("id", len(out))), str(item["question"]), gold_answer(str(item["answer"]))))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"{path}:{n}: expected a JSON object with 'question' and 'answer'") from None
    return out


def load(path: str | Path, limit: int | None = None) -> list[Problem]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"dataset not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read dataset {path}: {e}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            problems = _from_json(json.loads(text), path)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from None
    else:
        problems = _from_jsonl(text, path)
    if not problems:
        raise DatasetError(f"{path}: no problems in the file")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: problem ids are not unique")
    return problems[:limit] if limit else problems
