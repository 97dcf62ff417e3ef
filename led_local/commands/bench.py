"""`led-local bench`: LED vs standard decode tokens/s on the chosen model (led_local/benchmark.py)."""

from __future__ import annotations

import statistics

import click

from ..benchmark import led_vs_standard
from .common import model_options, one_line_errors, open_model


@click.command()
@model_options
@click.option("--tokens", type=click.IntRange(2), default=160, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@one_line_errors
def bench(model, threads, placement, tokens, rounds):
    """Standard vs LED decode speed on a GSM8K chat prompt (T=0.6; 1 thread unless --threads)."""
    with open_model(model, threads or 1, placement, n_seq_max=1, n_ctx=2048) as llm:
        r = led_vs_standard(llm, tokens, rounds, report=click.echo)
    med = r["median_tok_s"]
    click.echo(f"standard {med['standard']:.2f} tok/s, led {med['led']:.2f} tok/s: "
               f"led/standard = {r['led_over_standard']:.3f}x (explored {statistics.mean(r['explored_share']):.1%} "
               f"of tokens), {r['threads']} thread(s), median of {rounds} alternating rounds")
