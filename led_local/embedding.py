"""Embeddings as llama-cpp-python gives them (`Llama(..., embedding=True)`, `embed`, `create_embedding`) and
OpenAI's `/v1/embeddings` shape: one pooled vector per input, pooled as the GGUF says (its
`<arch>.pooling_type`), else by the mean of the input's token states, as llama-server does for a generative
model.

An embedding Llama's context outputs every token (llama.cpp's `embeddings` mode) and has no token loop: each
input is one decode of its own, under the Llama's lock, so an input must fit in one batch (`n_batch`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._native import ffi

# llama.h's enum llama_pooling_type
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def model_pooling(metadata: dict[str, str]) -> int:
    """The GGUF's pooling type, or mean when it names none (a generative model)."""
    arch = metadata.get("general.architecture", "")
    try:
        kind = int(metadata.get(f"{arch}.pooling_type", "0"))
    except ValueError:
        kind = 0
    return kind if kind in (1, 2, 3, 4) else POOLING["mean"]


def _inputs(input: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(input, str):
        return [input], True
    if isinstance(input, Sequence) and input and all(isinstance(s, str) for s in input):
        return list(input), False
    raise TypeError("input must be a string or a non-empty list of strings")


def embed(llama, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
          return_count: bool = False):
    """One pooled vector per input (a list of floats for a string, a list of them for a list); normalize=True
    scales each to unit length (llama-cpp-python's default is not to; llama-server's /v1/embeddings does);
    an input longer than a batch is cut (truncate) or refused."""
    if not llama.embedding:
        raise ValueError("this Llama computes no embeddings; open it with Llama(..., embedding=True)")
    texts, single = _inputs(input)
    limit = min(llama.n_batch, llama.n_ctx_seq)
    vectors, count = [], 0
    lib = llama._lib
    with llama._lock:
        llama._check_open()
        for text in texts:
            tokens = llama.tokenize(text, add_bos=True, special=True)
            if len(tokens) > limit:
                if not truncate:
                    raise ValueError(f"an input has {len(tokens)} tokens, more than the {limit} one decode takes; "
                                     "shorten it, pass truncate=True, or open the Llama with a larger n_batch")
                tokens = tokens[:limit]
            if not tokens:
                raise ValueError("an input is empty")
            llama.reset()
            llama._decode([(token, pos, 0, True) for pos, token in enumerate(tokens)])  # one batch: limit
            ptr = lib.llama_get_embeddings_seq(llama._ctx, 0)
            if ptr == ffi.NULL:
                raise RuntimeError("llama.cpp returned no pooled embedding for this input")
            vec = np.frombuffer(ffi.buffer(ptr, 4 * llama.n_embd()), np.float32).astype(np.float64)
            if normalize:
                norm = np.linalg.norm(vec)
                vec = vec / norm if norm > 0 else vec
            vectors.append(vec.tolist())
            count += len(tokens)
    result = vectors[0] if single else vectors
    return (result, count) if return_count else result


def create_embedding(llama, input: str | Sequence[str], model: str | None = None, normalize: bool = False) -> dict:
    """OpenAI's embeddings response: {"object": "list", "data": [{"object": "embedding", "embedding",
    "index"}], "model", "usage"}."""
    texts, _ = _inputs(input)
    vectors, count = embed(llama, texts, normalize=normalize, return_count=True)
    return {"object": "list", "model": model or llama.model_path,
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": count, "total_tokens": count}}
