// led_engine: the thin C surface that led_local/_native.py binds with cffi.
//
// llama.h passes several structs by value (model/context params, llama_batch, sampler-chain params); a
// binding that restates their layouts breaks silently when llama.cpp changes them. These wrappers keep
// every struct on the C side, where the compiler checks it against llama.h, so the Python side only ever
// sees opaque pointers and plain numbers. Functions of llama.h with plain signatures are bound directly.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;
struct llama_context;
struct llama_sampler;

// Quiet or chatty llama.cpp/ggml logging (everything, or errors only), and backend loading; call once.
void led_init(bool verbose);

// NULL when the file cannot be loaded (llama.cpp logs why). repack lets the CPU backend repack weights
// for its GEMM kernels (llama.cpp's default; a batch-invariant context wants it off).
// rpc_servers: n_rpc "host:port" endpoints of ggml RPC servers whose devices take layers first (then the
// local GPUs); tensor_split: llama.cpp's per-device proportions, or NULL. A server that cannot be reached
// aborts inside ggml (check reachability first).
struct llama_model * led_model_load(const char * path, int32_t n_gpu_layers, bool repack,
                                    const char * const * rpc_servers, int32_t n_rpc, const float * tensor_split);

// Whether this build has ggml's RPC backend.
bool led_rpc_supported(void);

// Whether the RPC server at endpoint stopped answering on its current connection (patch 0004: its graph
// computes then fail instead of aborting the process). Synchronize the context first.
bool led_rpc_failed(const char * endpoint);

// Serves this machine's devices (its GPUs, else its CPU with n_threads) to RPC clients at endpoint
// "host:port"; blocks while serving. mem_bytes > 0: the memory each device reports to clients (which
// split layers by it; patch 0004), 0: what the device has. -1 when this build has no RPC backend or
// n_threads <= 0; 0 when the server stopped (it could not listen: ggml logs why).
int32_t led_rpc_server_run(const char * endpoint, int32_t n_threads, uint64_t mem_bytes);

// A context with one KV stream per sequence (n_ctx / n_seq_max cells each, llama-server's slots): a slot's
// cells are its own and stay in position order; parallel samples get a copy of the prompt's stream
// (llama_memory_seq_cp across streams). n_outputs_max = n_seq_max keeps the latent readout's compute buffer bounded (one sampled row per sequence).
// batch_invariant: the CPU backend's reference kernels (llama_set_batch_invariant); NULL if unavailable.
// flash_attn: -1 auto (llama.cpp's default), 0 off, 1 on. pooling >= 0 (llama_pooling_type): an embedding
// context (every token output, pooled per sequence); -1: a generation context.
struct llama_context * led_context_new(struct llama_model * model, uint32_t n_ctx, uint32_t n_batch,
                                       uint32_t n_seq_max, int32_t n_threads, int32_t n_threads_batch,
                                       bool batch_invariant, int32_t flash_attn, int32_t pooling);

// A reusable batch of up to n_max tokens, one sequence id each.
typedef struct led_batch led_batch;
led_batch * led_batch_new(int32_t n_max);
void        led_batch_free(led_batch * batch);
void        led_batch_clear(led_batch * batch);
// Returns the token's index in the batch (what llama_get_logits_ith takes), or -1 when full.
int32_t     led_batch_add(led_batch * batch, int32_t token, int32_t pos, int32_t seq_id, bool output);
// llama_decode of the batch: 0 ok, 1 no KV slot, 2 aborted, < 0 error.
int32_t     led_decode(struct llama_context * ctx, led_batch * batch);
// While *flag is nonzero, a llama_decode of ctx stops at its next graph node and returns 2 (ggml's abort
// callback, read by the CPU backend between nodes): a shutdown need not wait out a long prompt chunk. The
// flag is the caller's, read atomically, and must outlive the context (NULL removes the callback).
void        led_set_abort_flag(struct llama_context * ctx, const int32_t * flag);

// What constrains the final layer's logits before any sampler picks from them: logit bias, penalties
// (repeat, frequency, presence over the last penalty_last_n tokens) and a GBNF grammar (rule `root`).
typedef struct led_constraint_params {
    const struct llama_logit_bias * logit_bias;
    int32_t n_logit_bias;
    float   repeat_penalty;     // 1 = off
    float   frequency_penalty;  // 0 = off
    float   presence_penalty;   // 0 = off
    int32_t penalty_last_n;
    const char * grammar;       // NULL: none
    // A lazy grammar constrains nothing until the output matches one of its triggers (a tool call's opening
    // in free text), then the output from the trigger on; llama.cpp's lazy grammar sampler.
    bool grammar_lazy;
    const char * const * trigger_patterns;  // regexes over the output text
    int32_t n_trigger_patterns;
    const int32_t * trigger_tokens;     // llama_token ids
    int32_t n_trigger_tokens;
    // Tokens the grammar takes before the output (a template's generation prompt, which tool-call grammars
    // start with, as llama.cpp's common sampling feeds them); the penalties never see them.
    const int32_t * grammar_prefill;
    int32_t n_grammar_prefill;
} led_constraint_params;
// A sampler chain applying them in llama-cpp-python's order (bias, penalties, grammar); it only changes
// logits, never their order. NULL when the grammar does not parse or refuses its prefill (llama.cpp logs why).
struct llama_sampler * led_constraints_new(const struct llama_model * model, const led_constraint_params * c);

// The ordinary sampler chain of llama.cpp after the constraints: top-k, typical, top-p, min-p (or Mirostat),
// temperature, then a seeded draw (greedy when temperature <= 0). A value that disables a stage (the "off"
// values below) leaves that stage out.
typedef struct led_standard_params {
    float    temperature;       // <= 0: greedy
    int32_t  top_k;             // <= 0: off
    float    top_p;             // 1: off
    float    min_p;             // 0: off
    float    typical_p;         // 1: off
    int32_t  mirostat;          // 0 off, 1 or 2: Mirostat v1/v2 in place of top-k .. min-p
    float    mirostat_tau;
    float    mirostat_eta;
    int32_t  n_vocab;
    uint32_t seed;
} led_standard_params;
// llama.cpp's ordinary chain after the constraints (taken over; NULL: none), as llama-cpp-python builds it.
struct llama_sampler * led_sampler_standard_new(struct llama_sampler * constraints, const led_standard_params * p);

#ifdef __cplusplus
}
#endif
