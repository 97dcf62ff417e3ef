"""`Llama`: one GGUF model and its llama.cpp context, in the shape llama-cpp-python users know.

The front only: it checks a user's arguments, makes the `Engine` (engine.py: the native handles and every
call on them) and the `Scheduler` over it (scheduler.py: the one token loop), and offers llama-cpp-python's
methods. Requests and their OpenAI shapes are generate.py's; sampler settings sampling.py's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import models, rpc
from .embedding import create_embedding, embed
from .engine import MAX_DEVICES, DecodeError, Engine, check_gguf_file
from .engine import check_int as _check_int
from .results import LatentReadout, LlamaState
from .scheduler import Job, Scheduler

__all__ = ["Llama", "LatentReadout", "LlamaState", "DecodeError", "check_gguf_file"]

MAX_SEQUENCES = 64
# llama-cpp-python's chat_format values led-local takes (chat.py renders with the GGUF's template)
CHAT_FORMATS = (None, "chatml-function-calling")


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


class Llama:
    """A GGUF model with a llama.cpp context.

    The KV cache is one pool of `n_ctx` cells shared by `n_seq_max` sequences (slots; llama.cpp's unified KV
    cache): one request may use all `n_ctx`, as in llama-cpp-python, and the `n` samples of a request share
    their prompt's cells. Requests that do not fit together wait (scheduler.py says how cells are reserved). Every call
    goes through one scheduler (scheduler.py), which keeps what each slot evaluated: a later prompt that
    starts the same way is evaluated from where it differs (`prefix_cache=False` turns that off), and
    calls from several threads are decoded together.

    `embedding=True` opens an embedding context (`embed`, `create_embedding`; embedding.py), which does not
    generate. `logits_all` is accepted for llama-cpp-python's sake and changes nothing: logprobs are computed from the
    sampled rows without it. `flash_attn`: None keeps llama.cpp's auto choice (on where supported; note
    llama-cpp-python's default is off), True/False force it.

    `chat_format`: chats are rendered by the GGUF's own template (None); llama-cpp-python's
    "chatml-function-calling" is taken for a ChatML template that renders tools, the same kind of prompt.

    `rpc_servers` ("host:port,..." or a list): the devices of those `led-local rpc-server`s take layers first,
    then the local GPUs (llama.cpp's order); `n_gpu_layers` counts the layers on all of them and
    `tensor_split` gives each device's share, as in llama-cpp-python.

    `batch_invariant=True` makes a token's logits independent of what shares its batch (README,
    Determinism): ggml's reference CPU kernels and no weight repacking, at some cost in prompt speed.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_seq_max: int = 8,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
        tensor_split: Sequence[float] | None = None,
        rpc_servers: str | Sequence[str] | None = None,
        seed: int | None = None,
        prefix_cache: bool = True,
        batch_invariant: bool = False,
        logits_all: bool = False,
        flash_attn: bool | None = None,
        embedding: bool = False,
        chat_format: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.engine: Engine | None = None
        path = Path(model_path)
        n_ctx = _check_int("n_ctx", n_ctx, 16)
        self.n_batch = _check_int("n_batch", n_batch, 1)
        self.n_seq_max = _check_int("n_seq_max", n_seq_max, 1, MAX_SEQUENCES)
        self.n_threads = _check_int("n_threads", n_threads if n_threads is not None else _default_threads(), 1)
        self.n_threads_batch = _check_int(
            "n_threads_batch", n_threads_batch if n_threads_batch is not None else self.n_threads, 1
        )
        _check_int("n_gpu_layers", n_gpu_layers, -1)
        servers = rpc.parse_servers(rpc_servers)
        split = None
        if tensor_split is not None:
            split = [float(x) for x in tensor_split]
            if not 0 < len(split) <= MAX_DEVICES or any(not x >= 0 for x in split) or sum(split) <= 0:
                raise ValueError(f"tensor_split takes 1 to {MAX_DEVICES} non-negative shares, not all 0; got {tensor_split!r}")
        self.batch_invariant = bool(batch_invariant)
        if flash_attn not in (None, True, False):
            raise ValueError(f"flash_attn must be None (llama.cpp's auto), True or False, got {flash_attn!r}")
        self.flash_attn = flash_attn
        self.embedding = bool(embedding)
        if chat_format not in CHAT_FORMATS:
            raise ValueError(f"chat_format={chat_format!r} is one of llama-cpp-python's own chat handlers; led-local "
                             "renders chats with the model's own template (llama.cpp's common/chat, as llama-server "
                             "does): leave chat_format out")
        self.chat_format = chat_format
        if self.batch_invariant and n_gpu_layers != 0:
            raise ValueError("batch_invariant=True covers the CPU backend's kernels only; use n_gpu_layers=0 with it")
        if seed is not None:
            _check_int("seed", seed, 0, 2**32 - 1)
        self.seed = seed
        self.verbose = bool(verbose)
        check_gguf_file(path)
        self.model_path = str(path)

        self.rpc_servers = servers
        self.engine = Engine(path, n_ctx=n_ctx, n_batch=self.n_batch, n_seq_max=self.n_seq_max,
                             n_threads=self.n_threads, n_threads_batch=self.n_threads_batch,
                             n_gpu_layers=n_gpu_layers, tensor_split=split, rpc_servers=servers,
                             batch_invariant=self.batch_invariant, flash_attn=self.flash_attn,
                             embedding=self.embedding, verbose=self.verbose)
        self.metadata = self.engine.metadata
        # the one token loop: every generation and readout of this Llama goes through it
        self.scheduler = Scheduler(self.engine, prefix_cache=bool(prefix_cache))

    # --- lifetime -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, *, local_dir: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> "Llama":
        """llama-cpp-python's way to open a GGUF from the Hugging Face Hub (`huggingface_hub` must be installed
        and the hub reachable). led-local's offline path is its model registry: `Llama(models.path(key))`."""
        return cls(models.hub_download(repo_id, filename, local_dir=local_dir, cache_dir=cache_dir), **kwargs)

    def close(self) -> None:
        """Free the native context and model (idempotent)."""
        if getattr(self, "engine", None) is not None:
            self.engine.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def abort_decodes(self, on: bool = True) -> None:
        """From any thread: while on, every llama_decode of this Llama stops at its next graph node and fails
        ("aborted"; the requests in that batch end with the error). For a shutdown that must not wait out a
        long prompt chunk; `abort_decodes(False)` lets decodes run again."""
        self.engine.abort_decodes(on)

    # --- model and token facts (engine.py) --------------------------------------------------------------

    def n_ctx(self) -> int:
        """KV cells in all (llama-cpp-python's accessor), shared by the sequences; one request may use them all."""
        return self.engine.n_ctx()

    @property
    def n_ctx_seq(self) -> int:
        """What one sequence may use: the whole pool (llama.cpp's n_ctx_seq)."""
        return self.engine.n_ctx()

    @property
    def compactions(self) -> int:
        """Times the KV pool was packed to keep sequences' cells in order (engine.py, `Engine.compact`)."""
        return self.engine.compactions

    def n_vocab(self) -> int:
        return self.engine.n_vocab()

    def max_token_bytes(self) -> int:
        """The longest text any one token stands for (special tokens' included), in bytes: a text longer
        than n_ctx() times this cannot fit the context, which can be said without tokenizing it."""
        return self.engine.max_token_bytes()

    def n_layer(self) -> int:
        return self.engine.n_layer()

    def n_embd(self) -> int:
        return self.engine.n_embd()

    def n_ctx_train(self) -> int:
        return self.engine.n_ctx_train()

    def token_bos(self) -> int:
        return self.engine.token_bos()

    def token_eos(self) -> int:
        return self.engine.token_eos()

    def token_nl(self) -> int:
        return self.engine.token_nl()

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle tokens (prefix, suffix, middle), or None when the model has none."""
        return self.engine.fim_tokens()

    def set_seed(self, seed: int) -> None:
        """The seed of later calls that give none (llama-cpp-python's set_seed)."""
        self.seed = _check_int("seed", seed, 0, 2**32 - 1)

    def is_eog(self, token: int) -> bool:
        return self.engine.is_eog(token)

    def token_text(self, token: int) -> str:
        """The vocabulary's own spelling of a token (special tokens included)."""
        return self.engine.token_text(token)

    def head_is_tied(self) -> bool:
        """Whether the LM head is the token embedding matrix (no `output.weight` tensor in the GGUF)."""
        return self.engine.head_is_tied()

    def end_of_thinking_tokens(self) -> list[int]:
        """The token(s) of the model's end-of-thinking marker `</think>` when its vocabulary has one as a
        token of its own, else [] (docs/led.md step 8: such a model is "thinking" for its whole output)."""
        return self.engine.end_of_thinking_tokens()

    def chat_template(self) -> str | None:
        """The GGUF's chat template (tokenizer.chat_template), None for a model without one."""
        return self.engine.chat_template()

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to token ids. `special` parses special-token text such as `<|im_start|>`."""
        return self.engine.tokenize(text, add_bos, special)

    def token_to_bytes(self, token: int, special: bool = False) -> bytes:
        return self.engine.token_to_bytes(token, special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Token ids to bytes (which need not be complete UTF-8 for a partial sequence)."""
        return self.engine.detokenize(tokens, special)

    def reset(self) -> None:
        """Forget every sequence in the KV cache, cached prefixes included."""
        with self.engine.lock:
            self.engine.check_open()
            self.engine.clear_memory()
            self.scheduler.clear()

    # --- latent readout ---------------------------------------------------------------------------------

    def default_latent_layers(self, d: int = 8) -> list[int]:
        """The d-1 blocks right below the last, in LED depth order: h_{L-2}, h_{L-3}, ... (docs/led.md)."""
        return self.engine.default_latent_layers(d)

    def latent_head_rows(self) -> int:
        """How many rows the LM head has run over for the latent readout since this Llama was made (in the
        decode graph, or on demand for one row). Exact LED adds one per exploring step and none otherwise."""
        return self.engine.latent_head_rows()

    def validate_layers(self, layers: Sequence[int], allow_embeddings: bool = False) -> list[int]:
        """Block indices 0..n_layer-1 (and -1, the token embeddings entering block 0, when allowed)."""
        return self.engine.validate_layers(layers, allow_embeddings)

    def latents(self, prompt: str | bytes | Sequence[int], layers: Sequence[int] | None = None,
                norm: bool = False) -> LatentReadout:
        """Hidden states and head logits of `layers` after the prompt's last token (-1: the token embeddings).

        `layers` defaults to the 7 blocks below the last (LED's d = 8; fewer on a model with fewer blocks).
        With `norm`, the logits are
        computed over the final-normed states (`latent_norm`); `hidden` stays raw either way.
        """
        self.engine.check_open()
        tokens = list(prompt) if not isinstance(prompt, (str, bytes)) else self.tokenize(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        if len(tokens) > self.n_ctx():
            raise ValueError(f"the prompt has {len(tokens)} tokens, more than the context window (n_ctx={self.n_ctx()})")
        self.detokenize(tokens)  # validates the ids
        layers = (self.validate_layers(layers, allow_embeddings=True) if layers is not None
                  else self.default_latent_layers(min(8, self.n_layer())))
        # a job of the scheduler like any generation: it reuses a cached prefix and leaves its own
        job = self.scheduler.run(Job(prompt=tokens, readout=(tuple(layers), bool(norm))))
        hidden, lat, final = job.result
        return LatentReadout(tokens=tokens, layers=list(layers), hidden=hidden, logits=lat,
                             final_logits=final, norm=norm)

    # --- state ------------------------------------------------------------------------------------------

    def save_state(self) -> "LlamaState":
        """A snapshot of the context (llama.cpp's KV state) and of what each slot holds (the prefix cache), for
        load_state: a seeded call made after loading gives the same tokens as right after saving."""
        with self.engine.lock:
            self.engine.check_open()
            self.scheduler.require_idle("save_state")
            return LlamaState(kv=self.engine.state_bytes(), slots=self.scheduler.cached_prefixes(),
                              model_path=self.model_path, n_ctx=self.n_ctx(), n_seq_max=self.n_seq_max,
                              seed=self.seed)

    def load_state(self, state: "LlamaState") -> None:
        if not isinstance(state, LlamaState):
            raise TypeError("load_state takes what save_state returned")
        if (state.model_path, state.n_ctx, state.n_seq_max) != (self.model_path, self.n_ctx(), self.n_seq_max):
            raise ValueError("this state was saved from another model or context size (model_path, n_ctx and "
                             "n_seq_max must match)")
        with self.engine.lock:
            self.engine.check_open()
            self.scheduler.require_idle("load_state")
            self.engine.set_state(state.kv)
            self.scheduler.restore_prefixes(state.slots)
            self.seed = state.seed

    def embed(self, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """Pooled embeddings of `input` (embedding.py); needs Llama(..., embedding=True)."""
        return embed(self.engine, input, normalize=normalize, truncate=truncate, return_count=return_count)

    def create_embedding(self, input: str | Sequence[str], model: str | None = None, *,
                         normalize: bool = False) -> dict:
        """OpenAI's embeddings response for `input` (embedding.py); needs Llama(..., embedding=True)."""
        return create_embedding(self.engine, input, model=model, normalize=normalize)

    def create_completion(self, prompt: str | bytes | Sequence[int], **kwargs: Any) -> dict | Iterator[dict]:
        """OpenAI-shaped text completion; see `led_local.generate.create_completion` for the parameters."""
        from .generate import create_completion

        return create_completion(self, prompt, **kwargs)

    def create_chat_completion(self, messages: list[dict], **kwargs: Any) -> dict | Iterator[dict]:
        """OpenAI-shaped chat completion over the GGUF's chat template."""
        from .generate import create_chat_completion

        return create_chat_completion(self, messages, **kwargs)

    def __call__(self, prompt: str, **kwargs: Any) -> dict | Iterator[dict]:
        return self.create_completion(prompt, **kwargs)
