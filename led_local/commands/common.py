"""Options shared by the subcommands: the model, threads, and the sampler with its LED/DoLa settings."""

from __future__ import annotations

import functools
import sys

import click

from .. import models
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


def sampler_options(fn):
    """--sampler and its settings; the command receives them as `sampling` (a dict for create_*)."""
    options = [
        click.option("--sampler", type=click.Choice(["led", "standard", "dola"]), default="led", show_default=True),
        click.option("--temperature", "-t", type=click.FloatRange(0.0), default=0.6, show_default=True),
        click.option("--top-k", type=click.IntRange(0), default=20, show_default=True, help="standard/dola"),
        click.option("--top-p", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True, help="standard/dola"),
        click.option("--d", "led_d", type=click.IntRange(1), default=8, show_default=True, help="LED depths"),
        click.option("--led-k", "--k", "led_k", type=click.IntRange(1), default=8, show_default=True,
                     help="LED candidates (--k: the old spelling)"),
        click.option("--latent-norm/--no-latent-norm", default=False, show_default=True),
        click.option("--exploit/--no-exploit", default=True, show_default=True),
        click.option("--think-only/--no-think-only", default=True, show_default=True),
        click.option("--dola-layers", default="high", show_default=True, help="low, high, or comma-separated layers"),
    ]
    for option in reversed(options):
        fn = option(fn)

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


def parse_dola_layers(value: str | list) -> str | list[int]:
    if isinstance(value, list) or value in ("low", "high"):
        return value
    try:
        return [int(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--dola-layers must be low, high or comma-separated integers, got {value!r}") from None


def sampling_kwargs(sampler: str, *, temperature: float, top_k: int = 20, top_p: float = 0.95, d: int = 8,
                    k: int = 8, latent_norm: bool = False, exploit: bool = True, think_only: bool = True,
                    dola_layers: str | list = "high") -> dict:
    """Keyword arguments of create_completion / create_chat_completion for one sampler setting."""
    out: dict = {"sampler": sampler, "temperature": temperature}
    if sampler == "led":
        out["led"] = LEDConfig(d=d, k=k, latent_norm=latent_norm, exploit=exploit, think_only=think_only)
    else:
        out.update(top_k=top_k, top_p=top_p, min_p=0.0)
        if sampler == "dola":
            out["dola_layers"] = parse_dola_layers(dola_layers)
    return out
