"""Tiny random-weight GGUF models that llama.cpp loads, for tests.

They are written in well under a second with `gguf`, so tests never need a download. Every weight is
f32 (or the chosen head type), so numpy can recompute what llama.cpp computes.

    python models/tiny.py OUT.gguf [--arch llama|qwen2|qwen3|gemma2] [--untied] [--think] [--layers N]

qwen3 adds its per-head q/k norms; gemma2 (always tied) its post-norms and the final logit soft-capping
that LED's f must replay on the latent rows.

The vocabulary is byte-level BPE (GPT-2 byte-to-unicode mapping): the 256 byte tokens, a few merges,
and the special tokens of a ChatML template (`<|im_start|>`, `<|im_end|>`), plus `<think>`/`</think>`
when asked, so chat templates, think-tag handling and detokenization all run on the real code paths.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import gguf

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# a thinking model's template in Qwen3's shape: the answer opens with a <think> section, earlier answers are
# rendered without theirs, and enable_thinking=false writes an empty one
THINK_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)

ARCHS = ("llama", "qwen2", "qwen3", "gemma2")
MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t"]


@dataclass(frozen=True)
class TinySpec:
    arch: str = "llama"          # "llama", "qwen2", "qwen3" or "gemma2"
    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048
    tied: bool = True            # head = token_embd (no output.weight tensor)
    think: bool = False          # vocabulary has <think> and </think>
    seed: int = 0
    scale: float = 0.5           # weight scale: large enough that layers disagree, small enough to stay finite
    final_norm_scale: float = 1.0  # > 1 sharpens the final layer against the raw latent lens (LED's regime)
    chat_template: bool = True   # write the ChatML template (off: a base model)
    think_template: bool = False  # write THINK_TEMPLATE instead (needs think=True)
    think_bias: float = 0.0      # qwen2 only: an output.bias that makes `</think>` likely (tests of think_only)
    eog_bias: float = 0.0        # qwen2 only: output.bias on the end-of-generation tokens (< 0: long outputs)
    logit_softcap: float = 0.0   # gemma2 only: final logits become cap * tanh(logits / cap)
    fim: bool = False            # vocabulary has Qwen2.5-Coder's fill-in-the-middle tokens
    n_vocab: int = 0             # > 0: pad the vocabulary with plain tokens up to this size (a real model's head)
    weight_type: str = "f32"     # "f16": matrices in f16 (norms and biases stay f32), half the file of a big spec


# Qwen2.5-Coder-1.5B's shapes (its GGUF's metadata) with random weights: what a GPU machine, which no real
# model can reach, decodes and benchmarks (bench/gpu_check.py). 1.5 B parameters, 3.1 GB in f16. The final
# norm's scale sets how sure the final layer is: at 0.03 its top-1 probability at T=0.6 leaves LED about 15 %
# of the steps to explore (docs/led.md step 8), as open-ended chat does on the real model (13-32 %).
QWEN15_SHAPES = TinySpec(arch="qwen2", n_layer=28, n_embd=1536, n_head=12, n_head_kv=2, n_ff=8960,
                         n_ctx_train=32768, tied=True, n_vocab=151936, weight_type="f16", seed=15,
                         scale=1.0, final_norm_scale=0.03)


def _byte_tokens() -> list[str]:
    # GPT-2's reversible byte -> printable unicode mapping, as byte-level BPE vocabularies store bytes
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def vocabulary(think: bool, fim: bool = False, n_vocab: int = 0) -> tuple[list[str], list[int]]:
    tokens = _byte_tokens() + ["".join(m.split()) for m in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<think>", "</think>"] if think else [])
    tokens += specials
    types += [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.USER_DEFINED] * (len(specials) - 3)
    if fim:  # llama.cpp finds them by their text, as in Qwen2.5-Coder's vocabulary
        tokens += ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
        types += [gguf.TokenType.CONTROL] * 3
    if n_vocab:
        if n_vocab < len(tokens):
            raise ValueError(f"n_vocab={n_vocab} is below the {len(tokens)} tokens the vocabulary needs")
        # never produced by the tokenizer (no merges reach them), but sampled and detokenized like any token
        pad = n_vocab - len(tokens)
        tokens += [f"[PAD{i}]" for i in range(pad)]
        types += [gguf.TokenType.NORMAL] * pad
    return tokens, [int(t) for t in types]


def write_tiny_model(path: str | Path, spec: TinySpec = TinySpec()) -> Path:
    path = Path(path)
    if spec.arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {spec.arch!r}")
    if spec.arch == "gemma2" and (not spec.tied or not spec.logit_softcap):
        raise ValueError("gemma2 ties its head and needs logit_softcap > 0")
    if spec.logit_softcap and spec.arch != "gemma2":
        raise ValueError("logit_softcap needs arch='gemma2' (its builder soft-caps the final logits)")
    if spec.weight_type not in ("f32", "f16"):
        raise ValueError(f"weight_type must be 'f32' or 'f16', got {spec.weight_type!r}")
    rng = np.random.default_rng(spec.seed)
    tokens, types = vocabulary(spec.think, spec.fim, spec.n_vocab)
    matrix_type = np.float16 if spec.weight_type == "f16" else np.float32
    n_vocab = len(tokens)
    head_dim = spec.n_embd // spec.n_head

    def normal(*shape: int) -> np.ndarray:
        # the f32 models' draws stay what they always were (f64); f16 ones draw f32: a 1.5B spec in seconds
        return rng.standard_normal(shape, dtype=np.float64 if spec.weight_type == "f32" else np.float32)

    def w(*shape: int) -> np.ndarray:
        # numpy shape (out, in): gguf stores it as ggml's [in, out]
        return (normal(*shape) * spec.scale / np.sqrt(shape[-1])).astype(matrix_type)

    def norm_weight() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(spec.n_embd)).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), spec.arch)
    writer.add_name(f"tiny-{spec.arch}-{'tied' if spec.tied else 'untied'}")
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.weight_type == "f16" else gguf.LlamaFileType.ALL_F32)
    if spec.arch == "gemma2":
        writer.add_float32(f"{spec.arch}.final_logit_softcapping", spec.logit_softcap)
        writer.add_float32(f"{spec.arch}.attn_logit_softcapping", 50.0)
        writer.add_uint32(f"{spec.arch}.attention.sliding_window", spec.n_ctx_train)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    eot = tokens.index("<|im_end|>")
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)
    if spec.chat_template:
        if spec.think_template and not spec.think:
            raise ValueError("think_template needs think=True (the <think> tokens)")
        writer.add_chat_template(THINK_TEMPLATE if spec.think_template else CHATML_TEMPLATE)

    embd = normal(n_vocab, spec.n_embd).astype(matrix_type)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", norm_weight() * np.float32(spec.final_norm_scale))
    if not spec.tied:
        writer.add_tensor("output.weight", w(n_vocab, spec.n_embd))
    if spec.think_bias or spec.eog_bias:
        if spec.arch != "qwen2" or (spec.think_bias and not spec.think):
            raise ValueError("output biases need arch='qwen2' (its builder adds output.bias); think_bias needs think=True")
        bias = (0.1 * rng.standard_normal(n_vocab)).astype(np.float32)
        if spec.think_bias:
            bias[tokens.index("</think>")] += spec.think_bias
        for name in ("<|endoftext|>", "<|im_end|>"):
            bias[tokens.index(name)] += spec.eog_bias
        writer.add_tensor("output.bias", bias)
    kv = spec.n_head_kv * head_dim
    for il in range(spec.n_layer):
        p = f"blk.{il}."
        writer.add_tensor(p + "attn_norm.weight", norm_weight())
        writer.add_tensor(p + "attn_q.weight", w(spec.n_embd, spec.n_embd))
        writer.add_tensor(p + "attn_k.weight", w(kv, spec.n_embd))
        writer.add_tensor(p + "attn_v.weight", w(kv, spec.n_embd))
        if spec.arch == "qwen2":
            writer.add_tensor(p + "attn_q.bias", (0.1 * rng.standard_normal(spec.n_embd)).astype(np.float32))
            writer.add_tensor(p + "attn_k.bias", (0.1 * rng.standard_normal(kv)).astype(np.float32))
            writer.add_tensor(p + "attn_v.bias", (0.1 * rng.standard_normal(kv)).astype(np.float32))
        if spec.arch == "qwen3":
            writer.add_tensor(p + "attn_q_norm.weight", (1.0 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32))
            writer.add_tensor(p + "attn_k_norm.weight", (1.0 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32))
        writer.add_tensor(p + "attn_output.weight", w(spec.n_embd, spec.n_embd))
        if spec.arch == "gemma2":
            writer.add_tensor(p + "post_attention_norm.weight", norm_weight())
            writer.add_tensor(p + "post_ffw_norm.weight", norm_weight())
        writer.add_tensor(p + "ffn_norm.weight", norm_weight())
        writer.add_tensor(p + "ffn_gate.weight", w(spec.n_ff, spec.n_embd))
        writer.add_tensor(p + "ffn_up.weight", w(spec.n_ff, spec.n_embd))
        writer.add_tensor(p + "ffn_down.weight", w(spec.n_embd, spec.n_ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_gemma3n(path: str | Path, n_layer: int = 4, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
                       n_ff: int = 128, seed: int = 0, scale: float = 0.5) -> Path:
    """A tiny Gemma-3n: its blocks carry 4 parallel streams (AltUp), so every block's output `l_out` is a 3-D
    [n_embd, tokens, 4] tensor, not the [n_embd, tokens] state LED reads. Tests that the latent readout
    refuses such a graph with a message instead of failing inside ggml. llama.cpp's defaults for AltUp (4
    streams), LAuReL (rank 64) and the per-layer inputs (256 wide) are its hyperparameters."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, types = vocabulary(False)
    n_vocab, head_dim = len(tokens), n_embd // n_head
    n_altup, laurel_rank, n_embd_altup = 4, 64, 256

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale / np.sqrt(shape[-1])).astype(np.float32)

    def norm_weight(n: int = n_embd) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    arch = "gemma3n"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-gemma3n")
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_uint32(f"{arch}.attention.sliding_window", 512)
    writer.add_uint32(f"{arch}.embedding_length_per_layer_input", n_embd_altup)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    writer.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, n_embd)).astype(np.float32))
    writer.add_tensor("altup_proj.weight", w(n_altup - 1, n_embd, n_embd))
    writer.add_tensor("altup_unembd_proj.weight", w(n_altup - 1, n_embd, n_embd))
    writer.add_tensor("per_layer_token_embd.weight", w(n_vocab, n_embd_altup * n_layer))
    writer.add_tensor("per_layer_model_proj.weight", w(n_embd_altup * n_layer, n_embd))
    writer.add_tensor("per_layer_proj_norm.weight", norm_weight(n_embd_altup))
    writer.add_tensor("output_norm.weight", norm_weight())
    kv = n_head_kv * head_dim
    for il in range(n_layer):
        block = {
            "attn_norm": norm_weight(), "attn_q": w(n_head * head_dim, n_embd), "attn_k": w(kv, n_embd),
            "attn_v": w(kv, n_embd), "attn_output": w(n_embd, n_head * head_dim),
            "attn_q_norm": norm_weight(head_dim), "attn_k_norm": norm_weight(head_dim),
            "post_attention_norm": norm_weight(), "ffn_norm": norm_weight(), "ffn_gate": w(n_ff, n_embd),
            "ffn_up": w(n_ff, n_embd), "ffn_down": w(n_embd, n_ff), "post_ffw_norm": norm_weight(),
            "inp_gate": w(n_embd_altup, n_embd), "proj": w(n_embd, n_embd_altup), "post_norm": norm_weight(),
            "altup_correct_coef": w(n_altup, n_altup), "altup_correct_scale": norm_weight(),
            "altup_predict_coef": w(n_altup * n_altup, n_altup), "altup_router": w(n_altup, n_embd),
            "altup_router_norm": norm_weight(), "laurel_l": w(laurel_rank, n_embd), "laurel_r": w(n_embd, laurel_rank),
            "laurel_post_norm": norm_weight(),
        }
        for name, tensor in block.items():
            writer.add_tensor(f"blk.{il}.{name}.weight", tensor)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--arch", choices=ARCHS, default="llama")
    ap.add_argument("--untied", action="store_true", help="separate output.weight instead of a tied head")
    ap.add_argument("--think", action="store_true", help="add <think> and </think> tokens")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--softcap", type=float, default=0.0, help="gemma2's final logit soft-capping")
    a = ap.parse_args()
    write_tiny_model(a.out, TinySpec(arch=a.arch, tied=not a.untied, think=a.think, n_layer=a.layers, seed=a.seed,
                                     logit_softcap=a.softcap if a.arch != "gemma2" or a.softcap else 30.0))


if __name__ == "__main__":
    main()
