"""`led-local serve`: the OpenAI-compatible server (led_local/server.py) on uvicorn."""

from __future__ import annotations

from pathlib import Path

import click

from .common import model_options, one_line_errors, open_model


@click.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (loopback by default)")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="LED_LOCAL_API_KEY", help="require `Authorization: Bearer KEY`")
@click.option("--ctx", "n_ctx", type=click.IntRange(256), default=8192, show_default=True, help="KV cells")
@click.option("--max-n", type=click.IntRange(1, 64), default=8, show_default=True, help="largest n per request")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=2048, show_default=True)
@one_line_errors
def serve(model, threads, host, port, api_key, n_ctx, max_n, max_tokens_limit):
    """Serve /v1/models, /v1/completions and /v1/chat/completions (with LED and DoLa fields)."""
    import uvicorn

    from ..server import Limits, create_app

    with open_model(model, threads, n_seq_max=max_n, n_ctx=n_ctx) as llm:
        model_id = model if "/" not in model and not model.endswith(".gguf") else Path(llm.model_path).stem
        app = create_app(llm, model_id, api_key=api_key, limits=Limits(max_n=max_n, max_tokens=max_tokens_limit))
        click.echo(f"led-local serve: {model_id} on http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning")
        finally:
            app.state.worker.shutdown()  # the worker thread must be done before the model is freed
