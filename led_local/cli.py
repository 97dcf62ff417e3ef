"""The `led-local` command (click). Each subcommand talks only to the Llama object and the registry.

Bad input ends with exit status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from functools import wraps

import click

from . import models
from .chat import ChatTemplateError
from .llama import Llama
from .models import ModelFetchError, UnknownModelError

USER_ERRORS = (FileNotFoundError, ValueError, TypeError, UnknownModelError, ModelFetchError, ChatTemplateError)


def _one_line_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            click.echo(f"led-local: error: {e}", err=True)
            sys.exit(2)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="led-local")
def cli() -> None:
    """Latent Exploration Decoding for local GGUF models."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors become one line and exit status 2, like our own errors."""
    try:
        rv = cli.main(args=argv, prog_name="led-local", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        click.echo(f"led-local: error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("led-local: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"led-local: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


def _open(model: str, threads: int | None, n_seq_max: int = 8, n_ctx: int = 4096) -> Llama:
    return Llama(models.path(model), n_threads=threads, n_seq_max=n_seq_max, n_ctx=n_ctx)


@cli.command()
@click.argument("prompt")
@click.option("--model", "-m", default=models.DEFAULT_MODEL, show_default=True, help="registry key or .gguf path")
@click.option("--chat/--no-chat", default=True, show_default=True, help="wrap PROMPT in the model's chat template")
@click.option("--n", "n", default=1, show_default=True, type=click.IntRange(1, 64), help="parallel samples")
@click.option("--max-tokens", default=256, show_default=True, type=int)
@click.option("--temperature", default=0.6, show_default=True, type=float)
@click.option("--top-k", default=20, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--seed", default=None, type=click.IntRange(0, 2**32 - 1))
@click.option("--threads", default=None, type=click.IntRange(1, 512))
@click.option("--json", "as_json", is_flag=True, help="print the OpenAI-shaped result as JSON")
@_one_line_errors
def generate(prompt, model, chat, n, max_tokens, temperature, top_k, top_p, seed, threads, as_json):
    """Generate a reply to PROMPT (`-` reads it from stdin)."""
    if prompt == "-":
        prompt = sys.stdin.read()
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=0.0,
                  seed=seed, n=n)
    with _open(model, threads, n_seq_max=max(n, 1)) as llm:
        if as_json:
            result = (llm.create_chat_completion([{"role": "user", "content": prompt}], **kwargs) if chat
                      else llm.create_completion(prompt, **kwargs))
            click.echo(json.dumps(result, indent=2))
            return
        if n > 1:
            result = (llm.create_chat_completion([{"role": "user", "content": prompt}], **kwargs) if chat
                      else llm.create_completion(prompt, **kwargs))
            for c in result["choices"]:
                text = c["message"]["content"] if chat else c["text"]
                click.echo(f"--- sample {c['index']} ({c['finish_reason']})\n{text}")
            return
        chunks = (llm.create_chat_completion([{"role": "user", "content": prompt}], stream=True, **kwargs) if chat
                  else llm.create_completion(prompt, stream=True, **kwargs))
        for chunk in chunks:
            for c in chunk["choices"]:
                click.echo(c["delta"].get("content", "") if chat else c["text"], nl=False)
        click.echo()


@cli.group("models")
def models_group() -> None:
    """List, fetch and locate registry models."""


@models_group.command("list")
def models_list() -> None:
    for e in models.REGISTRY.values():
        mark = "cached" if models.is_cached(e.key) else "-"
        default = " (default)" if e.key == models.DEFAULT_MODEL else ""
        click.echo(f"{e.key:20} {e.size / 1e6:7.0f} MB  {mark:6}  {e.name}{default}  [{e.licence}]")


@models_group.command("pull")
@click.argument("key")
@_one_line_errors
def models_pull(key: str) -> None:
    click.echo(models.pull(key))


@models_group.command("path")
@click.argument("key")
@_one_line_errors
def models_path(key: str) -> None:
    models.entry(key)
    click.echo(models.cached_path(key))


if __name__ == "__main__":
    main()
