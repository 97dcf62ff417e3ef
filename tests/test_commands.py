"""The led-local command: entropy-profile, bench, generate's sampler flags, and the chat REPL driven in a
real pseudo-terminal (pexpect), typing as a person would."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pexpect
import pytest

from led_local import Llama
from led_local.commands.chat import ThinkStyler
from led_local.diagnostics import EntropyProfile, entropy_profile, normalized_entropy


def _cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "led_local.cli", *args], capture_output=True, text=True, input=input)


def test_entropy_profile_values(tiny_paths):
    """One generated token: the profile equals the entropies of the readout's own logits."""
    msgs = [[{"role": "user", "content": "the cat"}]]
    with Llama(tiny_paths["qwen2-led"], n_threads=1) as llm:
        prof = entropy_profile(llm, msgs, max_tokens=1, temperature=0.6)
        from led_local.generate import chat_prompt_tokens
        tokens = chat_prompt_tokens(llm, msgs[0])
        raw = llm.latents(tokens, layers=list(range(llm.n_layer())))
        normed = llm.latents(tokens, layers=list(range(llm.n_layer())), norm=True)
    assert prof.tokens == 1
    np.testing.assert_allclose(prof.raw, normalized_entropy(raw.logits, 0.6), rtol=1e-5)
    np.testing.assert_allclose(prof.normed, normalized_entropy(normed.logits, 0.6), rtol=1e-5)
    assert prof.final == pytest.approx(float(normalized_entropy(raw.final_logits[None], 0.6)[0]), rel=1e-5)
    assert prof.normed[-1] == pytest.approx(prof.final, rel=1e-5)  # the normed last block is the final layer
    assert prof.led_blocks == [2, 1, 0]


def test_normalized_entropy():
    assert normalized_entropy(np.zeros((1, 50)), 1.0)[0] == pytest.approx(1.0)
    z = np.full((1, 50), -np.inf)
    z[0, 3] = 0
    assert normalized_entropy(z, 1.0)[0] == pytest.approx(0.0)
    # the temperature divides the logits: [0, 1, 2] at T = 0.5 is softmax([0, 2, 4]), by hand
    e = [math.exp(x) for x in (0.0, 2.0, 4.0)]
    p = [x / sum(e) for x in e]
    by_hand = -sum(q * math.log(q) for q in p) / math.log(3)
    z = np.array([[0.0, 1.0, 2.0]])
    assert normalized_entropy(z, 0.5)[0] == pytest.approx(by_hand, rel=1e-12)
    assert normalized_entropy(z, 1.0)[0] > by_hand + 0.1
    assert normalized_entropy(z, 0.0)[0] == pytest.approx(normalized_entropy(z, 1.0)[0])  # T = 0 reads as 1


def _profile(raw_led: float, normed_led: float, final: float) -> EntropyProfile:
    raw, normed = np.full(12, 0.05), np.full(12, 0.05)
    blocks = [10, 9, 8, 7, 6, 5, 4]
    raw[blocks], normed[blocks] = raw_led, normed_led
    return EntropyProfile(blocks=list(range(12)), raw=raw, normed=normed, final=final, mean_top1=0.9, tokens=10,
                          temperature=0.6, led_blocks=blocks)


def test_entropy_profile_verdict():
    yes = _profile(raw_led=0.4, normed_led=0.1, final=0.2)
    assert yes.has_reservoir and yes.verdict().startswith("This model HAS")
    assert "blocks 4-10" in yes.verdict() and "0.400" in yes.verdict() and "0.200" in yes.verdict()
    no = _profile(raw_led=0.1, normed_led=0.1, final=0.2)
    assert not no.has_reservoir and "NO latent entropy reservoir" in no.verdict()
    assert "--latent-norm" not in no.verdict()
    hint = _profile(raw_led=0.1, normed_led=0.5, final=0.2)  # only the normed lens is above the final layer
    assert not hint.has_reservoir and "try --latent-norm" in hint.verdict()


def test_entropy_profile_command(tmp_path, tiny_paths):
    png = tmp_path / "p.png"
    r = _cli("entropy-profile", "--model", str(tiny_paths["qwen2-led"]), "--threads", "1", "--max-tokens", "4",
             "--limit", "1", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert "final" in r.stdout and "LED reads" in r.stdout and "reservoir" in r.stdout
    assert png.stat().st_size > 1000


def test_bench_command(tiny_paths):
    r = _cli("bench", "--model", str(tiny_paths["llama-deep"]), "--tokens", "6", "--rounds", "2")
    assert r.returncode == 0, r.stderr
    m = re.search(r"standard ([\d.]+) tok/s, led ([\d.]+) tok/s: led/standard = ([\d.]+)x", r.stdout)
    assert m and all(float(x) > 0 for x in m.groups())
    assert float(m.group(3)) == pytest.approx(float(m.group(2)) / float(m.group(1)), rel=0.02)
    assert "median of 2 alternating rounds" in r.stdout
    # LED's default d=8 does not fit a 4-block model: a clear error, not a crash
    r = _cli("bench", "--model", str(tiny_paths["qwen2-led"]), "--tokens", "6", "--rounds", "1")
    assert r.returncode == 2 and "d=8" in r.stderr


def test_generate_flags(tiny_paths):
    for extra in (["--sampler", "led", "--d", "3", "--k", "4"], ["--sampler", "standard"],
                  ["--sampler", "dola", "--dola-layers", "low", "--temperature", "0"]):
        r = _cli("generate", "the cat", "--model", str(tiny_paths["llama-untied"]), "--threads", "1",
                 "--max-tokens", "6", "--seed", "1", "--json", *extra)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["object"] == "chat.completion" and out["usage"]["completion_tokens"] >= 1
    r = _cli("generate", "-", "--model", str(tiny_paths["llama-untied"]), "--threads", "1", "--max-tokens", "4",
             "--sampler", "standard", "--no-chat", input="the cat sat")
    assert r.returncode == 0, r.stderr
    r = _cli("generate", "x", "--model", str(tiny_paths["llama-untied"]), "--dola-layers", "1,a", "--sampler", "dola")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def spawn_chat(model, tmp_path, *args: str) -> pexpect.spawn:
    """`led-local chat` in a pseudo-terminal, with a private cache (history file) and no cursor queries."""
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "LED_LOCAL_CACHE": str(tmp_path / "cache"), "TERM": "dumb"}
    return pexpect.spawn(sys.executable, ["-m", "led_local.cli", "chat", "--model", str(model), "--threads", "1", *args],
                         env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))


def leave(child) -> None:
    """Ctrl-D at an empty prompt, after the line editor is back in raw mode (a person is not that fast)."""
    time.sleep(0.3)
    child.sendeof()


@pytest.fixture
def repl(tiny_paths, tmp_path):
    child = spawn_chat(tiny_paths["qwen2-think-bias"], tmp_path, "--d", "4", "--max-tokens", "40", "--seed", "1")
    child.expect("Ctrl-D to leave")
    child.expect("you> ")
    yield child
    if child.isalive():
        child.terminate(force=True)


def test_chat_repl(repl, tmp_path):
    c = repl
    c.sendline("hello there")
    c.expect("you> ")  # an answer was streamed and the prompt is back
    c.sendline("/stats")
    c.expect(r"tokens/s")
    c.expect(r"led: 1 answer\(s\), \d+ tokens, [\d.]+ tokens/s, explored [\d.]+% of its tokens")
    c.expect("you> ")
    c.sendline("/set temperature=abc")
    c.expect("error: temperature takes a number, got 'abc'")
    c.sendline(f"/save {tmp_path}/no/such/dir/x.json")
    c.expect("error: cannot save to .*x.json: the folder .*dir does not exist")
    c.expect("you> ")
    c.sendline("/set temperature=0.2")
    c.expect("temperature = 0.2")
    c.sendline("/set d=9")
    c.expect("error: .*d=9")  # rejected, the old value kept
    c.sendline("/sampler standard")
    c.expect("sampler: standard")
    c.sendline("and again")
    c.expect("you> ")
    c.sendline("/stats")
    c.expect(r"last answer \(standard\)")
    c.expect(r"led: 1 answer\(s\)")
    c.expect(r"standard: 1 answer\(s\), \d+ tokens, [\d.]+ tokens/s\r?\n")  # no explored share for standard
    c.expect("you> ")
    save = tmp_path / "conv.json"
    c.sendline(f"/save {save}")
    c.expect("saved to")
    c.expect("you> ")
    conv = json.loads(save.read_text())
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["sampler"] == "standard" and conv["settings"]["temperature"] == 0.2
    c.sendline("/system You are terse.")
    c.expect("conversation restarted")
    c.sendline("/nope")
    c.expect("unknown command")
    leave(c)
    c.expect(pexpect.EOF)
    c.wait()
    assert c.exitstatus == 0


def test_think_sections_are_told_apart_across_chunks():
    """What chat dims (or hides): the text inside <think>...</think>, tags included, even when a tag is split
    across streamed chunks."""
    styler = ThinkStyler()
    pieces = []
    for chunk in ["Hi <th", "ink>let me", " see</thi", "nk>The answer", " is 4 <", "b>"]:
        pieces += styler.feed(chunk)
    pieces += styler.feed("", final=True)
    merged: list[list] = []
    for text, thinking in pieces:
        if merged and merged[-1][1] == thinking:
            merged[-1][0] += text
        else:
            merged.append([text, thinking])
    assert merged == [["Hi ", False], ["<think>let me see</think>", True], ["The answer is 4 <b>", False]]


def test_chat_reset_and_history(repl, tmp_path):
    c = repl
    c.sendline("first question")
    c.expect("you> ")
    c.sendline("/reset")
    c.expect("you> ")
    c.sendline("/stats")
    c.expect("no answer yet")  # the statistics went with the conversation
    c.expect("you> ")
    save = tmp_path / "after-reset.json"
    c.sendline(f"/save {save}")
    c.expect("saved to")
    c.expect("you> ")
    assert json.loads(save.read_text())["messages"] == []  # the conversation is gone
    leave(c)
    c.expect(pexpect.EOF)
    history = (tmp_path / "cache" / "chat_history").read_text()
    assert "+first question" in history and "+/reset" in history  # prompt_toolkit's history file
    assert (tmp_path / "cache" / "chat_history").stat().st_mode & 0o077 == 0  # readable by its owner alone


def test_chat_ctrl_c_stops_the_answer_and_keeps_the_conversation(tiny_paths, tmp_path):
    c = spawn_chat(tiny_paths["llama-tied"], tmp_path, "--d", "3", "--max-tokens", "100000", "--ctx", "200000",
                   "--no-think-only")
    c.expect("you> ")
    c.sendline("tell me everything")
    # the answer is streaming: 40 characters after the line editor's echo of the question, and a pause (a
    # ^C that reaches the line editor before it has handed the line over clears the prompt instead: a
    # loaded CI machine once took that long)
    c.expect("tell me everything")
    c.expect(".{40}")
    time.sleep(0.3)
    c.sendintr()
    c.expect(r"\[interrupted\]")
    c.expect("you> ")
    c.sendline("/stats")
    c.expect("last answer")
    c.expect("you> ")
    save = tmp_path / "c.json"
    c.sendline(f"/save {save}")
    c.expect("saved to")
    conv = json.loads(save.read_text())
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert len(conv["messages"][1]["content"]) > 0
    leave(c)
    c.expect(pexpect.EOF)


def test_chat_drops_oldest_turns_to_fit(tiny_paths, tmp_path):
    c = spawn_chat(tiny_paths["llama-tied"], tmp_path, "--sampler", "standard", "--max-tokens", "60", "--ctx", "256")
    c.expect("you> ")
    for i in range(4):
        c.sendline(f"message number {i} " + "word " * 10)
        idx = c.expect([r"dropped the \d+ oldest", "you> "])
        if idx == 0:
            break
    else:
        pytest.fail("the conversation never had to drop a turn")
    c.expect("you> ")
    leave(c)
    c.expect(pexpect.EOF)


def test_chat_without_template_is_refused(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models"))
    from tiny import TinySpec, write_tiny_model

    base = write_tiny_model(tmp_path / "base.gguf", TinySpec(chat_template=False))
    r = _cli("chat", "--model", str(base))
    assert r.returncode == 2 and "no chat template" in r.stderr
    r = _cli("chat", "--model", str(tmp_path / "missing.gguf"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_chat_drops_old_turns_once_then_keeps_its_cache(tiny_paths):
    """Past the window, chat drops down to half of it, so the following turns extend the cached prefix."""
    from led_local.commands.chat import Session

    with Llama(tiny_paths["llama-tied"], n_threads=1, n_seq_max=1, n_ctx=300) as llm:
        s = Session(llm=llm, sampler="standard", settings={"max_tokens": 40})
        drops = []
        for i in range(12):
            s.turns.append({"role": "user", "content": f"message {i} " + "word " * 4})
            drops.append(s.fit_context())
            s.turns.append({"role": "assistant", "content": "reply " * 4})
        events = [i for i, d in enumerate(drops) if d]
        assert events and all(b - a > 2 for a, b in zip(events, events[1:]))  # not on every turn
        from led_local.generate import chat_prompt_tokens
        assert len(chat_prompt_tokens(llm, s.messages())) + 40 <= 300


def test_chat_says_once_when_led_will_rarely_explore(tmp_path, smollm2_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(smollm2_path.parent)  # the registry key, from the warm cache
    c = spawn_chat("smollm2-135m", tmp_path, "--max-tokens", "4")
    c.expect("no more entropic than its final layer")
    c.expect("LED still explores on unsure steps")
    c.expect("--model qwen2.5-coder-1.5b has a reservoir")
    c.expect("you> ")
    c.sendline("/sampler standard")
    c.expect("you> ")
    c.sendline("/sampler led")
    i = c.expect(["no more entropic than its final layer", "you> "])
    assert i == 1  # once only
    leave(c)
    c.expect(pexpect.EOF)


def test_generate_says_when_max_tokens_cut_the_answer(tiny_paths):
    """On stderr, so a pipe of the answer stays the answer; nothing when the answer ended on its own."""
    r = _cli("generate", "the cat", "--model", str(tiny_paths["qwen2-no-eos"]), "--threads", "1", "--max-tokens", "3",
             "--no-chat", "--d", "4")
    assert r.returncode == 0, r.stderr
    assert "[cut at max_tokens=3" in r.stderr and "cut at" not in r.stdout
