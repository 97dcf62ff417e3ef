"""`led-local generate PROMPT`: one-shot generation (streamed, or JSON, or n samples)."""

from __future__ import annotations

import json
import sys

import click

from .common import model_options, one_line_errors, open_model, sampler_options


@click.command()
@click.argument("prompt")
@model_options
@sampler_options
@click.option("--chat/--no-chat", default=True, show_default=True, help="wrap PROMPT in the model's chat template")
@click.option("--n", "n", default=1, show_default=True, type=click.IntRange(1, 64), help="parallel samples")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=None, type=click.IntRange(0, 2**32 - 1))
@click.option("--json", "as_json", is_flag=True, help="print the OpenAI-shaped result as JSON")
@one_line_errors
def generate(prompt, model, threads, placement, sampling, chat, n, max_tokens, seed, as_json):
    """Generate a reply to PROMPT (`-` reads it from stdin)."""
    if prompt == "-":
        prompt = sys.stdin.read()
    kwargs = dict(max_tokens=max_tokens, seed=seed, n=n, **sampling)
    # the n samples share their prompt's cells in the KV pool
    with open_model(model, threads, placement, n_seq_max=n, n_ctx=max(4096, 1024 + n * max_tokens)) as llm:
        def run(**extra):
            if chat:
                return llm.create_chat_completion([{"role": "user", "content": prompt}], **kwargs, **extra)
            return llm.create_completion(prompt, **kwargs, **extra)

        if as_json:
            click.echo(json.dumps(run(trace=sampling["sampler"] == "led"), indent=2))
        elif n > 1:
            for c in run()["choices"]:
                text = c["message"]["content"] if chat else c["text"]
                click.echo(f"--- sample {c['index']} ({c['finish_reason']})\n{text}")
        else:
            finish = None
            for chunk in run(stream=True):
                for c in chunk["choices"]:
                    click.echo(c["delta"].get("content", "") if chat else c["text"], nl=False)
                    finish = c.get("finish_reason") or finish
            click.echo()
            if finish == "length":
                click.echo(f"[cut at max_tokens={max_tokens}: --max-tokens for a longer answer]", err=True)
