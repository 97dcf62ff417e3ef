"""`Llama`: one GGUF model and its llama.cpp context, in the shape llama-cpp-python users know.

This module owns the model/context lifetime, tokenization, batched decoding and the latent readout.
The token loop (slots, cached prefixes, one decode per step) lives in `scheduler.py`; text, stop strings
and OpenAI-shaped results in `generate.py`; sampler settings in `sampling.py`; chat templates in `chat.py`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import _native, rpc
from ._native import ffi
from .embedding import create_embedding, embed, model_pooling
from .scheduler import Job, Scheduler

GGUF_MAGIC = b"GGUF"
MAX_SEQUENCES = 64
# llama-cpp-python's chat_format values led-local takes (chat.py renders with the GGUF's template)
CHAT_FORMATS = (None, "chatml-function-calling")


class DecodeError(RuntimeError):
    """llama_decode failed (out of KV cells, aborted, or a backend error)."""


@dataclass(frozen=True)
class LatentReadout:
    """What the model's last blocks say after the prompt's last token (docs/led.md, "Notation").

    `hidden[j]` is the residual state h_i of block `layers[j]` (raw, as the block wrote it), `logits[j]`
    the LM head's logits over it, f(W . h) (or f(W . N(h)) when read with `norm=True`), and
    `final_logits` the ordinary logits z_0. All float32.
    """

    tokens: list[int]
    layers: list[int]
    hidden: np.ndarray        # [len(layers), n_embd]
    logits: np.ndarray        # [len(layers), n_vocab]
    final_logits: np.ndarray  # [n_vocab]
    norm: bool = False


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


@dataclass(frozen=True)
class LlamaState:
    """What Llama.save_state returns: the KV state and each slot's cached tokens (picklable)."""

    kv: bytes
    slots: list
    model_path: str
    n_ctx: int
    n_seq_max: int
    seed: int | None

    def __repr__(self) -> str:
        return f"LlamaState({len(self.kv)} bytes, cached tokens per slot {[len(s) for s in self.slots]})"


def check_gguf_file(path: Path) -> None:
    """Clear errors for the mistakes llama.cpp would only log: a missing file, or one that is not GGUF."""
    if not path.exists():
        raise FileNotFoundError(
            f"model file not found: {path} (give the path of a .gguf file, or a registry key such as "
            "'smollm2-135m'; `led-local models list` shows the keys)"
        )
    if not path.is_file():
        raise ValueError(f"model path is not a file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


MAX_DEVICES = 16  # llama_max_devices() of the pinned llama.cpp: tensor_split's length


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
        self._model = ffi.NULL
        self._ctx = ffi.NULL
        self._batch = ffi.NULL
        self._chat = None
        self._lock = threading.RLock()
        self._chat_lock = threading.Lock()  # only for reading the chat templates once (_chat_templates)
        self.rpc_servers: list[str] = []
        self._rpc_lost = False

        path = Path(model_path)
        self._n_ctx = _check_int("n_ctx", n_ctx, 16)
        self.n_batch = _check_int("n_batch", n_batch, 1)
        self.n_seq_max = _check_int("n_seq_max", n_seq_max, 1, MAX_SEQUENCES)
        self.n_ctx_seq = self._n_ctx  # what one sequence may use: the whole pool (llama.cpp's n_ctx_seq)
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

        self._lib = _native.lib(verbose=self.verbose)
        if servers:
            rpc.require_support(self._lib)
            rpc.check_reachable(servers)  # ggml aborts the process on a server it cannot reach
        endpoints = [ffi.new("char[]", e.encode()) for e in servers]
        self.rpc_servers = servers
        self._model = self._lib.led_model_load(
            str(path).encode(), n_gpu_layers, not self.batch_invariant,
            ffi.new("char *[]", endpoints) if servers else ffi.NULL, len(servers),
            ffi.new("float[]", split + [0.0] * (MAX_DEVICES - len(split))) if split else ffi.NULL,
        )
        if self._model == ffi.NULL:
            raise ValueError(
                f"llama.cpp could not load {path}: the file may be truncated or damaged, or its architecture is "
                "not supported by the pinned llama.cpp (pass verbose=True to see llama.cpp's log)"
            )
        self._vocab = self._lib.llama_model_get_vocab(self._model)
        self.metadata = self._read_metadata()
        self._ctx = self._lib.led_context_new(
            self._model, self._n_ctx, self.n_batch, self.n_seq_max, self.n_threads, self.n_threads_batch,
            self.batch_invariant, {None: -1, False: 0, True: 1}[self.flash_attn],
            model_pooling(self.metadata) if self.embedding else -1,
        )
        if self._ctx == ffi.NULL:
            self.close()
            raise MemoryError(f"llama.cpp could not create a context with n_ctx={self._n_ctx}; try a smaller n_ctx")
        self._batch = self._lib.led_batch_new(max(self.n_batch, self.n_seq_max))
        self._abort_flag = ffi.new("int32_t *")  # nonzero: decodes stop at their next graph node (abort_decodes)
        self._lib.led_set_abort_flag(self._ctx, self._abort_flag)
        self._latent_setting: tuple = ((), False, False)
        self.compactions = 0  # times the KV pool was packed to keep sequences' cells in order (_compact)
        self._tied: bool | None = None
        self._max_token_bytes: int | None = None
        # the one token loop: every generation and readout of this Llama goes through it
        self._scheduler = Scheduler(self, prefix_cache=bool(prefix_cache))

    # --- lifetime -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, *, local_dir: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> "Llama":
        """llama-cpp-python's way to open a GGUF from the Hugging Face Hub (`huggingface_hub` must be installed
        and the hub reachable). led-local's offline path is its model registry: `Llama(models.path(key))`."""
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise RuntimeError(
                f"Llama.from_pretrained({repo_id!r}, {filename!r}) needs the huggingface_hub package and a reachable "
                "hub; without them use a local .gguf path or a registry model: Llama(led_local.models.path(KEY)), "
                "`led-local models list` shows the keys") from None
        try:
            path = hf_hub_download(repo_id, filename, local_dir=local_dir, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001  (network, missing repo or file: one clear message)
            raise RuntimeError(
                f"could not fetch {filename!r} from the Hugging Face repo {repo_id!r} ({type(e).__name__}: {e}); "
                "without a reachable hub use a local .gguf path or a registry model (`led-local models list`)") from None
        return cls(path, **kwargs)

    def close(self) -> None:
        """Free the native context and model (idempotent)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if self._batch != ffi.NULL:
            lib.led_batch_free(self._batch)
            self._batch = ffi.NULL
        if self._ctx != ffi.NULL:
            lib.llama_free(self._ctx)
            self._ctx = ffi.NULL
        self._chat = None
        if self._model != ffi.NULL:
            lib.llama_model_free(self._model)
            self._model = ffi.NULL

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
        if self._ctx != ffi.NULL:
            self._abort_flag[0] = 1 if on else 0

    def _check_open(self) -> None:
        if self._ctx == ffi.NULL:
            raise RuntimeError("this Llama has been closed")
        if self._rpc_lost:
            raise rpc.RPCServerLost("an RPC server of this model stopped answering; close this Llama and open a new one")

    # --- model facts ----------------------------------------------------------------------------------

    def n_ctx(self) -> int:
        """KV cells in all (llama-cpp-python's accessor), shared by the sequences; one request may use them all."""
        return self._n_ctx

    def n_vocab(self) -> int:
        self._check_open()
        return self._lib.llama_vocab_n_tokens(self._vocab)

    def max_token_bytes(self) -> int:
        """The longest text any one token stands for (special tokens' included), in bytes: a text longer
        than n_ctx() times this cannot fit the context, which can be said without tokenizing it."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max(len(self.token_to_bytes(t, special=True)) for t in range(self.n_vocab()))
        return self._max_token_bytes

    def n_layer(self) -> int:
        self._check_open()
        return self._lib.llama_model_n_layer(self._model)

    def n_embd(self) -> int:
        self._check_open()
        return self._lib.llama_model_n_embd(self._model)

    def n_ctx_train(self) -> int:
        self._check_open()
        return self._lib.llama_model_n_ctx_train(self._model)

    def token_bos(self) -> int:
        self._check_open()
        return self._lib.llama_vocab_bos(self._vocab)

    def token_eos(self) -> int:
        self._check_open()
        return self._lib.llama_vocab_eos(self._vocab)

    def token_nl(self) -> int:
        self._check_open()
        return self._lib.llama_vocab_nl(self._vocab)

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle tokens (prefix, suffix, middle), or None when the model has none."""
        self._check_open()
        ids = (self._lib.llama_vocab_fim_pre(self._vocab), self._lib.llama_vocab_fim_suf(self._vocab),
               self._lib.llama_vocab_fim_mid(self._vocab))
        return ids if all(i >= 0 for i in ids) else None

    def set_seed(self, seed: int) -> None:
        """The seed of later calls that give none (llama-cpp-python's set_seed)."""
        self.seed = _check_int("seed", seed, 0, 2**32 - 1)

    def is_eog(self, token: int) -> bool:
        self._check_open()
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def token_text(self, token: int) -> str:
        """The vocabulary's own spelling of a token (special tokens included)."""
        self._check_open()
        return ffi.string(self._lib.llama_vocab_get_text(self._vocab, token)).decode("utf-8", "replace")

    def head_is_tied(self) -> bool:
        """Whether the LM head is the token embedding matrix: llama.cpp's API does not say, the GGUF does
        (no `output.weight` tensor)."""
        if self._tied is None:
            import gguf

            reader = gguf.GGUFReader(self.model_path)
            self._tied = not any(t.name == "output.weight" for t in reader.tensors)
        return self._tied

    def end_of_thinking_tokens(self) -> list[int]:
        """The token(s) of the model's end-of-thinking marker `</think>` when its vocabulary has one as a
        token of its own, else [] (docs/led.md step 8: such a model is "thinking" for its whole output)."""
        tokens = self.tokenize("</think>", add_bos=False, special=True)
        if len(tokens) == 1 and self.token_text(tokens[0]) == "</think>":
            return tokens
        return []

    def chat_template(self) -> str | None:
        """The GGUF's chat template (tokenizer.chat_template), None for a model without one."""
        self._check_open()
        raw = self._lib.llama_model_chat_template(self._model, ffi.NULL)
        return None if raw == ffi.NULL else ffi.string(raw).decode("utf-8")

    def _chat_templates(self):
        """The model's chat templates as llama.cpp's common/chat reads them (chat.py), read on first use.

        They read the model, never the context, so they are not behind the context's lock: a server's event
        loop renders and parses chats while the step thread decodes (waiting on that lock stalled every
        stream for as long as the steps kept taking it)."""
        self._check_open()
        chat = self._chat
        if chat is None:
            with self._chat_lock:
                if self._chat is None:
                    from ._native import ChatTemplates

                    self._chat = ChatTemplates(self._model)
                chat = self._chat
        return chat

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ffi.new("char[]", 1 << 16)
        for i in range(self._lib.llama_model_meta_count(self._model)):
            if self._lib.llama_model_meta_key_by_index(self._model, i, buf, len(buf)) < 0:
                continue
            key = ffi.string(buf).decode("utf-8", "replace")
            if self._lib.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf)) < 0:
                continue
            out[key] = ffi.string(buf).decode("utf-8", "replace")
        return out

    # --- tokens ---------------------------------------------------------------------------------------

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to token ids. `special` parses special-token text such as `<|im_start|>`."""
        self._check_open()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        cap = len(data) + 8
        for _ in range(2):
            out = ffi.new("llama_token[]", cap)
            n = self._lib.llama_tokenize(self._vocab, data, len(data), out, cap, add_bos, special)
            if n >= 0:
                return list(out[0:n])
            cap = -n
        raise RuntimeError("tokenization failed")

    def token_to_bytes(self, token: int, special: bool = False) -> bytes:
        self._check_open()
        buf = ffi.new("char[]", 64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return ffi.buffer(buf, n)[:]

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Token ids to bytes (which need not be complete UTF-8 for a partial sequence)."""
        self._check_open()
        n_vocab = self.n_vocab()
        for t in tokens:
            if not 0 <= int(t) < n_vocab:
                raise ValueError(f"token id {t} is outside the vocabulary [0, {n_vocab})")
        return b"".join(self.token_to_bytes(int(t), special) for t in tokens)

    # --- decoding (used by scheduler.py) --------------------------------------------------------------

    def _memory(self):
        return self._lib.llama_get_memory(self._ctx)

    def reset(self) -> None:
        """Forget every sequence in the KV cache, cached prefixes included."""
        with self._lock:
            self._check_open()
            self._lib.llama_memory_clear(self._memory(), True)
            self._scheduler.clear()

    def _copy_sequence(self, src: int, dst: int) -> None:
        self._lib.llama_memory_seq_cp(self._memory(), src, dst, -1, -1)

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, pos, seq, wants_output) entries in n_batch chunks.

        Returns, for each entry with wants_output, its output index for the last chunk it was in
        (valid only for entries of the last chunk, which is where callers put them).
        """
        lib = self._lib
        outputs: list[int] = []
        for start in range(0, len(entries), self.n_batch):
            # a generation context reserves n_seq_max output rows (which bounds the latent rows' buffers), an
            # embedding context n_batch (every token is an output); llama.cpp aborts on a decode asking more
            wanted = sum(1 for e in entries[start : start + self.n_batch] if e[3])
            most, name = (self.n_batch, "n_batch") if self.embedding else (self.n_seq_max, "n_seq_max")
            if wanted > most:
                raise ValueError(f"a decode may ask for at most {name}={most} outputs, got {wanted}")
            lib.led_batch_clear(self._batch)
            outputs = []
            for token, pos, seq, out in entries[start : start + self.n_batch]:
                idx = lib.led_batch_add(self._batch, token, pos, seq, out)
                if out:
                    outputs.append(idx)
            rc = lib.led_decode(self._ctx, self._batch)
            if rc == 1 and not self.embedding:
                # no cell after a sequence's last one (patch 0005 keeps each sequence's cells in position
                # order) while free cells remain before: pack the pool and try once more
                self._compact()
                rc = lib.led_decode(self._ctx, self._batch)
            if self.rpc_servers:
                # a dead server no longer aborts the process (patch 0004): its graph compute fails, or its
                # copies read as zeros; after a synchronize the backend says which
                lib.llama_synchronize(self._ctx)
                lost = [e for e in self.rpc_servers if lib.led_rpc_failed(e.encode())]
                if lost:
                    self._rpc_lost = True
                    raise rpc.RPCServerLost(
                        f"the RPC server at {', '.join(lost)} stopped answering; this Llama cannot continue: close "
                        "it and open a new one (on live servers, or local)")
            if rc != 0:
                reason = {1: "no free KV cells (the context window is full)", 2: "aborted"}.get(rc, f"error {rc}")
                raise DecodeError(f"llama_decode failed: {reason}")
        return outputs

    def _compact(self) -> None:
        """Pack the KV pool's cells from its start, every cell's order kept: a whole-state save and restore
        (llama.cpp restores cells from index 0 in the saved order), bit for bit the same keys and values."""
        buf, written = self._state_data()
        if self._lib.llama_state_set_data(self._ctx, buf, written) != written:
            raise DecodeError("llama.cpp could not pack the KV cache's cells")
        self.compactions += 1

    def _state_data(self):
        """llama.cpp's whole state (KV cells, outputs) in a native buffer, and how many bytes of it are used."""
        size = self._lib.llama_state_get_size(self._ctx)
        buf = ffi.new("uint8_t[]", size)
        return buf, self._lib.llama_state_get_data(self._ctx, buf, size)

    def _logits(self, index: int) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx, index)
        if ptr == ffi.NULL:
            raise RuntimeError(f"no logits for output {index}")
        return np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab()), dtype=np.float32).copy()

    # --- latent readout -------------------------------------------------------------------------------

    def default_latent_layers(self, d: int = 8) -> list[int]:
        """The d-1 blocks right below the last, in LED depth order: h_{L-2}, h_{L-3}, ... (docs/led.md)."""
        n = self.n_layer()
        _check_int("d", d, 1, n)
        return [n - 1 - j for j in range(1, d)]

    def _set_latents(self, layers: Sequence[int], with_logits: bool, norm: bool) -> None:
        setting = (tuple(layers), bool(with_logits), bool(norm))
        if setting == self._latent_setting:
            return
        arr = ffi.new("int32_t[]", list(layers)) if layers else ffi.NULL
        if self._lib.llama_set_latents(self._ctx, arr, len(layers), with_logits, norm) != 0:
            raise ValueError(f"invalid latent layers {list(layers)} for a model with {self.n_layer()} blocks")
        self._latent_setting = setting

    def latent_head_rows(self) -> int:
        """How many rows the LM head has run over for the latent readout since this Llama was made (in the
        decode graph, or on demand for one row). Exact LED adds one per exploring step and none otherwise."""
        self._check_open()
        return int(self._lib.llama_n_latent_head_rows(self._ctx))

    def validate_layers(self, layers: Sequence[int], allow_embeddings: bool = False) -> list[int]:
        """Block indices 0..n_layer-1 (and -1, the token embeddings entering block 0, when allowed)."""
        n = self.n_layer()
        out = []
        for il in layers:
            il = _check_int("layer index", il, -1 if allow_embeddings else 0, n - 1)
            out.append(il)
        if not out:
            raise ValueError("layers must name at least one block")
        return out

    def latents(self, prompt: str | bytes | Sequence[int], layers: Sequence[int] | None = None,
                norm: bool = False) -> LatentReadout:
        """Hidden states and head logits of `layers` after the prompt's last token (-1: the token embeddings).

        `layers` defaults to the 7 blocks below the last (LED's d = 8; fewer on a model with fewer blocks).
        With `norm`, the logits are
        computed over the final-normed states (`latent_norm`); `hidden` stays raw either way.
        """
        self._check_open()
        tokens = list(prompt) if not isinstance(prompt, (str, bytes)) else self.tokenize(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        if len(tokens) > self._n_ctx:
            raise ValueError(f"the prompt has {len(tokens)} tokens, more than the context window (n_ctx={self._n_ctx})")
        self.detokenize(tokens)  # validates the ids
        layers = (self.validate_layers(layers, allow_embeddings=True) if layers is not None
                  else self.default_latent_layers(min(8, self.n_layer())))
        # a job of the scheduler like any generation: it reuses a cached prefix and leaves its own
        job = self._scheduler.run(Job(prompt=tokens, readout=(tuple(layers), bool(norm))))
        hidden, lat, final = job.result
        return LatentReadout(tokens=tokens, layers=list(layers), hidden=hidden, logits=lat,
                             final_logits=final, norm=norm)

    # --- generation -----------------------------------------------------------------------------------

    # --- state ------------------------------------------------------------------------------------------

    def save_state(self) -> "LlamaState":
        """A snapshot of the context (llama.cpp's KV state) and of what each slot holds (the prefix cache), for
        load_state: a seeded call made after loading gives the same tokens as right after saving."""
        with self._lock:
            self._check_open()
            self._scheduler.require_idle("save_state")
            buf, written = self._state_data()
            return LlamaState(kv=bytes(ffi.buffer(buf, written)), slots=[list(s.tokens) for s in self._scheduler.slots],
                              model_path=self.model_path, n_ctx=self._n_ctx, n_seq_max=self.n_seq_max, seed=self.seed)

    def load_state(self, state: "LlamaState") -> None:
        if not isinstance(state, LlamaState):
            raise TypeError("load_state takes what save_state returned")
        if (state.model_path, state.n_ctx, state.n_seq_max) != (self.model_path, self._n_ctx, self.n_seq_max):
            raise ValueError("this state was saved from another model or context size (model_path, n_ctx and "
                             "n_seq_max must match)")
        with self._lock:
            self._check_open()
            self._scheduler.require_idle("load_state")
            buf = ffi.from_buffer("uint8_t[]", state.kv)
            if self._lib.llama_state_set_data(self._ctx, buf, len(state.kv)) != len(state.kv):
                raise RuntimeError("llama.cpp could not restore the saved state")
            for slot, tokens in zip(self._scheduler.slots, state.slots):
                slot.tokens = list(tokens)
            self.seed = state.seed

    def embed(self, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """Pooled embeddings of `input` (embedding.py); needs Llama(..., embedding=True)."""
        return embed(self, input, normalize=normalize, truncate=truncate, return_count=return_count)

    def create_embedding(self, input: str | Sequence[str], model: str | None = None, *,
                         normalize: bool = False) -> dict:
        """OpenAI's embeddings response for `input` (embedding.py); needs Llama(..., embedding=True)."""
        return create_embedding(self, input, model=model, normalize=normalize)

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
