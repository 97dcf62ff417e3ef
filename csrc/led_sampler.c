// LED as a llama_sampler_i; see led_sampler.h. Math lives in led_core.c, this file is glue; the request's
// constraints are led_constrained's (led_constrained.h), shared with DoLa and the standard chain.
#include "led_sampler.h"

#include "led_constrained.h"
#include "led_core.h"
#include "llama.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct led_sampler_state {
    struct llama_context * ctx;
    led_sampler_params     params;
    int32_t                n_vocab;
    int32_t                row;

    int32_t * end_think;     // owned copy of the marker
    int32_t * latent_index;  // owned [d-1]: the context's latent row of each depth
    int32_t * recent;        // the last n_end_think accepted tokens (a ring)
    int32_t   n_recent;
    bool      thinking_over;
    bool      refused;       // the constraints threw on a token (led_accept): the sampler is done

    uint64_t rng[4];         // xoshiro256**: a small, seedable, well-tested generator

    led_workspace * ws;
    int32_t * cand;          // [k]
    float   * explore;       // [k]
    float   * exploit;       // [k]

    led_sampler_step_info last;  // its arrays point at cand and at explore or exploit

    led_constrained constrained;  // on the final logits before step 3
} led_sampler_state;

// --- random numbers ----------------------------------------------------------------------------------

static uint64_t led_splitmix64(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void led_rng_seed(uint64_t s[4], uint32_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        s[i] = led_splitmix64(&x);
    }
}

static inline uint64_t led_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static float led_rng_uniform(uint64_t s[4]) {
    const uint64_t result = led_rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = led_rotl(s[3], 45);
    return (float) (result >> 40) * 0x1.0p-24f;  // 24 random bits: uniform in [0, 1) as a float
}

// --- one step ----------------------------------------------------------------------------------------

static int32_t led_sampler_step(led_sampler_state * st) {
    const led_sampler_params * p = &st->params;
    const float * z0 = llama_get_logits_ith(st->ctx, st->row);
    if (z0 == NULL) {
        return -1;
    }
    // two draws every step, whatever the branch, so a seed fixes the whole run
    const float u_coin   = led_rng_uniform(st->rng);
    const float u_sample = led_rng_uniform(st->rng);

    // the constraints act on the final layer before step 3, so every candidate is a token they allow
    int32_t n_allowed;
    z0 = led_constrained_apply(&st->constrained, z0, &n_allowed);
    if (n_allowed == 0) {
        return -2;
    }
    // steps 1-3 and the coin (step 8) from the final layer alone
    int32_t n = p->k < st->n_vocab ? p->k : st->n_vocab;
    n = n < n_allowed ? n : n_allowed;
    const float p_top1 = led_candidates(z0, st->n_vocab, p->temperature, n, st->cand, st->ws->q);
    const bool allowed = !(p->think_only && st->thinking_over);
    const float p_exploit = led_p_exploit(p_top1, p->exploit, allowed);
    const bool explored = u_coin < 1.0f - p_exploit;

    st->last = (led_sampler_step_info) {
        .explored = explored, .latent_head = false, .depth = 0, .p_top1 = p_top1, .u_coin = u_coin,
        .u_sample = u_sample, .n_cand = n, .candidates = st->cand, .probs = st->exploit,
    };

    const float * probs;
    if (!explored) {
        led_exploit_distribution(st->ws->q, n, st->exploit);
        probs = st->exploit;
    } else {
        // only now the latent rows (steps 2 and 4-7 over every depth)
        if (p->d > 1) {
            const float * zl = llama_get_latent_logits_ith(st->ctx, st->row);
            if (zl == NULL) {
                return -1;
            }
            st->last.latent_head = true;
            for (int32_t j = 1; j < p->d; j++) {
                const float * zj = zl + (int64_t) st->latent_index[j - 1] * st->n_vocab;
                const led_row_norm norm = led_row_normalize(zj, st->n_vocab, p->temperature);
                for (int32_t c = 0; c < n; c++) {
                    st->ws->q[(int64_t) j * n + c] = led_row_prob(&norm, zj[st->cand[c]]);
                }
            }
        }
        st->last.depth = led_explore_distribution(st->ws->q, p->d, n, st->explore, st->ws->s, st->ws->p);
        st->last.probs = st->explore;
        probs = st->explore;
    }
    // step 9
    return st->cand[led_draw(probs, n, u_sample, p->temperature <= 0.0f)];
}

// --- llama_sampler_i ---------------------------------------------------------------------------------

static const char * led_sampler_name(const struct llama_sampler * smpl) {
    (void) smpl;
    return "led";
}

static void led_sampler_accept(struct llama_sampler * smpl, llama_token token) {
    led_sampler_state * st = smpl->ctx;
    if (!led_constrained_accept(&st->constrained, token)) {
        st->refused = true;
    }
    const int32_t m = st->params.n_end_think;
    if (m == 0 || st->thinking_over) {
        return;
    }
    // keep the last m tokens; the marker may span several tokens in a vocabulary without a </think> token
    memmove(st->recent, st->recent + 1, sizeof(int32_t) * (size_t) (m - 1));
    st->recent[m - 1] = token;
    st->n_recent += st->n_recent < m;
    if (st->n_recent == m && memcmp(st->recent, st->end_think, sizeof(int32_t) * (size_t) m) == 0) {
        st->thinking_over = true;
    }
}

static void led_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p) {
    led_select_token(cur_p, led_sampler_step(smpl->ctx));
}

static void led_sampler_reset(struct llama_sampler * smpl) {
    led_sampler_state * st = smpl->ctx;
    led_constrained_reset(&st->constrained);
    st->thinking_over = false;
    st->n_recent = 0;
    st->refused = false;
    led_rng_seed(st->rng, st->params.seed);
}

static void led_sampler_free_state(led_sampler_state * st) {
    if (st == NULL) {
        return;
    }
    led_workspace_free(st->ws);
    free(st->cand);
    free(st->explore);
    free(st->exploit);
    free(st->end_think);
    free(st->recent);
    free(st->latent_index);
    led_constrained_free(&st->constrained);
    free(st);
}

static void led_sampler_free(struct llama_sampler * smpl) {
    led_sampler_free_state(smpl->ctx);
}

static struct llama_sampler * led_sampler_clone(const struct llama_sampler * smpl);

static struct llama_sampler_i led_sampler_iface = {
    /* .name              = */ led_sampler_name,
    /* .accept            = */ led_sampler_accept,
    /* .apply             = */ led_sampler_apply,
    /* .reset             = */ led_sampler_reset,
    /* .clone             = */ led_sampler_clone,
    /* .free              = */ led_sampler_free,
    /* .backend_init      = */ NULL,
    /* .backend_accept    = */ NULL,
    /* .backend_apply     = */ NULL,
    /* .backend_set_input = */ NULL,
    /* .backend_reset     = */ NULL,
    /* .copy_state        = */ NULL,
};

static bool led_sampler_params_valid(struct llama_context * ctx, const led_sampler_params * params) {
    if (ctx == NULL || params == NULL || params->d < 1 || params->k < 1 || !isfinite(params->temperature) ||
        params->temperature < 0.0f || params->n_end_think < 0 || (params->n_end_think > 0 && params->end_think == NULL)) {
        return false;
    }
    for (int32_t j = 0; params->latent_index != NULL && j < params->d - 1; j++) {
        if (params->latent_index[j] < 0) {
            return false;
        }
    }
    return true;
}

// Takes over params->constraints whatever happens.
static led_sampler_state * led_sampler_state_new(struct llama_context * ctx, const led_sampler_params * params) {
    led_sampler_state * st = led_sampler_params_valid(ctx, params) ? calloc(1, sizeof(*st)) : NULL;
    if (st == NULL) {
        if (params != NULL && params->constraints != NULL) {
            llama_sampler_free(params->constraints);
        }
        return NULL;
    }
    st->ctx     = ctx;
    st->params  = *params;
    st->params.constraints = NULL;  // st->constrained owns it
    st->n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    if (!led_constrained_init(&st->constrained, params->constraints, st->n_vocab, false)) {
        free(st);
        return NULL;
    }
    st->row     = -1;
    st->ws      = led_workspace_new(params->d, params->k);
    st->cand    = malloc(sizeof(int32_t) * (size_t) params->k);
    st->explore = malloc(sizeof(float) * (size_t) params->k);
    st->exploit = malloc(sizeof(float) * (size_t) params->k);
    const size_t m = (size_t) (params->n_end_think > 0 ? params->n_end_think : 1);
    st->end_think = malloc(sizeof(int32_t) * m);
    st->recent    = calloc(m, sizeof(int32_t));
    st->latent_index = malloc(sizeof(int32_t) * (size_t) (params->d > 1 ? params->d - 1 : 1));
    if (st->ws == NULL || st->cand == NULL || st->explore == NULL || st->exploit == NULL || st->end_think == NULL ||
        st->recent == NULL || st->latent_index == NULL) {
        led_sampler_free_state(st);
        return NULL;
    }
    for (int32_t j = 0; j < params->d - 1; j++) {
        st->latent_index[j] = params->latent_index != NULL ? params->latent_index[j] : j;
    }
    st->params.latent_index = st->latent_index;
    if (params->n_end_think > 0) {
        memcpy(st->end_think, params->end_think, sizeof(int32_t) * (size_t) params->n_end_think);
    }
    st->params.end_think = st->end_think;
    led_rng_seed(st->rng, params->seed);
    return st;
}

struct llama_sampler * led_sampler_new(struct llama_context * ctx, const led_sampler_params * params) {
    led_sampler_state * st = led_sampler_state_new(ctx, params);
    return st == NULL ? NULL : llama_sampler_init(&led_sampler_iface, st);
}

static struct llama_sampler * led_sampler_clone(const struct llama_sampler * smpl) {
    const led_sampler_state * src = smpl->ctx;
    led_sampler_params params = src->params;
    params.constraints = src->constrained.constraints != NULL ? llama_sampler_clone(src->constrained.constraints) : NULL;
    struct llama_sampler * out = led_sampler_new(src->ctx, &params);
    if (out != NULL) {
        led_sampler_state * dst = out->ctx;
        memcpy(dst->rng, src->rng, sizeof(dst->rng));
        memcpy(dst->recent, src->recent, sizeof(int32_t) * (size_t) (src->params.n_end_think > 0 ? src->params.n_end_think : 1));
        dst->n_recent      = src->n_recent;
        dst->thinking_over = src->thinking_over;
        dst->row           = src->row;
    }
    return out;
}

int32_t led_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t row) {
    led_sampler_state * st = smpl->ctx;
    st->ctx = ctx;
    st->row = row;
    const int32_t token = led_sampler_step(st);
    if (token >= 0) {
        llama_sampler_accept(smpl, token);
    }
    return st->refused ? -3 : token;
}

void led_sampler_last(const struct llama_sampler * smpl, led_sampler_step_info * info) {
    *info = ((const led_sampler_state *) smpl->ctx)->last;
}
