"""The one table of sampling parameters (led_local/params.py) and every place that derives from it: create_*'s
explicit signatures, the sampler settings, the server's request fields and the command's options. No model
needed. Each front's own defaults are also checked against their outside source (llama-cpp-python's:
tests/test_upstream.py; OpenAI's and the paper's: here)."""

from __future__ import annotations

import inspect
import math

import click
import pytest
from pydantic import ValidationError

from led_local import generate, params
from led_local.commands.generate import generate as generate_command
from led_local.sampling import LEDConfig, StandardSampling
from led_local.server import ChatRequest, CompletionRequest, LEDFields

ALL = (*params.PARAMS, *params.LED_PARAMS)


@pytest.mark.parametrize("fn", [generate.create_completion, generate.create_chat_completion])
def test_create_signatures_name_every_parameter_with_the_table_s_default(fn):
    signature = inspect.signature(fn).parameters
    assert {p.name: signature[p.name].default for p in params.PARAMS} == params.defaults()


def test_the_sampler_settings_default_to_the_table():
    standard = StandardSampling()
    assert {p.name: getattr(standard, p.name) for p in params.PARAMS} == params.defaults()
    led = LEDConfig()
    assert {p.name: getattr(led, p.name) for p in params.LED_PARAMS} == {p.name: p.default for p in params.LED_PARAMS}


@pytest.mark.parametrize("request_model", [CompletionRequest, ChatRequest])
def test_the_server_s_fields_are_the_table_s_with_its_defaults(request_model):
    fields = request_model.model_fields
    for p in params.PARAMS:
        assert fields[p.field].default == p.request_default, p.name
        assert fields[p.field].annotation is p.kind, p.name
    assert {name: f.default for name, f in LEDFields.model_fields.items()} == {p.name: p.default for p in params.LED_PARAMS}


def test_a_request_that_names_nothing_asks_for_nothing():
    # OpenAI's documented defaults: temperature 1, top_p 1; the truncations OpenAI lacks are off
    body = CompletionRequest(prompt="x")
    assert (body.temperature, body.top_p, body.top_k, body.min_p) == (1.0, 1.0, 0, 0.0)
    assert (body.frequency_penalty, body.presence_penalty, body.repeat_penalty) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("p", [p for p in ALL if p.kind is not bool], ids=lambda p: p.name)
def test_the_server_refuses_what_the_table_bounds_and_takes_the_bounds_themselves(p):
    lo, hi = p.api_bounds()

    def body(value):
        if p in params.LED_PARAMS:
            return CompletionRequest(prompt="x", sampler="led", led={p.name: value})
        return CompletionRequest(prompt="x", **{p.field: value})

    step = 1 if p.kind is int else 1e-6
    for edge in (lo, hi):
        if edge is not None and not (p.lo_exclusive and edge == lo):
            body(p.kind(edge))
    for outside in ([lo - step] if lo is not None else []) + ([hi + step] if hi is not None else []):
        with pytest.raises(ValidationError):
            body(p.kind(outside))
    if p.lo_exclusive:
        with pytest.raises(ValidationError):
            body(p.kind(lo))


@pytest.mark.parametrize("p", [p for p in ALL if p.kind is not bool], ids=lambda p: p.name)
def test_the_python_api_checks_the_table_s_bounds(p):
    assert p.check(p.default) == p.default
    if p.lo is not None:
        with pytest.raises(ValueError, match=p.name):
            p.check(p.kind(p.lo - 1) if not p.lo_exclusive else p.kind(p.lo))
    if p.hi is not None:
        with pytest.raises(ValueError, match=p.name):
            p.check(p.kind(p.hi + 1))
    with pytest.raises(TypeError, match=p.name):
        p.check("1")
    if p.kind is float:
        with pytest.raises(ValueError, match=p.name):
            p.check(math.nan)


def test_the_command_defaults_to_the_paper_s_setting():
    # docs/led.md, "Defaults": d = 8, k = 8, latent_norm off, exploit on, think_only on, temperature 0.6;
    # the "standard" baseline: temperature 0.6, top-p 0.95, top-k 20
    options = {p.name: p.default for p in generate_command.params if isinstance(p, click.Option)}
    assert options["sampler"] == "led"
    assert {k: options[k] for k in ("temperature", "top_k", "top_p", "led_d", "led_k", "latent_norm", "exploit",
                                    "think_only")} == dict(temperature=0.6, top_k=20, top_p=0.95, led_d=8, led_k=8,
                                                            latent_norm=False, exploit=True, think_only=True)


def test_the_command_s_options_are_the_table_s():
    options = {p.name: p for p in generate_command.params if isinstance(p, click.Option)}
    for p in (*(params.BY_NAME[n] for n in ("temperature", "top_k", "top_p")), *params.LED_PARAMS):
        option = options[f"led_{p.name}" if p.name in ("d", "k") else p.name]
        assert option.default == p.cli and option.help == p.help, p.name
