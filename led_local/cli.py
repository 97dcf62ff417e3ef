"""The `led-local` command (click). Each subcommand lives in led_local/commands/ and talks only to the
Llama object, the registry and the evaluator.

Bad input ends with exit status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys

import click

from .commands.bench import bench
from .commands.chat import chat
from .commands.entropy import entropy_profile
from .commands.eval import eval_command
from .commands.generate import generate
from .commands.models import models_group
from .commands.rpc_server import rpc_server
from .commands.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="led-local")
def cli() -> None:
    """Latent Exploration Decoding for local GGUF models."""


for command in (chat, generate, models_group, eval_command, entropy_profile, bench, serve, rpc_server):
    cli.add_command(command)


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


if __name__ == "__main__":
    main()
