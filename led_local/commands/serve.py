"""`led-local serve`: the OpenAI-compatible server (led_local/server.py) on uvicorn."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from .common import model_options, one_line_errors, open_model


@click.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (loopback by default)")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="LED_LOCAL_API_KEY", help="require `Authorization: Bearer KEY`")
@click.option("--ctx", "n_ctx", type=click.IntRange(256), default=8192, show_default=True,
              help="KV cells, one pool shared by the slots (a request may use all of it)")
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=4, show_default=True,
              help="slots: sequences decoded together, each with its cached prompt")
@click.option("--max-n", type=click.IntRange(1, 64), default=None, help="largest n per request (default: --parallel)")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=2048, show_default=True)
@click.option("--max-queue", type=click.IntRange(0), default=64, show_default=True,
              help="requests that may wait for a slot; more get 503")
@click.option("--no-prefix-cache", is_flag=True, help="evaluate every prompt from the start")
@click.option("--embedding", is_flag=True, help="serve /v1/embeddings with this model (and no generation)")
@click.option("--batch-invariant", is_flag=True,
              help="a seeded request gives the same tokens whatever it was batched with (CPU; slower prompts)")
@click.option("--quiet", "-q", is_flag=True, help="no access log (one line per request on stderr)")
@one_line_errors
def serve(model, threads, placement, host, port, api_key, n_ctx, parallel, max_n, max_tokens_limit, max_queue, no_prefix_cache,
          embedding, batch_invariant, quiet):
    """Serve /v1/models, /v1/completions and /v1/chat/completions (with LED and DoLa fields)."""
    import uvicorn

    from ..server import Limits, create_app

    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key (or LED_LOCAL_API_KEY) is empty: give a key, or leave it out to serve without one")
    max_n = max_n or parallel
    if max_n > parallel:
        raise ValueError(f"--max-n {max_n} exceeds --parallel {parallel}: a request's samples each need a slot")
    with open_model(model, threads, placement, n_seq_max=parallel, n_ctx=n_ctx, prefix_cache=not no_prefix_cache,
                    batch_invariant=batch_invariant, embedding=embedding) as llm:
        model_id = model if "/" not in model and not model.endswith(".gguf") else Path(llm.model_path).stem
        app = create_app(llm, model_id, api_key=api_key,
                         limits=Limits(max_n=max_n, max_tokens=max_tokens_limit, max_queue=max_queue),
                         log=None if quiet else (lambda line: click.echo(f"led-local serve: {line}", err=True)))
        click.echo(f"led-local serve: {model_id} on http://{host}:{port}/v1, {parallel} slots sharing "
                   f"{llm.n_ctx()} KV cells" + (", batch-invariant kernels" if llm.batch_invariant else "")
                   + (", embeddings only" if llm.embedding else "")
                   + (" (API key required)" if api_key else ""))
        # SIGTERM / Ctrl-C: uvicorn stops accepting and open streams end (sse-starlette); uvicorn then raises
        # the signal again, which these handlers turn into a normal return (exit status 0)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        finally:
            app.state.driver.shutdown()  # the steps must be done before the model is freed
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        click.echo("led-local serve: stopped")
