"""The resumable sample runner: one JSON line per sample, written as soon as it exists.

A run is (model, dataset, sampler settings, n, seed, max_tokens) in a folder. Sample i of problem p gets the
seed `seed + p * n + i` for every sampler, so `--compare` runs see the same seeds, and a resumed run draws
exactly what an uninterrupted one would have (parallel samples equal one-by-one runs with the same seeds).
Interrupting loses nothing already written: each line is flushed whole, a torn last line (a killed
process) is dropped on resume, and only the missing samples are generated again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from .answers import extract_answer, is_correct
from .data import Problem


class SettingsMismatch(ValueError):
    """The output folder already holds samples made with other settings."""


def samples_path(out_dir: Path, label: str) -> Path:
    return out_dir / f"samples-{label}.jsonl"


def settings_path(out_dir: Path, label: str) -> Path:
    return out_dir / f"settings-{label}.json"


def strict_json(data: object) -> object:
    """NaN and infinities as null: JSON has no such numbers, and strict readers (jq, JavaScript) refuse them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def write_json_atomic(path: Path, data: object) -> None:
    text = json.dumps(strict_json(data), indent=2, allow_nan=False)
    # a temporary file of its own (never a predictable name a link could redirect), renamed over the target:
    # a reader never sees a half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_samples(path: Path, repair: bool = False) -> list[dict]:
    """The complete lines of a samples file; with repair, a torn last line is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines, good_end = [], 0
    for piece in raw.splitlines(keepends=True):
        if not piece.endswith(b"\n"):
            break  # a line that was being written when the process died
        if piece.strip():
            try:
                lines.append(json.loads(piece))
            except json.JSONDecodeError:
                break
        good_end += len(piece)
    if repair and good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return lines


def count_done(out_dir: Path, label: str, problem_ids: set[str]) -> int:
    """Samples already on disk for these problems (a resumed run's starting point)."""
    return sum(1 for line in read_samples(samples_path(out_dir, label)) if line["problem"] in problem_ids)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sample indices as (start, count)."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def run(llama, problems: list[Problem], *, label: str, sampling: dict, n: int, seed: int, max_tokens: int,
        out_dir: Path, settings: dict, progress: Callable[[int], None] | None = None,
        first_index: int = 0) -> list[dict]:
    """Generate the missing samples of `problems` (the dataset's problems first_index, first_index+1, ...)
    for one sampler setting; returns every sample line of the file. `progress` hears of each new sample."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(settings))  # as it will read back (tuples become lists)
    sp = settings_path(out_dir, label)
    if sp.exists():
        old = json.loads(sp.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SettingsMismatch(f"{out_dir} holds '{label}' samples made with other settings "
                                   f"({', '.join(changed)}); use another --out folder")
    else:
        write_json_atomic(sp, settings)

    path = samples_path(out_dir, label)
    lines = read_samples(path, repair=True)
    done = {(line["problem"], line["sample"]) for line in lines}
    use_chat = llama.chat_template() is not None
    with open(path, "a", encoding="utf-8") as f:
        for p_index, problem in enumerate(problems, start=first_index):
            missing = [i for i in range(n) if (problem.id, i) not in done]
            for start, count in _runs(missing):
                t0 = time.perf_counter()
                first = seed + p_index * n + start
                kwargs = dict(n=count, seed=first, max_tokens=max_tokens, trace=True, **sampling)
                if use_chat:
                    result = llama.create_chat_completion(problem.messages(), **kwargs)
                else:
                    result = llama.create_completion(problem.messages()[0]["content"] + "\n", **kwargs)
                wall = (time.perf_counter() - t0) / count
                for c in result["choices"]:
                    text = c["message"]["content"] if use_chat else c["text"]
                    steps = c["led_trace"]["steps"]
                    predicted = extract_answer(text)
                    line = {
                        "problem": problem.id, "problem_index": p_index, "sample": start + c["index"],
                        "seed": first + c["index"], "sampler": label, "text": text, "extracted": predicted,
                        "gold": problem.answer, "correct": is_correct(predicted, problem.answer),
                        "tokens": sum(1 for t in steps if not llama.is_eog(t["token"])),
                        "finish_reason": c["finish_reason"], "wall_s": wall,
                        "explored_share": (sum(1 for t in steps if t.get("explored")) / len(steps)
                                           if steps and "explored" in steps[0] else None),
                    }
                    f.write(json.dumps(line) + "\n")
                    f.flush()
                    lines.append(line)
                if progress:
                    progress(count)
    return lines
