"""Where every bench script leaves its figures: bench/results/<name>.json (ignored by git; the figures that
matter are quoted in docs/benchmarks.md with the command that produced them)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(name: str, data: dict) -> Path:
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    return out
