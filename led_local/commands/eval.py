"""`led-local eval DATA`: pass@k of one or more samplers on a maths dataset, resumable; `--report DIR`
recomputes every figure from the sample files alone."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from .. import params
from ..eval import data, report, runner
from .common import cli_option, model_options, one_line_errors, open_model, sampling_kwargs


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_cleanly_on_signals() -> None:
    """SIGTERM, and SIGINT even where a background launch ignores it, end the run between two writes."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"{name} must list positive integers, got {value!r}")
    return out


@click.command("eval")
@click.argument("dataset", required=False)
@model_options
@click.option("--sampler", type=click.Choice(["led", "standard", "dola"]), default="led", show_default=True)
@click.option("--compare", default=None, help="comma-separated samplers to run on the same problems and seeds")
@click.option("--n", "n", type=click.IntRange(1, 64), default=16, show_default=True, help="samples per problem")
@click.option("--k", "ks", default=None, help="pass@k values to report [default: 1,4,16; with --report: the run's]")
@click.option("--limit", type=click.IntRange(1), default=None, help="first N problems only")
@click.option("--max-tokens", type=click.IntRange(1), default=512, show_default=True)
@cli_option(params.BY_NAME["temperature"])
@cli_option(params.LED_BY_NAME["d"], "led_d")
@click.option("--led-k", "--k-led", "led_k", type=click.IntRange(1, params.MAX_LED_K),
              default=params.LED_BY_NAME["k"].cli, show_default=True,
              help=params.LED_BY_NAME["k"].help + " (--k-led: the old spelling; --k is pass@k's here)")
@cli_option(params.LED_BY_NAME["latent_norm"])
@click.option("--dola-layers", default="high", show_default=True, help="low, high, or comma-separated layers")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--out", "out_dir", default=None, help="output folder (default: eval-<dataset>-<model>)")
@click.option("--report", "report_dir", default=None, help="recompute the figures of a finished or partial run")
@one_line_errors
def eval_command(dataset, model, threads, placement, sampler, compare, n, ks, limit, max_tokens, temperature, led_d, led_k,
                 latent_norm, dola_layers, seed, out_dir, report_dir):
    """Sample every problem n times per sampler and report pass@k (Chen et al. 2021)."""
    k_list = _int_list(ks, "--k") if ks is not None else None
    if report_dir is not None:
        summary = report.summarize(Path(report_dir), k_list or report.previous_ks(Path(report_dir)))
        click.echo(report.format_table(summary))
        if len(summary["samplers"]) >= 1:
            click.echo(f"plot: {report.plot(summary, Path(report_dir) / 'passk.png')}")
        return
    if dataset is None:
        raise ValueError("give a DATASET file (or --report DIR)")
    samplers = [s.strip() for s in compare.split(",")] if compare else [sampler]
    unknown = [s for s in samplers if s not in ("led", "standard", "dola")]
    if unknown or len(set(samplers)) != len(samplers):
        raise ValueError(f"--compare takes distinct samplers among led, standard, dola; got {compare!r}")
    k_list = k_list or [1, 4, 16]
    dropped = [k for k in k_list if k > n]
    k_list = [k for k in k_list if k <= n]
    if not k_list:
        raise ValueError(f"every --k value ({ks}) exceeds --n {n} samples per problem; pass@k needs k <= n")
    if dropped:
        click.echo(f"note: pass@{','.join(map(str, dropped))} left out: pass@k needs k <= --n {n} samples per problem",
                   err=True)
    problems = data.load(dataset, limit)
    out = Path(out_dir or f"eval-{Path(dataset).stem}-{Path(model).stem}")
    _stop_cleanly_on_signals()

    from tqdm import tqdm

    # the n samples share their prompt's cells in the KV pool: a prompt (<= 1024 tokens) plus each sample's answer
    with open_model(model, threads, placement, n_seq_max=n, n_ctx=1024 + n * max_tokens) as llm:
        total = len(problems) * n * len(samplers)
        plans = []
        for label in samplers:
            sampling = sampling_kwargs(label, temperature=temperature, d=led_d, k=led_k, latent_norm=latent_norm,
                                       dola_layers=dola_layers)
            settings = {"model": Path(llm.model_path).name, "dataset": str(Path(dataset).name),
                        "problems": [p.id for p in problems], "n": n, "seed": seed, "max_tokens": max_tokens,
                        "temperature": temperature, "sampler": label,
                        "sampling": {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in sampling.items()}}
            plans.append((label, sampling, settings))
        ids = {p.id for p in problems}
        done = sum(runner.count_done(out, label, ids) for label, _, _ in plans)
        with tqdm(total=total, initial=done, unit="sample", desc="eval", dynamic_ncols=True) as bar:
            # problem by problem, every sampler in turn: a partial run is a paired comparison already
            for index, problem in enumerate(problems):
                for label, sampling, settings in plans:
                    bar.set_postfix_str(f"{label} #{index}")
                    runner.run(llm, [problem], label=label, sampling=sampling, n=n, seed=seed, max_tokens=max_tokens,
                               out_dir=out, settings=settings, progress=bar.update, first_index=index)
    summary = report.summarize(out, k_list)
    click.echo(report.format_table(summary))
    click.echo(f"samples and summary.json in {out}; plot: {report.plot(summary, out / 'passk.png')}")
