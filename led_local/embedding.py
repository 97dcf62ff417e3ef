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

from .engine import Engine


def _inputs(input: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(input, str):
        return [input], True
    if isinstance(input, Sequence) and input and all(isinstance(s, str) for s in input):
        return list(input), False
    raise TypeError("input must be a string or a non-empty list of strings")


def embed(engine: Engine, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
          return_count: bool = False):
    """One pooled vector per input (a list of floats for a string, a list of them for a list); normalize=True
    scales each to unit length (llama-cpp-python's default is not to; llama-server's /v1/embeddings does);
    an input longer than a batch is cut (truncate) or refused."""
    if not engine.embedding:
        raise ValueError("this Llama computes no embeddings; open it with Llama(..., embedding=True)")
    texts, single = _inputs(input)
    limit = min(engine.n_batch, engine.n_ctx())
    vectors, count = [], 0
    with engine.lock:
        engine.check_open()
        for text in texts:
            tokens = engine.tokenize(text, add_bos=True, special=True)
            if len(tokens) > limit:
                if not truncate:
                    raise ValueError(f"an input has {len(tokens)} tokens, more than the {limit} one decode takes; "
                                     "shorten it, pass truncate=True, or open the Llama with a larger n_batch")
                tokens = tokens[:limit]
            if not tokens:
                raise ValueError("an input is empty")
            engine.clear_memory()
            engine.decode([(token, pos, 0, True) for pos, token in enumerate(tokens)])  # one batch: limit
            vec = engine.embedding_of(0).astype(np.float64)
            if normalize:
                norm = np.linalg.norm(vec)
                vec = vec / norm if norm > 0 else vec
            vectors.append(vec.tolist())
            count += len(tokens)
    result = vectors[0] if single else vectors
    return (result, count) if return_count else result


def create_embedding(engine: Engine, input: str | Sequence[str], model: str | None = None,
                     normalize: bool = False) -> dict:
    """OpenAI's embeddings response: {"object": "list", "data": [{"object": "embedding", "embedding",
    "index"}], "model", "usage"}."""
    texts, _ = _inputs(input)
    vectors, count = embed(engine, texts, normalize=normalize, return_count=True)
    return {"object": "list", "model": model or engine.model_path,
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": count, "total_tokens": count}}
