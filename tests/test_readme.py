"""README.md as an executable contract: every Python block runs as pasted, in order, in one interpreter; the
server-client block runs against the server that README's own `led-local serve` line starts; every fenced
shell command runs here or is marked as needing a GPU or a Mac.

A block may end with a value it shows (as a REPL would); nothing in them is edited before it runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import httpx

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    out = []
    for indent, kind, body in FENCE.findall(README.read_text()):
        if kind == lang:
            out.append("\n".join(line[len(indent):] for line in body.splitlines()))
    return out


def serve_command() -> list[str]:
    """The `led-local serve ...` line README gives for the client example (a fenced bash block)."""
    for body in blocks("bash"):
        for line in body.splitlines():
            if line.startswith("led-local serve "):
                return shlex.split(line)
    raise AssertionError("README has no fenced `led-local serve ...` line for its client example")


def wait_ready(proc: subprocess.Popen, base: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(f"{base}/v1/models", timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(f"README's serve line exited: {proc.stdout.read()}")
            time.sleep(0.2)
    raise AssertionError("README's server did not answer in time")


def test_readme_blocks_are_found():
    """The extraction itself: if a fence changed shape, the contract would pass vacuously."""
    assert len(blocks("python")) >= 6
    assert any("create_chat_completion" in b for b in blocks("python"))
    assert any("OpenAI(" in b for b in blocks("python"))


@pytest.mark.slow
def test_every_python_block_runs_as_pasted_in_order(tmp_path, monkeypatch):
    cli = Path(sys.executable).with_name("led-local")
    proc = subprocess.Popen([str(cli), *serve_command()[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_ready(proc, "http://127.0.0.1:8080", timeout=300)
        monkeypatch.chdir(tmp_path)
        namespace: dict = {"__name__": "__readme__"}
        for i, code in enumerate(blocks("python")):
            try:
                exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001  (say which block, then fail)
                pytest.fail(f"README python block {i + 1} fails as pasted: {type(e).__name__}: {e}\n{code}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_fenced_shell_command_runs_in_a_test_or_is_marked():
    """Shell blocks: the two first-hour commands (`.ci/run` runs the second; the first's generate runs below),
    the serve line (above); anything else must say it needs a GPU or a Mac."""
    covered = {
        "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/pytest",  # .ci/run
    }
    for body in blocks("bash"):
        for line in body.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line in covered or line.startswith("led-local serve "):
                continue
            if line.startswith("python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/led-local generate"):
                continue  # test_readme_first_command_answers
            assert re.search(r"# (needs a GPU|needs a Mac)", line), f"README shell line is neither tested nor marked: {line}"


@pytest.mark.slow
def test_readme_first_command_answers(qwen15_path):
    """The main job of README's first command (its install part is what this test run was installed by): a
    reply on the default model, exit 0, no traceback. `qwen15_path` fetches the default model beforehand."""
    first = next(line for body in blocks("bash") for line in body.splitlines()
                 if line.startswith("python3 -m venv .venv && .venv/bin/pip install . && "))
    cli = shlex.split(first.split(" && ")[-1])
    assert cli[0] == ".venv/bin/led-local"
    r = subprocess.run([str(Path(sys.executable).with_name("led-local")), *cli[1:]], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) >= 3 and "Traceback" not in r.stderr  # a sentence (whichever tokens)
