"""What constrains the final logits (logit bias, penalties, GBNF grammars; sampling.Constraints) with each
sampler: standard, LED (before it picks its candidates, docs/led.md step 3, the latent rows untouched) and
DoLa (bias and grammar before the contrast, penalties on it). Real llama.cpp on real and tiny models."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from led_local import LEDConfig, Llama, LlamaGrammar, led_step

from test_led_generation import PROMPT, _spec_layers

SAMPLERS = ["standard", "led", "dola"]
NUMBERS = r'root ::= [1-9] [0-9]? ("," [1-9] [0-9]?){2}'


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with Llama(smollm2_path, n_threads=1, n_seq_max=4, n_ctx=2048) as llm:
        yield llm


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_grammar_output_matches_the_grammar(smol, sampler):
    """Seeded T=1 samples, which left alone write prose, follow the grammar exactly and then end."""
    kw = dict(max_tokens=24, temperature=1.0, sampler=sampler, n=4, seed=3)
    free = smol.create_completion("My three favourite numbers are", **kw)
    assert not all(re.fullmatch(r"[0-9,]+", c["text"]) for c in free["choices"])
    got = smol.create_completion("My three favourite numbers are", grammar=LlamaGrammar.from_string(NUMBERS), **kw)
    for c in got["choices"]:
        assert re.fullmatch(r"[1-9][0-9]?(,[1-9][0-9]?){2}", c["text"]), c["text"]
        assert c["finish_reason"] == "stop"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_logit_bias_bans_and_forces_tokens(smol, sampler):
    prompt = "The capital of France is"
    greedy = smol.create_completion(prompt, max_tokens=6, temperature=0.0, sampler=sampler)["choices"][0]["text"]
    first = smol.tokenize(greedy, add_bos=False)[0]
    banned = smol.create_completion(prompt, max_tokens=6, temperature=0.0, sampler=sampler,
                                    logit_bias={first: float("-inf")})["choices"][0]["text"]
    assert smol.tokenize(banned, add_bos=False)[0] != first
    forced = smol.tokenize(" banana", add_bos=False)[0]
    out = smol.create_completion(prompt, max_tokens=1, temperature=0.0, sampler=sampler,
                                 logit_bias={str(forced): 100})  # JSON's string keys as well
    assert smol.tokenize(out["choices"][0]["text"], add_bos=False) == [forced]


def test_penalties_change_what_standard_and_led_repeat(smol):
    """(DoLa's penalties run on its contrast, whose plausibility set is often one token at T=0: the chain
    after the contrast is tested in test_dola.py.)"""
    prompt = "one two one two one two one two"
    for sampler in ("standard", "led"):
        kw = dict(max_tokens=24, temperature=0.0, sampler=sampler)
        plain = smol.create_completion(prompt, **kw)["choices"][0]["text"]
        penalized = smol.create_completion(prompt, frequency_penalty=1.5, presence_penalty=1.0, **kw)
        text = penalized["choices"][0]["text"]
        assert text != plain, sampler
        counts = Counter(smol.tokenize(text, add_bos=False))
        assert max(counts.values()) <= max(Counter(smol.tokenize(plain, add_bos=False)).values()), sampler


def _penalized(z0: np.ndarray, history: list[int], repeat: float, freq: float, present: float) -> np.ndarray:
    """llama.cpp's penalties sampler (llama_sampler_penalties_apply), written out for the replay."""
    z = z0.copy()
    for token, count in Counter(history[-64:]).items():
        z[token] = z[token] * repeat if z[token] <= 0 else z[token] / repeat
        z[token] -= count * freq + present
    return z


def test_led_constraints_act_on_the_final_layer_before_the_candidates(tiny_paths):
    """LED with a logit bias and penalties, replayed step by step: every step equals led_step on the
    constrained final logits beside the untouched latent rows (candidates, coin, m*, the token)."""
    config, T = LEDConfig(d=4, k=8, exploit=False, think_only=False), 0.8
    with Llama(tiny_paths["qwen2-led"], n_threads=1, n_ctx=1024) as llm:
        prompt = llm.tokenize(PROMPT)
        r = llm.latents(prompt, layers=_spec_layers(llm.n_layer(), config))
        top = [int(t) for t in np.argsort(-r.final_logits)[:3]]
        bias = {top[0]: float("-inf"), top[1]: -2.0, top[2]: 1.5}
        bias |= {t: float("-inf") for t in range(llm.n_vocab()) if llm.is_eog(t)}  # (a full-length run)
        kw = dict(frequency_penalty=0.7, presence_penalty=0.4, repeat_penalty=1.3)
        out = llm.create_completion(prompt, max_tokens=20, temperature=T, sampler="led", led=config, seed=5,
                                    trace=True, logit_bias=bias, **kw)
        steps = out["choices"][0]["led_trace"]["steps"]
        checked = 0
        for i, t in enumerate(steps):
            history = [s["token"] for s in steps[:i]]
            r = llm.latents(prompt + history, layers=_spec_layers(llm.n_layer(), config))
            z0 = r.final_logits.astype(np.float64)
            for token, b in bias.items():
                z0[token] += b
            z0 = _penalized(z0, history, 1.3, 0.7, 0.4)
            ref = led_step(np.vstack([z0[None, :], r.logits]).astype(np.float32), T, config.k, exploit=False)
            edges = np.cumsum(ref.explore_probs)
            if np.abs(edges - t["u_sample"]).min() < 1e-4:
                break  # a draw on a boundary: the rest is ambiguous
            assert top[0] not in t["candidates"]
            assert t["candidates"] == list(ref.candidates), i
            assert t["depth"] == ref.depth, i
            np.testing.assert_allclose(t["probs"], ref.explore_probs, atol=2e-5)
            assert t["token"] == int(ref.candidates[int(np.searchsorted(edges, t["u_sample"], side="right"))])
            checked += 1
    assert checked >= 8  # (a draw within 1e-4 of a boundary ends the comparison)


def test_led_candidates_shrink_to_what_the_grammar_allows(smol):
    """A grammar that leaves fewer than k tokens: LED's candidates are exactly the allowed ones."""
    out = smol.create_completion("Is the sky blue? Answer:", max_tokens=3, temperature=1.0, sampler="led", seed=4,
                                 grammar='root ::= (" yes" | " no") "."', trace=True, led=LEDConfig(k=8))
    first = out["choices"][0]["led_trace"]["steps"][0]
    allowed = {t for t in range(smol.n_vocab()) if smol.token_to_bytes(t)
               and (b" yes.".startswith(smol.token_to_bytes(t)) or b" no.".startswith(smol.token_to_bytes(t)))}
    assert len(allowed) < 8
    assert set(first["candidates"]) == allowed
    assert out["choices"][0]["text"] in (" yes.", " no.")


def test_conflicting_constraints_are_an_error_not_a_crash(smol):
    """A grammar whose every continuation the logit bias bans: a clear error, and the Llama goes on."""
    ban = {t: float("-inf") for t in range(smol.n_vocab()) if smol.token_to_bytes(t)[:1] in (b"y", b"n")}
    for sampler in SAMPLERS:
        with pytest.raises(RuntimeError, match="allow no token"):
            smol.create_completion("Answer:", max_tokens=4, grammar='root ::= "yes" | "no"', logit_bias=ban,
                                   sampler=sampler)
    assert smol.create_completion("Answer:", max_tokens=2, temperature=0)["choices"][0]["text"]


def test_a_grammar_refusing_a_token_it_allowed_is_an_error_not_a_crash(smol):
    """llama.cpp's grammar allows " a" (a space, then a token element, checked as a whole token) and then
    throws when accepting it character by character: a C++ exception through our C glue ended the process
    (tests/fuzz_grammar.py found it; csrc/led_guard.cpp). Now a clear error, and the Llama goes on."""
    (space_a,) = smol.tokenize(b" a", add_bos=False, special=False)
    for sampler in SAMPLERS:
        with pytest.raises(ValueError, match="refused a token its own check had allowed"):
            smol.create_completion("Answer:", max_tokens=3, grammar='root ::= " " !<[0]>', sampler=sampler,
                                   logit_bias={space_a: 50.0}, temperature=0.5, seed=1)
    assert smol.create_completion("Answer:", max_tokens=2, temperature=0)["choices"][0]["text"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(grammar="root ::= ("), "does not parse"),
    (dict(grammar=""), "GBNF"),
    (dict(logit_bias={10**7: 1.0}), "outside this model's vocabulary"),
    (dict(logit_bias={"x": 1.0}), "logit_bias must map"),
    (dict(logit_bias={1: float("nan")}), "logit_bias must map"),
    (dict(frequency_penalty=3.0), "frequency_penalty"),
    (dict(mirostat_mode=3), "mirostat_mode"),
    (dict(typical_p=1.5), "typical_p"),
    (dict(sampler="led", typical_p=0.5), "cannot apply with sampler='led'"),
    (dict(sampler="led", mirostat_mode=2), "cannot apply with sampler='led'"),
])
def test_bad_sampling_options_fail_before_anything_runs(smol, kwargs, message):
    decodes = smol.scheduler.decodes
    with pytest.raises(ValueError, match=message):
        smol.create_completion("Hello", max_tokens=2, **kwargs)
    assert smol.scheduler.decodes == decodes


def test_typical_and_mirostat_change_the_draw(smol):
    kw = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=9)
    plain = smol.create_completion("Once upon a time", **kw)["choices"][0]["text"]
    assert smol.create_completion("Once upon a time", typical_p=0.3, **kw)["choices"][0]["text"] != plain
    assert smol.create_completion("Once upon a time", mirostat_mode=2, mirostat_tau=2.0, **kw)["choices"][0]["text"] != plain


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                       "maxItems": 3}},
          "required": ["name", "age", "colours"], "additionalProperties": False}


@pytest.mark.parametrize("sampler", ["standard", "led"])
def test_json_schema_answers_validate(smol, sampler):
    """OpenAI's json_schema response_format, turned into a grammar by llama.cpp's converter: every sample
    parses and validates against the schema."""
    import json

    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    out = smol.create_chat_completion([{"role": "user", "content": "Describe a person as JSON."}], n=3, seed=1,
                                      temperature=0.8, max_tokens=120, sampler=sampler, response_format=fmt)
    for c in out["choices"]:
        assert c["finish_reason"] == "stop", c["message"]["content"]
        jsonschema.validate(json.loads(c["message"]["content"]), PERSON)


def test_json_object_mode_answers_an_object(smol):
    import json

    out = smol.create_chat_completion([{"role": "user", "content": "Give your name and age as JSON."}], seed=3,
                                      temperature=0.0, max_tokens=120, response_format={"type": "json_object"})
    assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize("fmt, message", [
    ({"type": "xml"}, "not supported"),
    ({"type": "json_schema"}, "json_schema needs"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "cannot be turned"),
])
def test_bad_response_formats_are_clear_errors(smol, fmt, message):
    with pytest.raises(ValueError, match=message):
        smol.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, response_format=fmt)
    with pytest.raises(ValueError, match="not both"):
        smol.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, grammar='root ::= "a"',
                                    response_format={"type": "json_object"})
