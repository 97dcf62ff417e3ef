"""Bad input: a clear exception (or exit status 2 and one line for the CLI), never a crash."""

from __future__ import annotations

import subprocess
import sys

import pytest

from led_local import Llama


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Llama(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("hello, I am not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        Llama(p)


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        Llama(tmp_path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_gguf(tmp_path, tiny_path, keep):
    data = tiny_path.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="could not load"):
        Llama(p)


@pytest.mark.parametrize("kwargs, exc", [
    (dict(n_ctx=0), ValueError), (dict(n_ctx="big"), TypeError), (dict(n_batch=0), ValueError),
    (dict(n_seq_max=0), ValueError), (dict(n_seq_max=1000), ValueError), (dict(n_threads=0), ValueError),
    (dict(seed=-1), ValueError), (dict(n_gpu_layers=-5), ValueError),
])
def test_invalid_constructor_parameters(tiny_path, kwargs, exc):
    with pytest.raises(exc):
        Llama(tiny_path, **kwargs)


@pytest.fixture(scope="module")
def llm(tiny_paths):
    with Llama(tiny_paths["llama-tied"], n_threads=1, n_ctx=64, n_seq_max=2) as m:
        yield m


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(repeat_penalty=0.0), ValueError, "repeat_penalty"),
    (dict(n=0), ValueError, "n must be"),
    (dict(n=3), ValueError, "n_seq_max"),
    (dict(max_tokens="10"), TypeError, "max_tokens"),
    (dict(seed=2**32), ValueError, "seed"),
    (dict(sampler="magic"), ValueError, "unknown sampler"),
    (dict(stop=[1, 2]), TypeError, "stop"),
])
def test_invalid_generation_parameters(llm, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        llm.create_completion("the cat", **kwargs)


def test_prompt_longer_than_context(llm):
    with pytest.raises(ValueError, match="context window"):
        llm.create_completion("the cat " * 100, max_tokens=4)
    with pytest.raises(ValueError, match="n_ctx"):
        llm.latents("the cat " * 100)
    # and the Llama still works afterwards
    assert llm.create_completion("the cat", max_tokens=2, temperature=0)["choices"][0]["finish_reason"]


def test_bad_prompts(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.create_completion([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.create_completion([1, 10**6])
    with pytest.raises(TypeError):
        llm.create_completion(3.5)


def test_bad_chat_messages(llm):
    for messages in ([], "hi", [{"content": "x"}], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 3}]):
        with pytest.raises(ValueError):
            llm.create_chat_completion(messages)


def test_closed_llama(tiny_path):
    m = Llama(tiny_path, n_threads=1)
    m.close()
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.create_completion("x")
    with pytest.raises(RuntimeError, match="closed"):
        m.tokenize("x")
    # every model fact and token helper says so too, instead of reading a freed model
    for call in (m.n_vocab, m.n_layer, m.n_embd, m.n_ctx_train, m.token_bos, m.token_eos, m.chat_template,
                 lambda: m.is_eog(0), lambda: m.token_text(0), lambda: m.token_to_bytes(0), m.latent_head_rows):
        with pytest.raises(RuntimeError, match="closed"):
            call()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "led_local.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [
    ("generate", "hi", "--model", "no-such-model"),
    ("generate", "hi", "--model", "/no/such/file.gguf"),
    ("generate", "hi", "--n", "0"),
    ("models", "path", "no-such-model"),
    ("generate",),
    ("no-such-command",),
    ("serve", "--api-key", ""),  # an empty key would let a bare "Bearer " through
])
def test_cli_errors_exit_2_with_one_line(args):
    r = _cli(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_generate_on_a_file(tiny_path):
    r = _cli("generate", "the cat", "--model", str(tiny_path), "--max-tokens", "5", "--seed", "1", "--threads", "1", "--d", "3",
             "--json")
    assert r.returncode == 0, r.stderr
    assert '"chat.completion"' in r.stdout
