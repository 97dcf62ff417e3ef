"""`led-local entropy-profile`: does this model have the latent entropy reservoir LED needs?"""

from __future__ import annotations

from pathlib import Path

import click

from .. import diagnostics
from ..eval import data
from .common import model_options, one_line_errors, open_model

DEFAULT_QUESTIONS = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends "
    "every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much "
    "in dollars does she make every day at the farmers' market?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
]


def _prompts(path: str | None, limit: int) -> list[list[dict]]:
    if path is None:
        return [[{"role": "user", "content": f"{data.MATH_INSTRUCTION}\n\n{q}"}] for q in DEFAULT_QUESTIONS]
    p = Path(path)
    head = p.read_text(encoding="utf-8").lstrip()[:1] if p.exists() else ""
    if head in ("[", "{"):
        return [problem.messages() for problem in data.load(p, limit)]
    if not p.exists():
        raise FileNotFoundError(f"prompts file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{p}: no prompts in the file")
    return [[{"role": "user", "content": ln}] for ln in lines[:limit]]


@click.command("entropy-profile")
@model_options
@click.option("--prompts", default=None, help="dataset (JSON/JSONL as for eval) or a text file, one prompt a line")
@click.option("--limit", type=click.IntRange(1), default=4, show_default=True, help="prompts to use")
@click.option("--max-tokens", type=click.IntRange(1), default=64, show_default=True, help="generated tokens per prompt")
@click.option("--temperature", "-t", type=click.FloatRange(0.0, min_open=True), default=0.6, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--plot", "plot_path", default=None, help="PNG to write (default: entropy-<model>.png)")
@one_line_errors
def entropy_profile(model, threads, placement, prompts, limit, max_tokens, temperature, seed, plot_path):
    """Normalized entropy per block (raw and normed lens) and of the final layer, over generated tokens."""
    messages = _prompts(prompts, limit)
    with open_model(model, threads, placement, n_seq_max=1, n_ctx=4096) as llm:
        prof = diagnostics.entropy_profile(llm, messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        name = Path(llm.model_path).stem
    click.echo(f"{name}: {prof.tokens} generated tokens, T={temperature}; final layer {prof.final:.4f} "
               f"(mean top-1 probability {prof.mean_top1:.3f})")
    click.echo(f"{'block':>5}  {'raw lens':>9}  {'normed lens':>11}")
    for b in prof.blocks:
        mark = "  <- LED reads" if b in prof.led_blocks else ""
        click.echo(f"{b:>5}  {prof.raw[b]:>9.4f}  {prof.normed[b]:>11.4f}{mark}")
    click.echo(f"{'final':>5}  {prof.final:>9.4f}")
    click.echo(prof.verdict())
    diagnostics.remember_profile(llm.model_path, prof)  # `led-local chat` states it for this model
    out = Path(plot_path or f"entropy-{name}.png")
    diagnostics.plot_profile(prof, out, title=f"{name}: entropy profile (T={temperature})")
    click.echo(f"plot: {out}")

