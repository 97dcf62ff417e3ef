"""An independent numpy forward pass of the tiny models (llama / qwen2 / qwen3 builders of llama.cpp), used to
check the hidden states our patch hands out, and GGUF head weights dequantized with `gguf`."""

from __future__ import annotations

import numpy as np
import gguf


def read_tensors(path) -> tuple[dict[str, np.ndarray], gguf.GGUFReader]:
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(data, dtype=np.float64).reshape(shape)
    return out, reader


def read_head(path) -> np.ndarray:
    """Only W of docs/led.md, dequantized (reading every tensor of a real model takes a while)."""
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    t = by_name.get("output.weight", by_name["token_embd.weight"])
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(shape)


def field_value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def head_weight(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """W of docs/led.md: output.weight, or token_embd.weight when the model ties them. [n_vocab, n_embd]"""
    return tensors.get("output.weight", tensors["token_embd.weight"])


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, pos: np.ndarray, base: float, neox: bool) -> np.ndarray:
    # x [n_tok, n_head, hd]; llama.cpp's NORM mode rotates adjacent pairs, NEOX mode the two halves
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def forward(path, tokens: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Residual states h_il of every block for every token, and the final logits of the last token."""
    t, reader = read_tensors(path)
    arch = field_value(reader, "general.architecture")
    n_head = int(field_value(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(field_value(reader, f"{arch}.attention.head_count_kv"))
    eps = float(field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon"))
    base = float(field_value(reader, f"{arch}.rope.freq_base"))
    n_layer = int(field_value(reader, f"{arch}.block_count"))
    neox = arch in ("qwen2", "qwen3")

    x = t["token_embd.weight"][tokens]
    n_tok, n_embd = x.shape
    hd = n_embd // n_head
    pos = np.arange(n_tok, dtype=np.float64)
    causal = np.triu(np.full((n_tok, n_tok), -np.inf), 1)
    states = []
    for il in range(n_layer):
        p = f"blk.{il}."
        xn = rms_norm(x, t[p + "attn_norm.weight"], eps)
        q, k, v = (xn @ t[p + f"attn_{c}.weight"].T + t.get(p + f"attn_{c}.bias", 0.0) for c in "qkv")
        q, k = q.reshape(n_tok, n_head, hd), k.reshape(n_tok, n_head_kv, hd)
        if p + "attn_q_norm.weight" in t:  # qwen3: an RMS norm over each head before RoPE
            q = rms_norm(q, t[p + "attn_q_norm.weight"], eps)
            k = rms_norm(k, t[p + "attn_k_norm.weight"], eps)
        q, k = _rope(q, pos, base, neox), _rope(k, pos, base, neox)
        v = v.reshape(n_tok, n_head_kv, hd)
        group = n_head // n_head_kv
        att = np.empty((n_tok, n_head, hd))
        for h in range(n_head):
            s = q[:, h] @ k[:, h // group].T / np.sqrt(hd) + causal
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, h] = (s / s.sum(-1, keepdims=True)) @ v[:, h // group]
        x = x + att.reshape(n_tok, n_embd) @ t[p + "attn_output.weight"].T
        xn = rms_norm(x, t[p + "ffn_norm.weight"], eps)
        g = xn @ t[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (xn @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
        states.append(x.copy())
    final = rms_norm(x[-1], t["output_norm.weight"], eps) @ head_weight(t).T
    return states, final
