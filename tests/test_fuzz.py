"""A bounded fuzz of llama.cpp's grammar parser, grammar sampler and JSON-schema converter under
AddressSanitizer and UBSan, fed what a request may send once it passes led_local.grammar_bounds
(tests/fuzz_grammar.py generates the inputs; tests/asan_build.py builds the sanitized libraries, once).
The product's common library runs on them, with its JSON-schema converter replaced by a sanitized one.

LED_LOCAL_FUZZ_SECONDS sets the fuzzing time (default 60); the seed is fixed, so a failure names an input
that reproduces it (the report shows it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import asan_build

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not asan_build.supported(), reason="needs Linux and gcc's sanitizer runtimes")


def _counts(stdout: str) -> dict[str, int]:
    line = stdout.strip().splitlines()[-1]
    return {k: int(v) for k, v in (part.split("=") for part in line.split())}


def test_grammar_and_schema_paths_under_asan(tiny_paths, tmp_path):
    from led_local import _native

    seconds = float(os.environ.get("LED_LOCAL_FUZZ_SECONDS", "60"))
    last = tmp_path / "last-input.txt"
    env = {**os.environ, **asan_build.asan_environment(_native.lib_dir(), tmp_path / "lib")}
    run = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_grammar.py"),
                          str(tiny_paths["qwen2-untied-think"]), "--seconds", str(seconds), "--seed", "0",
                          "--last", str(last)],
                         env=env, capture_output=True, text=True, timeout=seconds + 600)
    report = [line for line in run.stderr.splitlines()
              if "AddressSanitizer" in line or "runtime error" in line or "Traceback" in line or "Error" in line]
    failed_on = last.read_text(encoding="utf-8", errors="replace")[:2000] if last.exists() else "?"
    assert run.returncode == 0, (f"exit {run.returncode}; the input being tried:\n{failed_on}\n\n"
                                 + "\n".join(report[:20]) + "\n" + run.stderr[-3000:])
    assert "ERROR: AddressSanitizer" not in run.stderr and "runtime error:" not in run.stderr, run.stderr[-3000:]
    counts = _counts(run.stdout)
    # the run reached every path: inputs the bounds refuse, inputs llama.cpp refuses, grammars sampled with
    assert counts["inputs"] >= 50 * seconds / 60, counts
    assert counts["refused_by_bounds"] >= 1 and counts["refused_by_llama_cpp"] >= 1, counts
    assert counts["sampled"] >= 10 * seconds / 60, counts
