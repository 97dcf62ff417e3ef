"""`Engine`: the one owner of a model's native handles (llama.cpp model, vocabulary, context, batch) and every
call that touches them: loading, model and token facts, tokenizing, batched decoding (with the pool
packing and RPC-loss checks), logits and latent rows, the graph's latent readout, sequence copy/remove and
whole-state save/load.

Everything above takes an `Engine`: the scheduler (scheduler.py) drives its decodes, the samplers
(sampling.py) are made over its handles, embeddings (embedding.py) decode on it; `Llama` (llama.py) checks a
user's arguments, makes one, and is the llama-cpp-python-shaped front over it. Arguments arrive checked.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from . import _native, rpc
from ._native import ffi

GGUF_MAGIC = b"GGUF"
MAX_DEVICES = 16  # llama_max_devices() of the pinned llama.cpp: tensor_split's length


class DecodeError(RuntimeError):
    """llama_decode failed (out of KV cells, aborted, or a backend error)."""


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


# llama.h's enum llama_pooling_type
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def model_pooling(metadata: dict[str, str]) -> int:
    """The GGUF's pooling type, or mean when it names none (a generative model, as llama-server pools it)."""
    arch = metadata.get("general.architecture", "")
    try:
        kind = int(metadata.get(f"{arch}.pooling_type", "0"))
    except ValueError:
        kind = 0
    return kind if kind in (1, 2, 3, 4) else POOLING["mean"]


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


class Engine:
    """One GGUF model and its llama.cpp context. `lock` excludes concurrent users of the context (the
    scheduler's steps, embeddings, state save/load); the chat templates read the model only and have
    their own."""

    def __init__(self, path: Path, *, n_ctx: int, n_batch: int, n_seq_max: int, n_threads: int,
                 n_threads_batch: int, n_gpu_layers: int, tensor_split: list[float] | None,
                 rpc_servers: list[str], batch_invariant: bool, flash_attn: bool | None, embedding: bool,
                 verbose: bool) -> None:
        self.model = ffi.NULL
        self.ctx = ffi.NULL
        self.batch = ffi.NULL
        self.chat = None
        self.lock = threading.RLock()
        self.chat_lock = threading.Lock()  # only for reading the chat templates once (chat_templates)
        self.rpc_servers: list[str] = []
        self.rpc_lost = False
        self.n_batch, self.n_seq_max, self.embedding = n_batch, n_seq_max, embedding
        self.context_cells = n_ctx
        self.batch_invariant = batch_invariant
        self.model_path = str(path)
        self.compactions = 0  # times the KV pool was packed to keep sequences' cells in order (compact)
        self.latent_setting: tuple = ((), False, False)
        self.decoded_latents = 0  # blocks the last decode read out (the rows' layout in latent_rows)
        self.tied: bool | None = None
        self.longest_token: int | None = None

        self.lib = _native.lib(verbose=verbose)
        if rpc_servers:
            rpc.require_support(self.lib)
            rpc.check_reachable(rpc_servers)  # ggml aborts the process on a server it cannot reach
        endpoints = [ffi.new("char[]", e.encode()) for e in rpc_servers]
        self.rpc_servers = rpc_servers
        split = tensor_split
        self.model = self.lib.led_model_load(
            str(path).encode(), n_gpu_layers, not batch_invariant,
            ffi.new("char *[]", endpoints) if rpc_servers else ffi.NULL, len(rpc_servers),
            ffi.new("float[]", split + [0.0] * (MAX_DEVICES - len(split))) if split else ffi.NULL,
        )
        if self.model == ffi.NULL:
            raise ValueError(
                f"llama.cpp could not load {path}: the file may be truncated or damaged, or its architecture is "
                "not supported by the pinned llama.cpp (pass verbose=True to see llama.cpp's log)"
            )
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.metadata = self.read_metadata()
        self.ctx = self.lib.led_context_new(
            self.model, n_ctx, n_batch, n_seq_max, n_threads, n_threads_batch,
            batch_invariant, {None: -1, False: 0, True: 1}[flash_attn],
            model_pooling(self.metadata) if embedding else -1,
        )
        if self.ctx == ffi.NULL:
            self.close()
            raise MemoryError(f"llama.cpp could not create a context with n_ctx={n_ctx}; try a smaller n_ctx")
        self.batch = self.lib.led_batch_new(max(n_batch, n_seq_max))
        self.abort_flag = ffi.new("int32_t *")  # nonzero: decodes stop at their next graph node (abort_decodes)
        self.lib.led_set_abort_flag(self.ctx, self.abort_flag)

    # --- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the native context and model (idempotent)."""
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if self.batch != ffi.NULL:
            lib.led_batch_free(self.batch)
            self.batch = ffi.NULL
        if self.ctx != ffi.NULL:
            lib.llama_free(self.ctx)
            self.ctx = ffi.NULL
        self.chat = None
        if self.model != ffi.NULL:
            lib.llama_model_free(self.model)
            self.model = ffi.NULL

    def check_open(self) -> None:
        if self.ctx == ffi.NULL:
            raise RuntimeError("this Llama has been closed")
        if self.rpc_lost:
            raise rpc.RPCServerLost("an RPC server of this model stopped answering; close this Llama and open a new one")

    def abort_decodes(self, on: bool = True) -> None:
        """From any thread: while on, every decode stops at its next graph node and fails ("aborted")."""
        if self.ctx != ffi.NULL:
            self.abort_flag[0] = 1 if on else 0

    # --- model facts ----------------------------------------------------------------------------------

    def n_ctx(self) -> int:
        return self.context_cells

    def n_vocab(self) -> int:
        self.check_open()
        return self.lib.llama_vocab_n_tokens(self.vocab)

    def max_token_bytes(self) -> int:
        """The longest text any one token stands for (special tokens' included), in bytes."""
        if self.longest_token is None:
            self.longest_token = max(len(self.token_to_bytes(t, special=True)) for t in range(self.n_vocab()))
        return self.longest_token

    def n_layer(self) -> int:
        self.check_open()
        return self.lib.llama_model_n_layer(self.model)

    def n_embd(self) -> int:
        self.check_open()
        return self.lib.llama_model_n_embd(self.model)

    def n_ctx_train(self) -> int:
        self.check_open()
        return self.lib.llama_model_n_ctx_train(self.model)

    def token_bos(self) -> int:
        self.check_open()
        return self.lib.llama_vocab_bos(self.vocab)

    def token_eos(self) -> int:
        self.check_open()
        return self.lib.llama_vocab_eos(self.vocab)

    def token_nl(self) -> int:
        self.check_open()
        return self.lib.llama_vocab_nl(self.vocab)

    def adds_bos(self) -> bool:
        """Whether the vocabulary puts its BOS token before a tokenized prompt."""
        self.check_open()
        return bool(self.lib.llama_vocab_get_add_bos(self.vocab))

    def fim_tokens(self) -> tuple[int, int, int] | None:
        self.check_open()
        ids = (self.lib.llama_vocab_fim_pre(self.vocab), self.lib.llama_vocab_fim_suf(self.vocab),
               self.lib.llama_vocab_fim_mid(self.vocab))
        return ids if all(i >= 0 for i in ids) else None

    def is_eog(self, token: int) -> bool:
        self.check_open()
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        self.check_open()
        return ffi.string(self.lib.llama_vocab_get_text(self.vocab, token)).decode("utf-8", "replace")

    def head_is_tied(self) -> bool:
        """Whether the LM head is the token embedding matrix: llama.cpp's API does not say, the GGUF does
        (no `output.weight` tensor)."""
        if self.tied is None:
            import gguf

            reader = gguf.GGUFReader(self.model_path)
            self.tied = not any(t.name == "output.weight" for t in reader.tensors)
        return self.tied

    def end_of_thinking_tokens(self) -> list[int]:
        """The token of the model's end-of-thinking marker `</think>` when its vocabulary has one, else []."""
        tokens = self.tokenize("</think>", add_bos=False, special=True)
        if len(tokens) == 1 and self.token_text(tokens[0]) == "</think>":
            return tokens
        return []

    def chat_template(self) -> str | None:
        self.check_open()
        raw = self.lib.llama_model_chat_template(self.model, ffi.NULL)
        return None if raw == ffi.NULL else ffi.string(raw).decode("utf-8")

    def chat_templates(self):
        """The model's chat templates as llama.cpp's common/chat reads them (chat.py), read on first use.

        They read the model, never the context, so they are not behind the context's lock: a server's event
        loop renders and parses chats while the step thread decodes (waiting on that lock stalled every
        stream for as long as the steps kept taking it)."""
        self.check_open()
        chat = self.chat
        if chat is None:
            with self.chat_lock:
                if self.chat is None:
                    self.chat = _native.ChatTemplates(self.model)
                chat = self.chat
        return chat

    def read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ffi.new("char[]", 1 << 16)
        for i in range(self.lib.llama_model_meta_count(self.model)):
            if self.lib.llama_model_meta_key_by_index(self.model, i, buf, len(buf)) < 0:
                continue
            key = ffi.string(buf).decode("utf-8", "replace")
            if self.lib.llama_model_meta_val_str_by_index(self.model, i, buf, len(buf)) < 0:
                continue
            out[key] = ffi.string(buf).decode("utf-8", "replace")
        return out

    # --- tokens ---------------------------------------------------------------------------------------

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        self.check_open()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        cap = len(data) + 8
        for _ in range(2):
            out = ffi.new("llama_token[]", cap)
            n = self.lib.llama_tokenize(self.vocab, data, len(data), out, cap, add_bos, special)
            if n >= 0:
                return list(out[0:n])
            cap = -n
        raise RuntimeError("tokenization failed")

    def token_to_bytes(self, token: int, special: bool = False) -> bytes:
        self.check_open()
        buf = ffi.new("char[]", 64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return ffi.buffer(buf, n)[:]

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        self.check_open()
        n_vocab = self.n_vocab()
        for t in tokens:
            if not 0 <= int(t) < n_vocab:
                raise ValueError(f"token id {t} is outside the vocabulary [0, {n_vocab})")
        return b"".join(self.token_to_bytes(int(t), special) for t in tokens)

    # --- sequences and decoding -----------------------------------------------------------------------

    def memory(self):
        return self.lib.llama_get_memory(self.ctx)

    def clear_memory(self) -> None:
        """Forget every sequence's cells."""
        self.lib.llama_memory_clear(self.memory(), True)

    def remove_cells(self, seq: int, keep: int) -> None:
        """Drop sequence `seq`'s cells from position `keep` on."""
        self.lib.llama_memory_seq_rm(self.memory(), seq, keep, -1)

    def copy_sequence(self, src: int, dst: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory(), src, dst, -1, -1)

    def decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, pos, seq, wants_output) entries in n_batch chunks.

        Returns, for each entry with wants_output, its output index for the last chunk it was in
        (valid only for entries of the last chunk, which is where callers put them).
        """
        lib = self.lib
        outputs: list[int] = []
        for start in range(0, len(entries), self.n_batch):
            # a generation context reserves n_seq_max output rows (which bounds the latent rows' buffers), an
            # embedding context n_batch (every token is an output); llama.cpp aborts on a decode asking more
            wanted = sum(1 for e in entries[start : start + self.n_batch] if e[3])
            most, name = (self.n_batch, "n_batch") if self.embedding else (self.n_seq_max, "n_seq_max")
            if wanted > most:
                raise ValueError(f"a decode may ask for at most {name}={most} outputs, got {wanted}")
            lib.led_batch_clear(self.batch)
            outputs = []
            for token, pos, seq, out in entries[start : start + self.n_batch]:
                idx = lib.led_batch_add(self.batch, token, pos, seq, out)
                if out:
                    outputs.append(idx)
            rc = lib.led_decode(self.ctx, self.batch)
            if rc == 1 and not self.embedding:
                # no cell after a sequence's last one (patch 0005 keeps each sequence's cells in position
                # order) while free cells remain before: pack the pool and try once more
                self.compact()
                rc = lib.led_decode(self.ctx, self.batch)
            if self.rpc_servers:
                # a dead server no longer aborts the process (patch 0004): its graph compute fails, or its
                # copies read as zeros; after a synchronize the backend says which
                lib.llama_synchronize(self.ctx)
                lost = [e for e in self.rpc_servers if lib.led_rpc_failed(e.encode())]
                if lost:
                    self.rpc_lost = True
                    raise rpc.RPCServerLost(
                        f"the RPC server at {', '.join(lost)} stopped answering; this Llama cannot continue: close "
                        "it and open a new one (on live servers, or local)")
            if rc != 0:
                reason = {1: "no free KV cells (the context window is full)", 2: "aborted"}.get(rc, f"error {rc}")
                raise DecodeError(f"llama_decode failed: {reason}")
            self.decoded_latents = len(self.latent_setting[0])
        return outputs

    def compact(self) -> None:
        """Pack the KV pool's cells from its start, every cell's order kept: a whole-state save and restore
        (llama.cpp restores cells from index 0 in the saved order), bit for bit the same keys and values."""
        buf, written = self.state_data()
        if self.lib.llama_state_set_data(self.ctx, buf, written) != written:
            raise DecodeError("llama.cpp could not pack the KV cache's cells")
        self.compactions += 1

    def state_data(self):
        """llama.cpp's whole state (KV cells, outputs) in a native buffer, and how many bytes of it are used."""
        size = self.lib.llama_state_get_size(self.ctx)
        buf = ffi.new("uint8_t[]", size)
        return buf, self.lib.llama_state_get_data(self.ctx, buf, size)

    def state_bytes(self) -> bytes:
        buf, written = self.state_data()
        return bytes(ffi.buffer(buf, written))

    def set_state(self, data: bytes) -> None:
        buf = ffi.from_buffer("uint8_t[]", data)
        if self.lib.llama_state_set_data(self.ctx, buf, len(data)) != len(data):
            raise RuntimeError("llama.cpp could not restore the saved state")

    def logits(self, row: int) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(self.ctx, row)
        if ptr == ffi.NULL:
            raise RuntimeError(f"no logits for output {row}")
        return np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab()), dtype=np.float32).copy()

    def embedding_of(self, seq: int) -> np.ndarray:
        """The pooled embedding of sequence `seq` after the last decode (an embedding context)."""
        ptr = self.lib.llama_get_embeddings_seq(self.ctx, seq)
        if ptr == ffi.NULL:
            raise RuntimeError("llama.cpp returned no pooled embedding for this input")
        return np.frombuffer(ffi.buffer(ptr, 4 * self.n_embd()), np.float32).copy()

    # --- the latent readout ---------------------------------------------------------------------------

    def default_latent_layers(self, d: int = 8) -> list[int]:
        """The d-1 blocks right below the last, in LED depth order: h_{L-2}, h_{L-3}, ... (docs/led.md)."""
        n = self.n_layer()
        check_int("d", d, 1, n)
        return [n - 1 - j for j in range(1, d)]

    def validate_layers(self, layers: Sequence[int], allow_embeddings: bool = False) -> list[int]:
        """Block indices 0..n_layer-1 (and -1, the token embeddings entering block 0, when allowed)."""
        n = self.n_layer()
        out = [check_int("layer index", il, -1 if allow_embeddings else 0, n - 1) for il in layers]
        if not out:
            raise ValueError("layers must name at least one block")
        return out

    def set_latents(self, layers: Sequence[int], with_logits: bool, norm: bool) -> None:
        """What the decode graph hands out besides the logits: these blocks' states (and, with_logits, the
        head over them, through the final norm with `norm`); () for none."""
        setting = (tuple(layers), bool(with_logits), bool(norm))
        if setting == self.latent_setting:
            return
        arr = ffi.new("int32_t[]", list(layers)) if layers else ffi.NULL
        if self.lib.llama_set_latents(self.ctx, arr, len(layers), with_logits, norm) != 0:
            raise ValueError(f"invalid latent layers {list(layers)} for a model with {self.n_layer()} blocks")
        self.latent_setting = setting

    def latent_rows(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Output `row`'s latent states [n, n_embd] and head logits [n, n_vocab] over the n blocks the last
        decode read out, in set_latents' order (views of llama.cpp's buffers, valid until the next decode)."""
        n_lat, n_embd, n_vocab = self.decoded_latents, self.n_embd(), self.n_vocab()
        states = self.lib.llama_get_latent_states_ith(self.ctx, row)
        logits = self.lib.llama_get_latent_logits_ith(self.ctx, row)
        if states == ffi.NULL or logits == ffi.NULL:
            raise RuntimeError("this model's graph offers no latent readout (see the log with verbose=True)")
        return (np.frombuffer(ffi.buffer(states, 4 * n_lat * n_embd), np.float32).reshape(n_lat, n_embd),
                np.frombuffer(ffi.buffer(logits, 4 * n_lat * n_vocab), np.float32).reshape(n_lat, n_vocab))

    def latent_head_rows(self) -> int:
        """How many rows the LM head has run over for the latent readout since the context was made."""
        self.check_open()
        return int(self.lib.llama_n_latent_head_rows(self.ctx))
