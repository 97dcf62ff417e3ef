"""`led-local serve`: the OpenAI-compatible server (led_local/server.py) on uvicorn."""

from __future__ import annotations

import gc
import signal
from pathlib import Path

import click

from .common import model_options, one_line_errors, open_model


HEADER_SECONDS = 10  # a connection must have sent a request's headers this long after it opened or answered


def header_timeout_protocol():
    """uvicorn's h11 protocol, closing a connection that has not sent a request's headers within
    HEADER_SECONDS of opening (or of its last response): uvicorn itself waits for them forever, so 100
    connections that never finish their headers would hold 100 sockets."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        def _arm(self) -> None:
            cycle = self.cycle
            self._header_timer = self.loop.call_later(HEADER_SECONDS, self._headers_late, cycle)

        def _headers_late(self, cycle) -> None:
            if self.cycle is cycle and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._header_timer.cancel()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeout


def ending_server(uvicorn, driver):
    """uvicorn's Server, ending every request in flight the moment a signal asks it to stop: a stream then
    gets its error event at the next step instead of holding the shutdown for the graceful timeout."""
    from ..server import ServerShuttingDown

    class EndingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            driver.end_all(ServerShuttingDown("the server is shutting down; retry against its next start"))
            super().handle_exit(sig, frame)

    return EndingServer


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
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="another Host name a loopback server answers (repeatable; *.example.com for a domain)")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 1024), default=8.0, show_default=True,
              help="largest request body; a bigger one gets 413 before it is read")
@click.option("--max-connections", type=click.IntRange(1), default=256, show_default=True,
              help="open connections and requests at once; beyond it uvicorn answers 503")
@click.option("--max-sample-seconds", type=click.FloatRange(0.01), default=2.0, show_default=True,
              help="one token's sampling (a costly grammar) over this ends that request with an error")
@one_line_errors
def serve(model, threads, placement, host, port, api_key, n_ctx, parallel, max_n, max_tokens_limit, max_queue, no_prefix_cache,
          embedding, batch_invariant, quiet, allow_hosts, max_body_mb, max_connections, max_sample_seconds):
    """Serve /v1/models, /v1/completions and /v1/chat/completions (with LED and DoLa fields)."""
    import uvicorn

    from ..server import Limits, create_app, is_loopback

    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key (or LED_LOCAL_API_KEY) is empty: give a key, or leave it out to serve without one")
    max_n = max_n or parallel
    if max_n > parallel:
        raise ValueError(f"--max-n {max_n} exceeds --parallel {parallel}: a request's samples each need a slot")
    with open_model(model, threads, placement, n_seq_max=parallel, n_ctx=n_ctx, prefix_cache=not no_prefix_cache,
                    batch_invariant=batch_invariant, embedding=embedding) as llm:
        model_id = model if "/" not in model and not model.endswith(".gguf") else Path(llm.model_path).stem
        # DNS rebinding: a loopback server answers only Host names of this machine (and --allow-host's); one
        # bound beyond loopback is meant to be reached by other names, unless --allow-host lists them
        check_hosts = is_loopback(host) or bool(allow_hosts)
        app = create_app(llm, model_id, api_key=api_key,
                         limits=Limits(max_n=max_n, max_tokens=max_tokens_limit, max_queue=max_queue,
                                       max_body_bytes=int(max_body_mb * (1 << 20)),
                                       max_sample_seconds=max_sample_seconds),
                         log=None if quiet else (lambda line: click.echo(f"led-local serve: {line}", err=True)),
                         allowed_hosts=tuple(allow_hosts) if check_hosts else None)
        click.echo(f"led-local serve: {model_id} on http://{host}:{port}/v1, {parallel} slots sharing "
                   f"{llm.n_ctx()} KV cells" + (", batch-invariant kernels" if llm.batch_invariant else "")
                   + (", embeddings only" if llm.embedding else "")
                   + (" (API key required)" if api_key else ""))
        # SIGTERM / Ctrl-C: uvicorn stops accepting and open streams end (sse-starlette); uvicorn then raises
        # the signal again, which these handlers turn into a normal return (exit status 0)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        # the model, the app and every module live as long as the server: out of the cyclic collector's
        # walks, so the collection after a large request (server.py, _release_freed_memory) walks only what
        # requests made (50 ms on the event loop without this, measured)
        gc.freeze()
        try:
            config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                                    http=header_timeout_protocol(), limit_concurrency=max_connections,
                                    timeout_keep_alive=5)
            ending_server(uvicorn, app.state.driver)(config).run()
        finally:
            app.state.driver.shutdown()  # the steps must be done before the model is freed
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        click.echo("led-local serve: stopped")
