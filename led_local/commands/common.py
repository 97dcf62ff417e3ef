"""Options shared by the subcommands: the model, threads, and the sampler with its LED/DoLa settings."""

from __future__ import annotations

import functools
import sys

import click

from .. import models, params
from ..chat import ChatTemplateError
from ..llama import Llama
from ..models import ModelFetchError, UnknownModelError
from ..sampling import LEDConfig

USER_ERRORS = (FileNotFoundError, ConnectionError, ValueError, TypeError, UnknownModelError, ModelFetchError, ChatTemplateError)


def one_line_errors(fn):
    """Bad input ends the command with exit status 2 and one line, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            click.echo(f"led-local: error: {e}", err=True)
            sys.exit(2)
    return wrapper


def model_options(fn):
    """--model, --threads, and where the layers go (--n-gpu-layers, --rpc); the command receives the last two
    as `placement` (keyword arguments of Llama)."""
    fn = click.option("--rpc", default=None, metavar="HOST:PORT[,...]",
                      help="put layers on these `led-local rpc-server`s (all of them unless --n-gpu-layers)")(fn)
    fn = click.option("--n-gpu-layers", "-ngl", default=None, type=click.IntRange(-1),
                      help="layers on GPUs and RPC servers (-1: all; default 0, or all with --rpc)")(fn)
    fn = click.option("--threads", default=None, type=click.IntRange(1, 512), help="CPU threads (default: half the cores)")(fn)
    fn = click.option("--model", "-m", default=models.DEFAULT_MODEL, show_default=True,
                      help="registry key (`led-local models list`) or .gguf path")(fn)

    @functools.wraps(fn)
    def wrapper(*args, rpc, n_gpu_layers, **kwargs):
        if n_gpu_layers is None:
            n_gpu_layers = -1 if rpc else 0
        kwargs["placement"] = dict(rpc_servers=rpc, n_gpu_layers=n_gpu_layers)
        return fn(*args, **kwargs)
    return wrapper


def open_model(model: str, threads: int | None, placement: dict, n_seq_max: int = 8, n_ctx: int = 4096,
               **kwargs) -> Llama:
    return Llama(models.path(model), n_threads=threads, n_seq_max=n_seq_max, n_ctx=n_ctx, **placement, **kwargs)


def cli_option(p: params.Param, dest: str | None = None):
    """The command's option for a sampling parameter of the table (params.py): its flags, type, bounds,
    default (the paper's setting) and help."""
    if p.kind is bool:
        flag = p.name.replace("_", "-")
        return click.option(f"--{flag}/--no-{flag}", dest or p.name, default=p.cli, show_default=True, help=p.help)
    flags = (p.cli_flag or "--" + p.name.replace("_", "-")).split("/")
    lo, hi = (p.lo if p.api_lo is params.SAME else p.api_lo), p.hi  # (no negative top-k on the command line)
    kind = click.IntRange(lo, hi) if p.kind is int else click.FloatRange(lo, hi, min_open=p.lo_exclusive)
    return click.option(*flags, dest or p.name, type=kind, default=p.cli, show_default=True, help=p.help)


def led_options(fn):
    """LED's settings as options (--d, --led-k, --latent-norm, --exploit, --think-only), as led_NAME or NAME."""
    for p in reversed(params.LED_PARAMS):
        fn = cli_option(p, f"led_{p.name}" if p.name in ("d", "k") else None)(fn)
    return fn


def sampler_options(fn):
    """--sampler and its settings; the command receives them as `sampling` (a dict for create_*)."""
    fn = click.option("--dola-layers", default="high", show_default=True, help="low, high, or comma-separated layers")(fn)
    fn = led_options(fn)
    for name in ("top_p", "top_k", "temperature"):
        fn = cli_option(params.BY_NAME[name])(fn)
    fn = click.option("--sampler", type=click.Choice(params.SAMPLERS), default=params.LED, show_default=True)(fn)

    @functools.wraps(fn)
    def wrapper(*args, sampler, temperature, top_k, top_p, led_d, led_k, latent_norm, exploit, think_only,
                dola_layers, **kwargs):
        try:
            kwargs["sampling"] = sampling_kwargs(sampler, temperature=temperature, top_k=top_k, top_p=top_p, d=led_d,
                                                 k=led_k, latent_norm=latent_norm, exploit=exploit,
                                                 think_only=think_only, dola_layers=dola_layers)
        except (ValueError, TypeError) as e:
            raise click.UsageError(str(e)) from None
        return fn(*args, **kwargs)
    return wrapper


CLI = {p.name: p.cli for p in (*params.PARAMS, *params.LED_PARAMS) if p.cli is not None}  # the paper's setting


def parse_dola_layers(value: str | list) -> str | list[int]:
    if isinstance(value, list) or value in ("low", "high"):
        return value
    try:
        return [int(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--dola-layers must be low, high or comma-separated integers, got {value!r}") from None


def sampling_kwargs(sampler: str, *, temperature: float, top_k: int = CLI["top_k"], top_p: float = CLI["top_p"],
                    d: int = CLI["d"], k: int = CLI["k"], latent_norm: bool = CLI["latent_norm"],
                    exploit: bool = CLI["exploit"], think_only: bool = CLI["think_only"],
                    dola_layers: str | list = "high") -> dict:
    """Keyword arguments of create_completion / create_chat_completion for one sampler setting."""
    out: dict = {"sampler": sampler, "temperature": temperature}
    if sampler == "led":
        out["led"] = LEDConfig(d=d, k=k, latent_norm=latent_norm, exploit=exploit, think_only=think_only)
    else:
        out.update(top_k=top_k, top_p=top_p, min_p=0.0)  # (the paper's baseline has no min-p)
        if sampler == "dola":
            out["dola_layers"] = parse_dola_layers(dola_layers)
    return out
