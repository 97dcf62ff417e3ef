"""The evaluator: data, answers, pass@k, the resumable runner and reports (real generation, tiny model)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from led_local import Llama
from led_local.commands.common import sampling_kwargs
from led_local.eval import data, report, runner
from led_local.eval.answers import extract_answer, is_correct, last_boxed
from led_local.eval.passk import paired_difference, pass_at_k

MINI = Path(__file__).parent / "data" / "gsm8k-mini.json"


def test_load_gsm8k_json_and_jsonl(tmp_path):
    problems = data.load(MINI)
    assert len(problems) == 6 and problems[0].answer == "18" and "Janet" in problems[0].question
    assert problems[0].messages()[0]["content"].startswith("Please reason step by step")
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"question": "1+1?", "answer": "so #### 2"}) + "\n\n" +
                  json.dumps({"question": "2+2?", "answer": "1,004"}) + "\n")
    assert [(p.question, p.answer) for p in data.load(jl)] == [("1+1?", "2"), ("2+2?", "1,004")]
    assert len(data.load(MINI, limit=2)) == 2


@pytest.mark.parametrize("content, match", [
    ("[1, 2", "not valid JSON"), ("[{\"prompt\": []}]", "item 0"), ("{\"q\": 1}\n", "question"), ("", "no problems"),
])
def test_malformed_datasets(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(data.DatasetError, match=match):
        data.load(p)
    with pytest.raises(data.DatasetError, match="not found"):
        data.load(tmp_path / "missing.json")


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{18} dollars", "18"), ("\\boxed{\\frac{3}{4}} and then \\boxed{7}", "7"),
    ("\\boxed{\\text{a}{b}}", "\\text{a}{b}"), ("The answer is #### 1,204", "1,204"),
    ("She has 3 apples, then 1,250.5 left", "1250.5"), ("no numbers here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_judging_is_mathematical():
    assert is_correct("18", "18") and is_correct("18.0", "18") and is_correct("\\frac{3}{4}", "0.75")
    assert is_correct("\\$18", "18")
    assert not is_correct("17", "18") and not is_correct(None, "18")
    assert last_boxed("\\boxed{a") is None


def test_pass_at_k_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 1, 16) == 1.0
    for n, c, k in [(16, 3, 4), (8, 5, 3), (10, 2, 7)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    d = paired_difference({"a": 1.0, "b": 0.0, "c": 1.0}, {"a": 0.0, "b": 0.0, "c": 1.0})
    assert d["mean"] == pytest.approx(1 / 3) and d["ci95"][0] <= d["mean"] <= d["ci95"][1]


def test_exploration_by_outcome_compares_within_problems():
    def line(problem, correct, share):
        return {"problem": problem, "correct": correct, "explored_share": share}
    # problem a is easy (little exploration), b hard; only the problems with both outcomes enter the difference
    lines = [line("a", True, 0.01), line("a", True, 0.03), line("a", False, 0.05),
             line("b", True, 0.10), line("b", False, 0.14), line("b", False, 0.16),
             line("c", False, 0.50)]
    by = report.exploration_by_outcome(lines)
    assert by["right"] == pytest.approx((0.01 + 0.03 + 0.10) / 3)
    assert by["wrong"] == pytest.approx((0.05 + 0.14 + 0.16 + 0.50) / 4)
    d = by["within_problem_wrong_minus_right"]
    assert d["problems"] == 2 and d["mean"] == pytest.approx(((0.05 - 0.02) + (0.15 - 0.10)) / 2)
    assert d["se"] == pytest.approx(0.01)  # std of (0.03, 0.05) over sqrt(2)
    # a sampler that does not explore (standard) has no such figure
    assert report.exploration_by_outcome([{"problem": "a", "correct": True, "explored_share": None}]) is None
    row = report._outcome_row("led", by)
    assert row and "+4.0 ± 1.0 points over 2 problems" in row[0]


def _run(llm, out, problems, label="led", n=4, progress=None):
    settings = {"n": n, "sampler": label, "problems": [p.id for p in problems]}
    return runner.run(llm, problems, label=label, sampling=sampling_kwargs(label, temperature=0.8, d=4), n=n, seed=3,
                      max_tokens=12, out_dir=out, settings=settings, progress=progress)


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, tiny_paths):
    problems = data.load(MINI, limit=4)
    with Llama(tiny_paths["qwen2-untied-think"], n_threads=1, n_seq_max=4, n_ctx=2048) as llm:
        clean = _run(llm, tmp_path / "clean", problems)
        seen = []

        def interrupt(k):
            seen.append(k)
            if sum(seen) >= 7:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _run(llm, tmp_path / "cut", problems, progress=interrupt)
        partial = runner.read_samples(runner.samples_path(tmp_path / "cut", "led"))
        assert 0 < len(partial) < len(clean)
        # a process killed mid-line leaves a torn line: it is dropped, not parsed or duplicated
        with open(runner.samples_path(tmp_path / "cut", "led"), "a") as f:
            f.write('{"problem": "2", "sam')
        resumed = _run(llm, tmp_path / "cut", problems)
    key = lambda x: (x["problem"], x["sample"], x["seed"], x["text"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, clean))
    on_disk = runner.read_samples(runner.samples_path(tmp_path / "cut", "led"))
    assert len(on_disk) == len(clean) == 16


def test_each_sample_has_its_own_seed(tmp_path, tiny_paths):
    """Sample i of problem p is drawn with seed + p*n + i (written out here), and its text is what a direct
    call with that seed gives: no two problems share seeds."""
    problems = data.load(MINI, limit=3)
    with Llama(tiny_paths["qwen2-untied-think"], n_threads=1, n_seq_max=4, n_ctx=2048) as llm:
        lines = _run(llm, tmp_path, problems, n=4)
        for line in lines:
            assert line["seed"] == 3 + line["problem_index"] * 4 + line["sample"]
        p2s1 = next(x for x in lines if x["problem_index"] == 2 and x["sample"] == 1)
        direct = llm.create_chat_completion(problems[2].messages(), n=1, seed=3 + 2 * 4 + 1, max_tokens=12,
                                            **sampling_kwargs("led", temperature=0.8, d=4))
    assert p2s1["text"] == direct["choices"][0]["message"]["content"]
    assert len({x["seed"] for x in lines}) == len(lines) == 12


def test_summary_pass_at_k_from_mixed_outcomes(tmp_path):
    """pass@k and its standard error over problems, from the `correct` flags, against values by hand."""
    flags = {"a": [True, False, False, False], "b": [True, True, False, False], "c": [False] * 4}
    runner.write_json_atomic(runner.settings_path(tmp_path, "led"), {"n": 4})
    with open(runner.samples_path(tmp_path, "led"), "w") as f:
        for p_index, (pid, fl) in enumerate(flags.items()):
            for i, ok in enumerate(fl):
                f.write(json.dumps({"problem": pid, "problem_index": p_index, "sample": i, "correct": ok,
                                    "tokens": 10, "finish_reason": "stop", "wall_s": 0.1,
                                    "explored_share": None}) + "\n")
    s = report.summarize(tmp_path, ks=[1, 2, 4])["samplers"]["led"]["pass_at_k"]
    # pass@1 = c/n per problem: 1/4, 2/4, 0; pass@2 = 1 - C(n-c, 2)/C(4, 2): 1 - 3/6, 1 - 1/6, 0; pass@4: 1, 1, 0
    for k, per in {"1": [0.25, 0.5, 0.0], "2": [0.5, 5 / 6, 0.0], "4": [1.0, 1.0, 0.0]}.items():
        mean = sum(per) / 3
        se = math.sqrt(sum((x - mean) ** 2 for x in per) / 2) / math.sqrt(3)
        assert s[k]["mean"] == pytest.approx(mean) and s[k]["se"] == pytest.approx(se), k


def test_settings_must_match_to_resume(tmp_path, tiny_paths):
    problems = data.load(MINI, limit=1)
    with Llama(tiny_paths["llama-tied"], n_threads=1, n_seq_max=4) as llm:
        _run(llm, tmp_path, problems, n=2)
        with pytest.raises(runner.SettingsMismatch, match="other settings"):
            _run(llm, tmp_path, problems, n=3)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "led_local.cli", *args], capture_output=True, text=True, **kw)


def test_eval_compare_and_report(tmp_path, tiny_paths):
    out = tmp_path / "run"
    r = _cli("eval", str(MINI), "--model", str(tiny_paths["qwen2-untied-think"]), "--threads", "1", "--compare",
             "led,standard", "--n", "4", "--k", "1,2,4", "--limit", "3", "--max-tokens", "8", "--d", "4",
             "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "led-standard (paired" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["samplers"]) == {"led", "standard"}
    led = summary["samplers"]["led"]
    assert led["problems"] == 3 and led["samples_per_problem"] == 4 and led["explored_share"] is not None
    for label, stats in summary["samplers"].items():
        lines = runner.read_samples(runner.samples_path(out, label))
        cut = [x for x in lines if x["finish_reason"] == "length"]
        assert stats["length_share"] == len(cut) / len(lines)
        assert all(x["tokens"] == 8 for x in cut)  # cut at --max-tokens, and only there
    assert (out / "passk.png").stat().st_size > 1000
    # --report recomputes every figure from the JSONL alone
    (out / "summary.json").unlink()
    r2 = _cli("eval", "--report", str(out), "--k", "1,2,4")
    assert r2.returncode == 0, r2.stderr
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_eval_interrupt_loses_nothing(tmp_path, tiny_paths, sig):
    out = tmp_path / "run"
    args = ["eval", str(MINI), "--model", str(tiny_paths["llama-tied"]), "--threads", "1", "--n", "2", "--k", "1",
            "--max-tokens", "400", "--d", "4", "--out", str(out)]
    # started the way a background job is: with SIGINT ignored, which the evaluator undoes
    p = subprocess.Popen([sys.executable, "-m", "led_local.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    path = runner.samples_path(out, "led")
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.stat().st_size == 0):
        time.sleep(0.05)
    p.send_signal(sig)
    p.communicate(timeout=60)
    assert p.returncode == 130
    before = runner.read_samples(path)
    assert 0 < len(before) < 12
    assert path.read_bytes().endswith(b"\n")
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    after = runner.read_samples(path)
    assert len(after) == 12 and len({(x["problem"], x["sample"]) for x in after}) == 12
    assert after[: len(before)] == before


@pytest.mark.parametrize("args", [
    ("eval", "/no/such.json"),
    ("eval", str(MINI), "--compare", "led,magic"),
    ("eval", str(MINI), "--n", "2", "--k", "4"),
    ("eval", "--report", "/no/such/dir"),
    ("eval",),
])
def test_eval_errors_exit_2(args):
    r = _cli(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _strict(text: str) -> dict:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_eval_drops_ks_above_n_writes_strict_json_and_report_keeps_the_runs_ks(tmp_path, tiny_paths):
    """`--n 1` alone runs (pass@4 and pass@16 of the default left out, with a note); one problem's standard
    error is null in summary.json, not a bare NaN; `--report DIR` without --k shows the run's ks again (1 and 3,
not the default set's 1, 2, 3 of n = 3). LED's
    k is `--led-k` (the old `--k-led` still taken)."""
    out = tmp_path / "run"
    r = _cli("eval", str(MINI), "--model", str(tiny_paths["qwen2-untied-think"]), "--threads", "1", "--n", "1",
             "--limit", "1", "--max-tokens", "4", "--d", "4", "--led-k", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "pass@4,16 left out" in r.stderr
    summary = _strict((out / "summary.json").read_text())
    led = summary["samplers"]["led"]
    assert list(led["pass_at_k"]) == ["1"] and led["pass_at_k"]["1"]["se"] is None
    assert led["settings"]["sampling"]["led"]["k"] == 4
    r = _cli("eval", str(MINI), "--model", str(tiny_paths["qwen2-untied-think"]), "--threads", "1", "--n", "3",
             "--k", "1,3", "--limit", "1", "--max-tokens", "4", "--d", "4", "--k-led", "4", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    r = _cli("eval", "--report", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    assert list(_strict((tmp_path / "two" / "summary.json").read_text())["samplers"]["led"]["pass_at_k"]) == ["1", "3"]
