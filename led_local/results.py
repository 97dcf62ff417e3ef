"""What `Llama`'s calls hand back besides OpenAI-shaped dicts: a latent readout and a state snapshot."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
