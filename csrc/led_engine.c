// See led_engine.h for why these wrappers exist.
#include "led_engine.h"
#include "led_sampler.h"  // led_accept

#include "llama.h"
#include "ggml-backend.h"

#include <stdio.h>
#include <stdlib.h>

static bool led_verbose = false;

static void led_log(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (led_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

void led_init(bool verbose) {
    led_verbose = verbose;
    llama_log_set(led_log, NULL);
    ggml_backend_load_all();
    llama_backend_init();
}

// ggml's RPC backend, looked up by name as llama.cpp's common does: a build without it still links
static void * led_rpc_proc(const char * name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    return reg != NULL ? ggml_backend_reg_get_proc_address(reg, name) : NULL;
}

bool led_rpc_supported(void) {
    return led_rpc_proc("ggml_backend_rpc_add_server") != NULL;
}

bool led_rpc_failed(const char * endpoint) {
    typedef bool (*failed_fn)(const char * endpoint);
    failed_fn failed = (failed_fn) led_rpc_proc("ggml_backend_rpc_failed");
    return failed != NULL && failed(endpoint);
}

struct llama_model * led_model_load(const char * path, int32_t n_gpu_layers, bool repack,
                                    const char * const * rpc_servers, int32_t n_rpc, const float * tensor_split) {
    struct llama_model_params params = llama_model_default_params();
    params.n_gpu_layers    = n_gpu_layers;
    params.use_extra_bufts = repack;
    params.tensor_split    = tensor_split;

    // the devices, in llama.cpp's default order: these RPC servers' devices first (fewest bytes over the
    // network), then the local GPUs (integrated ones only when there is no discrete one). The RPC devices
    // are handed to this model alone, not registered: a later model without rpc_servers stays local.
    ggml_backend_dev_t devices[256];
    size_t n_dev = 0;
    if (n_rpc > 0) {
        typedef ggml_backend_reg_t (*add_server_fn)(const char * endpoint);
        add_server_fn add_server = (add_server_fn) led_rpc_proc("ggml_backend_rpc_add_server");
        if (add_server == NULL) {
            return NULL;
        }
        for (int32_t i = 0; i < n_rpc; i++) {
            ggml_backend_reg_t reg = add_server(rpc_servers[i]);
            for (size_t d = 0; reg != NULL && d < ggml_backend_reg_dev_count(reg) && n_dev < 128; d++) {
                devices[n_dev++] = ggml_backend_reg_dev_get(reg, d);
            }
        }
        const size_t n_remote = n_dev;
        for (int pass = 0; pass < 2; pass++) {
            const enum ggml_backend_dev_type type = pass == 0 ? GGML_BACKEND_DEVICE_TYPE_GPU : GGML_BACKEND_DEVICE_TYPE_IGPU;
            if (pass == 1 && n_dev > n_remote) {
                break;
            }
            for (size_t d = 0; d < ggml_backend_dev_count() && n_dev < 255; d++) {
                ggml_backend_dev_t dev = ggml_backend_dev_get(d);
                if (ggml_backend_dev_type(dev) == type) {
                    devices[n_dev++] = dev;
                }
            }
        }
        devices[n_dev] = NULL;
        params.devices = devices;
    }
    return llama_model_load_from_file(path, params);
}

int32_t led_rpc_server_run(const char * endpoint, int32_t n_threads, uint64_t mem_bytes) {
    typedef void (*start_server_fn)(const char * endpoint, const char * cache_dir, size_t n_threads,
                                    size_t n_devices, ggml_backend_dev_t * devices);
    typedef void (*set_memory_fn)(size_t bytes);
    start_server_fn start_server = (start_server_fn) led_rpc_proc("ggml_backend_rpc_start_server");
    set_memory_fn set_memory = (set_memory_fn) led_rpc_proc("ggml_backend_rpc_server_set_memory");
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (start_server == NULL || set_memory == NULL || cpu == NULL || n_threads <= 0) {
        return -1;
    }
    set_memory((size_t) mem_bytes);
    // this machine's accelerators first, then its CPU, as llama.cpp's rpc-server serves them
    ggml_backend_dev_t devices[64];
    size_t n_dev = 0;
    for (size_t d = 0; d < ggml_backend_dev_count() && n_dev < 63; d++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(d);
        enum ggml_backend_dev_type type = ggml_backend_dev_type(dev);
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            devices[n_dev++] = dev;
        }
    }
    if (n_dev == 0) {
        devices[n_dev++] = cpu;
    }
    start_server(endpoint, NULL, (size_t) n_threads, n_dev, devices);
    return 0; // start_server returns only when it could not listen (it logs why)
}

struct llama_context * led_context_new(struct llama_model * model, uint32_t n_ctx, uint32_t n_batch,
                                       uint32_t n_seq_max, int32_t n_threads, int32_t n_threads_batch,
                                       bool batch_invariant, int32_t flash_attn, int32_t pooling) {
    struct llama_context_params params = llama_context_default_params();
    params.n_ctx           = n_ctx;
    params.n_batch         = n_batch;
    params.n_ubatch        = n_batch;
    params.n_seq_max       = n_seq_max;
    params.n_outputs_max   = n_seq_max;
    params.n_threads       = n_threads;
    params.n_threads_batch = n_threads_batch;
    // one pool of cells for every sequence (llama.cpp's unified KV cache): a request may use all n_ctx, and
    // parallel samples share their prompt's cells (the scheduler reserves and evicts, scheduler.py)
    params.kv_unified      = true;
    params.no_perf         = true;
    params.flash_attn_type = (enum llama_flash_attn_type) flash_attn;
    if (pooling >= 0) {
        // an embedding context: every token is an output, pooled per sequence
        params.embeddings    = true;
        params.pooling_type  = (enum llama_pooling_type) pooling;
        params.n_outputs_max = n_batch;
    }
    struct llama_context * ctx = llama_init_from_model(model, params);
    if (ctx != NULL) {
        // patch 0005: a sequence's cells stay in position order in the pool, so its attention sums them in
        // the same order alone, beside others or after a cached prefix (determinism, README)
        llama_memory_set_ordered(llama_get_memory(ctx), true);
    }
    if (ctx != NULL && batch_invariant && llama_set_batch_invariant(ctx, true) != 0) {
        llama_free(ctx);
        return NULL;
    }
    return ctx;
}

struct led_batch {
    struct llama_batch batch;
    int32_t n_max;
};

led_batch * led_batch_new(int32_t n_max) {
    if (n_max <= 0) {
        return NULL;
    }
    led_batch * b = malloc(sizeof(*b));
    if (b == NULL) {
        return NULL;
    }
    b->batch = llama_batch_init(n_max, 0, 1);
    b->n_max = n_max;
    return b;
}

void led_batch_free(led_batch * b) {
    if (b != NULL) {
        llama_batch_free(b->batch);
        free(b);
    }
}

void led_batch_clear(led_batch * b) {
    b->batch.n_tokens = 0;
}

int32_t led_batch_add(led_batch * b, int32_t token, int32_t pos, int32_t seq_id, bool output) {
    const int32_t i = b->batch.n_tokens;
    if (i >= b->n_max) {
        return -1;
    }
    b->batch.token[i]     = token;
    b->batch.pos[i]       = pos;
    b->batch.n_seq_id[i]  = 1;
    b->batch.seq_id[i][0] = seq_id;
    b->batch.logits[i]    = output;
    b->batch.n_tokens     = i + 1;
    return i;
}

int32_t led_decode(struct llama_context * ctx, led_batch * b) {
    return llama_decode(ctx, b->batch);
}

static bool led_abort_requested(void * flag) {
    return __atomic_load_n((const int32_t *) flag, __ATOMIC_RELAXED) != 0;
}

void led_set_abort_flag(struct llama_context * ctx, const int32_t * flag) {
    llama_set_abort_callback(ctx, flag != NULL ? led_abort_requested : NULL, (void *) flag);
}

struct llama_sampler * led_constraints_new(const struct llama_model * model, const led_constraint_params * c) {
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    struct llama_sampler_chain_params params = llama_sampler_chain_default_params();
    params.no_perf = true;
    struct llama_sampler * chain = llama_sampler_chain_init(params);
    // llama-cpp-python's order: its logit-bias processor, then penalties, then the grammar
    if (c->n_logit_bias > 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_logit_bias(llama_vocab_n_tokens(vocab), c->n_logit_bias, c->logit_bias));
    }
    if (c->repeat_penalty != 1.0f || c->frequency_penalty != 0.0f || c->presence_penalty != 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_penalties(llama_vocab_n_tokens(vocab), c->penalty_last_n,
                                                                    c->repeat_penalty, c->frequency_penalty, c->presence_penalty));
    }
    if (c->grammar != NULL) {
        struct llama_sampler * grammar = c->grammar_lazy
            ? llama_sampler_init_grammar_lazy_patterns(vocab, c->grammar, "root", (const char **) c->trigger_patterns,
                                                       (size_t) c->n_trigger_patterns, c->trigger_tokens,
                                                       (size_t) c->n_trigger_tokens)
            : llama_sampler_init_grammar(vocab, c->grammar, "root");
        if (grammar == NULL) {
            llama_sampler_free(chain);
            return NULL;
        }
        for (int32_t i = 0; i < c->n_grammar_prefill; i++) {
            if (!led_accept(grammar, c->grammar_prefill[i])) {  // the grammar refuses its own prefill
                llama_sampler_free(grammar);
                llama_sampler_free(chain);
                return NULL;
            }
        }
        llama_sampler_chain_add(chain, grammar);
    }
    return chain;
}

struct llama_sampler * led_sampler_standard_new(struct llama_sampler * constraints, const led_standard_params * p) {
    struct llama_sampler_chain_params params = llama_sampler_chain_default_params();
    params.no_perf = true;
    struct llama_sampler * chain = llama_sampler_chain_init(params);
    if (constraints != NULL) {
        llama_sampler_chain_add(chain, constraints);
    }
    if (p->temperature <= 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        return chain;
    }
    if (p->mirostat == 1 || p->mirostat == 2) {
        // as llama.cpp's common sampling: the temperature, then Mirostat in place of the truncations
        llama_sampler_chain_add(chain, llama_sampler_init_temp(p->temperature));
        llama_sampler_chain_add(chain, p->mirostat == 1
            ? llama_sampler_init_mirostat(p->n_vocab, p->seed, p->mirostat_tau, p->mirostat_eta, 100)
            : llama_sampler_init_mirostat_v2(p->seed, p->mirostat_tau, p->mirostat_eta));
        return chain;
    }
    if (p->top_k > 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_k(p->top_k));
    }
    if (p->typical_p < 1.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_typical(p->typical_p, 1));
    }
    if (p->top_p < 1.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_p(p->top_p, 1));
    }
    if (p->min_p > 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_min_p(p->min_p, 1));
    }
    llama_sampler_chain_add(chain, llama_sampler_init_temp(p->temperature));
    llama_sampler_chain_add(chain, llama_sampler_init_dist(p->seed));
    return chain;
}
