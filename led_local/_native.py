"""Finds and loads the native libraries and declares the C functions (cffi, ABI mode).

This is the only module that handles native pointers. It binds:
- csrc/led_engine.h, our flat wrappers over the llama.h calls that pass structs by value;
- the llama.h functions with plain signatures, and the latent-readout functions our patch adds
  (csrc/patches/0001-latent-readout.patch).

The libraries live in `led_local/lib/` of the installed package; LED_LOCAL_LIB_DIR overrides that
(for a build tree, or a GPU build kept elsewhere).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from cffi import FFI

CDEF = """
typedef int32_t llama_token;
typedef int32_t llama_pos;
typedef int32_t llama_seq_id;
struct llama_model;
struct llama_context;
struct llama_vocab;
struct llama_sampler;
struct llama_memory_i;
typedef struct llama_memory_i * llama_memory_t;

/* csrc/led_engine.h */
void led_init(bool verbose);
struct llama_model * led_model_load(const char * path, int32_t n_gpu_layers, bool repack,
                                    const char * const * rpc_servers, int32_t n_rpc, const float * tensor_split);
bool led_rpc_supported(void);
bool led_rpc_failed(const char * endpoint);
void llama_synchronize(struct llama_context * ctx);
int32_t led_rpc_server_run(const char * endpoint, int32_t n_threads, uint64_t mem_bytes);
struct llama_context * led_context_new(struct llama_model * model, uint32_t n_ctx, uint32_t n_batch,
                                       uint32_t n_seq_max, int32_t n_threads, int32_t n_threads_batch,
                                       bool batch_invariant, int32_t flash_attn, int32_t pooling);
float * llama_get_embeddings_seq(struct llama_context * ctx, int32_t seq_id);
typedef struct led_batch led_batch;
led_batch * led_batch_new(int32_t n_max);
void        led_batch_free(led_batch * batch);
void        led_batch_clear(led_batch * batch);
int32_t     led_batch_add(led_batch * batch, int32_t token, int32_t pos, int32_t seq_id, bool output);
int32_t     led_decode(struct llama_context * ctx, led_batch * batch);
void        led_set_abort_flag(struct llama_context * ctx, const int32_t * flag);
typedef struct llama_logit_bias { int32_t token; float bias; } llama_logit_bias;
typedef struct led_constraint_params {
    const llama_logit_bias * logit_bias; int32_t n_logit_bias; float repeat_penalty; float frequency_penalty;
    float presence_penalty; int32_t penalty_last_n; const char * grammar;
    bool grammar_lazy; const char * const * trigger_patterns; int32_t n_trigger_patterns;
    const int32_t * trigger_tokens; int32_t n_trigger_tokens; const int32_t * grammar_prefill; int32_t n_grammar_prefill;
} led_constraint_params;
struct llama_sampler * led_constraints_new(const struct llama_model * model, const led_constraint_params * c);
typedef struct led_standard_params {
    float temperature; int32_t top_k; float top_p; float min_p; float typical_p; int32_t mirostat;
    float mirostat_tau; float mirostat_eta; int32_t n_vocab; uint32_t seed;
} led_standard_params;
struct llama_sampler * led_sampler_standard_new(struct llama_sampler * constraints, const led_standard_params * p);

/* llama.h, plain signatures */
void llama_model_free(struct llama_model * model);
void llama_free(struct llama_context * ctx);
int32_t llama_model_n_layer(const struct llama_model * model);
int32_t llama_model_n_embd(const struct llama_model * model);
int32_t llama_model_n_ctx_train(const struct llama_model * model);
int32_t llama_model_meta_count(const struct llama_model * model);
int32_t llama_model_meta_key_by_index(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);
int32_t llama_model_meta_val_str_by_index(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);
const char * llama_model_chat_template(const struct llama_model * model, const char * name);
const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);
llama_token llama_vocab_bos(const struct llama_vocab * vocab);
llama_token llama_vocab_eos(const struct llama_vocab * vocab);
llama_token llama_vocab_nl(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_pre(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_suf(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_mid(const struct llama_vocab * vocab);
bool llama_vocab_is_eog(const struct llama_vocab * vocab, llama_token token);
bool llama_vocab_get_add_bos(const struct llama_vocab * vocab);
const char * llama_vocab_get_text(const struct llama_vocab * vocab, llama_token token);
int32_t llama_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                       llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special);
int32_t llama_token_to_piece(const struct llama_vocab * vocab, llama_token token, char * buf, int32_t length,
                             int32_t lstrip, bool special);
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
llama_memory_t llama_get_memory(const struct llama_context * ctx);
void llama_memory_clear(llama_memory_t mem, bool data);
size_t llama_state_get_size(struct llama_context * ctx);
size_t llama_state_get_data(struct llama_context * ctx, uint8_t * dst, size_t size);
size_t llama_state_set_data(struct llama_context * ctx, const uint8_t * src, size_t size);
bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1);
void llama_sampler_free(struct llama_sampler * smpl);
void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);

/* csrc/led_core.h */
typedef struct led_workspace led_workspace;
led_workspace * led_workspace_new(int32_t d, int32_t k);
void led_workspace_free(led_workspace * ws);
typedef struct led_step_result {
    int32_t n_cand; int32_t * candidates; float * token_probs; float * explore_probs; float * exploit_probs;
    float p_top1; float p_exploit; int32_t depth; int32_t token; bool explored;
} led_step_result;
int led_step(const float * logits, int32_t d, int32_t n_vocab, float temperature, int32_t k,
             bool exploit, bool explore_allowed, float u_coin, float u_sample,
             led_workspace * ws, led_step_result * out);

/* csrc/led_sampler.h */
typedef struct led_sampler_params {
    int32_t d; int32_t k; float temperature; bool exploit; bool think_only;
    const int32_t * end_think; int32_t n_end_think; uint32_t seed; const int32_t * latent_index;
    struct llama_sampler * constraints;
} led_sampler_params;
struct llama_sampler * led_sampler_new(struct llama_context * ctx, const led_sampler_params * params);
int32_t led_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t row);
typedef struct led_sampler_step_info {
    bool explored; bool latent_head; int32_t depth; float p_top1; float u_coin; float u_sample;
    int32_t n_cand; const int32_t * candidates; const float * probs;
} led_sampler_step_info;
void led_sampler_last(const struct llama_sampler * smpl, led_sampler_step_info * info);

/* csrc/dola_sampler.h */
struct llama_sampler * dola_sampler_new(struct llama_context * ctx, int32_t m, const int32_t * latent_index,
                                        struct llama_sampler * constraints, struct llama_sampler * chain);
int32_t dola_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t row);
int32_t dola_sampler_last(const struct llama_sampler * smpl);

/* csrc/chain_sampler.h */
struct chain_sampler * chain_sampler_new(const struct llama_model * model, struct llama_sampler * constraints,
                                         struct llama_sampler * chain);
int32_t chain_sampler_sample(struct chain_sampler * smpl, struct llama_context * ctx, int32_t row);
void    chain_sampler_free(struct chain_sampler * smpl);

/* csrc/led_core.h */
int32_t dola_contrast(const float * final_logits, const float * premature, int32_t m, int32_t n_vocab, float * out);

/* our patch to llama.h */
int32_t llama_set_latents(struct llama_context * ctx, const int32_t * layers, int32_t n_layers, bool with_logits, bool norm);
int32_t llama_n_latents(const struct llama_context * ctx);
float * llama_get_latent_states_ith(struct llama_context * ctx, int32_t i);
float * llama_get_latent_logits_ith(struct llama_context * ctx, int32_t i);
int64_t llama_n_latent_head_rows(const struct llama_context * ctx);
int32_t llama_set_adapter_cvec(struct llama_context * ctx, const float * data, size_t len, int32_t n_embd,
                               int32_t il_start, int32_t il_end);

/* ggml-backend.h: the devices this build's backends registered (devices.py) */
typedef struct ggml_backend_device * ggml_backend_dev_t;
size_t ggml_backend_dev_count(void);
ggml_backend_dev_t ggml_backend_dev_get(size_t index);
const char * ggml_backend_dev_name(ggml_backend_dev_t device);
const char * ggml_backend_dev_description(ggml_backend_dev_t device);
void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
enum ggml_backend_dev_type { GGML_BACKEND_DEVICE_TYPE_CPU, GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU,
                             GGML_BACKEND_DEVICE_TYPE_ACCEL, GGML_BACKEND_DEVICE_TYPE_META };
enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
"""

ffi = FFI()
ffi.cdef(CDEF)

_lib = None
_lock = threading.Lock()


def _lib_names() -> tuple[str, ...]:
    if sys.platform == "darwin":
        return ("libled_engine.dylib",)
    if sys.platform == "win32":
        return ("led_engine.dll",)
    return ("libled_engine.so",)


def lib_dir() -> Path:
    override = os.environ.get("LED_LOCAL_LIB_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent / "lib"
    if here.exists():
        return here
    # imported from a source checkout (e.g. `python -m pytest` puts the repo first on sys.path):
    # use the libraries of the installed copy, if there is one
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        installed = Path(str(distribution("led-local").locate_file("led_local/lib")))
        return installed if installed.exists() else here
    except PackageNotFoundError:
        return here


def lib(verbose: bool = False):
    """The loaded native library (loaded and initialised once per process)."""
    global _lib
    with _lock:
        if _lib is None:
            directory = lib_dir()
            for name in _lib_names():
                candidate = directory / name
                if candidate.exists():
                    break
            else:
                raise ImportError(
                    f"led-local's native library is missing from {directory}. Reinstall with "
                    "`pip install .` from the project root, or point LED_LOCAL_LIB_DIR at a build's lib folder."
                )
            # led_engine links libllama/libggml from the same folder (rpath $ORIGIN / @loader_path)
            _lib = ffi.dlopen(str(candidate))
            _lib.led_init(verbose)
        return _lib


def led_step(z, temperature: float, k: int, exploit: bool, explore_allowed: bool, u_coin: float, u_sample: float):
    """Run csrc/led_core.c's led_step on a C-contiguous float32 [d, V] array; returns plain Python/numpy values."""
    import numpy as np

    L = lib()
    d, n_vocab = z.shape
    ws = L.led_workspace_new(d, k)
    if ws == ffi.NULL:
        raise MemoryError("could not allocate the LED workspace")
    try:
        cand = np.zeros(k, np.int32)
        probs = np.zeros((3, k), np.float32)
        res = ffi.new("led_step_result *")
        res.candidates = ffi.cast("int32_t *", cand.ctypes.data)
        res.token_probs = ffi.cast("float *", probs[0].ctypes.data)
        res.explore_probs = ffi.cast("float *", probs[1].ctypes.data)
        res.exploit_probs = ffi.cast("float *", probs[2].ctypes.data)
        rc = L.led_step(ffi.cast("const float *", z.ctypes.data), d, n_vocab, temperature, k, exploit,
                        explore_allowed, u_coin, u_sample, ws, res)
        if rc != 0:
            raise ValueError("led_step rejected its arguments")
        n = res.n_cand
        return dict(candidates=cand[:n].copy(), token_probs=probs[0, :n].copy(), explore_probs=probs[1, :n].copy(),
                    exploit_probs=probs[2, :n].copy(), p_top1=float(res.p_top1), p_exploit=float(res.p_exploit),
                    depth=int(res.depth), token=int(res.token), explored=bool(res.explored))
    finally:
        L.led_workspace_free(ws)


def led_sampler_new(engine, d: int, k: int, temperature: float, exploit: bool, think_only: bool,
                    end_think: list[int], seed: int, latent_index: list[int] | None = None, constraints=ffi.NULL):
    """A native LED sampler (csrc/led_sampler.c) on this engine's context; NULL-checked by the caller.
    latent_index[j-1]: the context's latent row that depth j reads (None: row j-1). constraints (a native
    led_constraints_new chain, or NULL) is taken over, also when this fails."""
    params = ffi.new("led_sampler_params *")
    params.constraints = constraints
    marker = ffi.new("int32_t[]", end_think or [0])
    index = ffi.new("int32_t[]", latent_index) if latent_index else ffi.NULL
    params.d, params.k, params.temperature = d, k, temperature
    params.exploit, params.think_only, params.seed = exploit, think_only, seed
    params.end_think, params.n_end_think = marker, len(end_think)
    params.latent_index = index
    return lib().led_sampler_new(engine.ctx, params)  # the sampler copies the marker and the index


def led_sampler_last(handle) -> dict:
    """The last step of a native LED sampler (csrc/led_sampler.h, led_sampler_step_info) as plain values."""
    info = ffi.new("led_sampler_step_info *")
    lib().led_sampler_last(handle, info)
    n = info.n_cand if info.candidates != ffi.NULL and info.probs != ffi.NULL else 0
    return {"explored": bool(info.explored), "depth": int(info.depth), "p_top1": float(info.p_top1),
            "u_coin": float(info.u_coin), "u_sample": float(info.u_sample), "latent_head": bool(info.latent_head),
            "candidates": [int(info.candidates[i]) for i in range(n)], "probs": [float(info.probs[i]) for i in range(n)]}


def dola_contrast(final_logits, premature):
    """csrc/led_core.c's dola_contrast on float32 arrays [V] and [m, V]: (contrast logits [V], chosen row)."""
    import numpy as np

    out = np.empty(final_logits.shape[0], np.float32)
    best = lib().dola_contrast(ffi.cast("const float *", final_logits.ctypes.data),
                               ffi.cast("const float *", premature.ctypes.data), premature.shape[0],
                               final_logits.shape[0], ffi.cast("float *", out.ctypes.data))
    return out, int(best)


# --- led_common: the pinned common library's converters (csrc/led_common.h) ------------------------------

common_ffi = FFI()
common_ffi.cdef("""
char * led_json_schema_to_grammar(const char * schema_json, char * error, size_t error_size);
typedef struct led_chat led_chat;
led_chat * led_chat_new(const struct llama_model * model, char * error, size_t error_size);
void led_chat_free(led_chat * chat);
char * led_chat_apply(const led_chat * chat, const char * request_json, char * error, size_t error_size);
char * led_chat_parse(const char * text, bool is_partial, const char * parser_json, char * error,
                      size_t error_size);
void led_common_free(char * s);
""")
_common = None


def common():
    """libled_common, loaded on first use (it is only needed to turn JSON schemas into grammars)."""
    global _common
    with _lock:
        if _common is None:
            name = {"darwin": "libled_common.dylib", "win32": "led_common.dll"}.get(sys.platform, "libled_common.so")
            path = lib_dir() / name
            if not path.exists():
                raise ImportError(f"led-local's {name} is missing from {path.parent}; reinstall with `pip install .`")
            _common = common_ffi.dlopen(str(path))
        return _common


def _common_string(call, *args) -> str:
    """A led_common call that returns a malloc'd string or NULL and a message: the string, or ValueError."""
    c = common()
    error = common_ffi.new("char[]", 1024)
    out = getattr(c, call)(*args, error, 1024)
    if out == common_ffi.NULL:
        raise ValueError(common_ffi.string(error).decode(errors="replace"))
    try:
        return common_ffi.string(out).decode()
    finally:
        c.led_common_free(out)


def json_schema_to_grammar(schema_json: str) -> str:
    """GBNF for a JSON schema (JSON text), by llama.cpp's common/json-schema-to-grammar; ValueError if it
    cannot be converted."""
    return _common_string("led_json_schema_to_grammar", schema_json.encode())


class ChatTemplates:
    """A model's chat templates as llama.cpp's common/chat reads them (what llama-server renders tool
    requests with and parses tool calls back by). Lives no longer than the model it reads."""

    def __init__(self, model) -> None:
        c = common()
        error = common_ffi.new("char[]", 1024)
        handle = c.led_chat_new(common_ffi.cast("struct llama_model *", int(ffi.cast("uintptr_t", model))),
                                error, 1024)
        if handle == common_ffi.NULL:
            raise ValueError(common_ffi.string(error).decode(errors="replace"))
        self._handle = common_ffi.gc(handle, c.led_chat_free)

    def apply(self, request_json: str) -> str:
        return _common_string("led_chat_apply", self._handle, request_json.encode())

    @staticmethod
    def parse(text: str, partial: bool, parser_json: str) -> str:
        return _common_string("led_chat_parse", text.encode(), partial, parser_json.encode())
