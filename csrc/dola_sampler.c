// DoLa as a llama_sampler_i; see dola_sampler.h. The contrast is led_core.c's (dola_contrast); the
// request's constraints are led_constrained's, shared with LED and the standard chain.
#include "dola_sampler.h"

#include "led_constrained.h"
#include "led_core.h"
#include "llama.h"

#include <stdlib.h>
#include <string.h>

typedef struct dola_sampler_state {
    struct llama_context * ctx;
    led_constrained constrained;  // on the final logits before the contrast; its data: the chain's candidates
    struct llama_sampler * chain;
    int32_t m;
    int32_t n_vocab;
    int32_t row;
    int32_t * latent_index;    // [m] the context's latent row of each premature layer, or NULL: rows 0..m-1
    float * premature;         // [m][n_vocab] gathered rows, when latent_index is not 0..m-1
    float * contrast;          // [n_vocab]
    int32_t last_premature;
    bool refused;              // the constraints threw on a token (led_accept): the sampler is done
} dola_sampler_state;

static const char * dola_sampler_name(const struct llama_sampler * smpl) {
    (void) smpl;
    return "dola";
}

static int32_t dola_sampler_step(dola_sampler_state * st) {
    const float * z0 = llama_get_logits_ith(st->ctx, st->row);
    const float * zl = llama_get_latent_logits_ith(st->ctx, st->row);
    if (z0 == NULL || zl == NULL) {
        return -1;
    }
    const float * premature = zl;
    if (st->latent_index != NULL) {
        // other requests in the batch asked for more blocks: gather this sampler's rows, in its order
        for (int32_t l = 0; l < st->m; l++) {
            memcpy(st->premature + (int64_t) l * st->n_vocab, zl + (int64_t) st->latent_index[l] * st->n_vocab,
                   sizeof(float) * (size_t) st->n_vocab);
        }
        premature = st->premature;
    }
    // with constraints, the plausibility set of the contrast is made of allowed tokens only
    int32_t n_allowed;
    z0 = led_constrained_apply(&st->constrained, z0, &n_allowed);
    if (n_allowed == 0) {
        return -2;
    }
    st->last_premature = dola_contrast(z0, premature, st->m, st->n_vocab, st->contrast);
    llama_token_data_array cur = led_constrained_candidates(&st->constrained, st->contrast);
    llama_sampler_apply(st->chain, &cur);
    return cur.selected < 0 ? -1 : cur.data[cur.selected].id;
}

static void dola_sampler_accept(struct llama_sampler * smpl, llama_token token) {
    dola_sampler_state * st = smpl->ctx;
    if (!led_constrained_accept(&st->constrained, token)) {
        st->refused = true;
    }
    llama_sampler_accept(st->chain, token);
}

static void dola_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p) {
    led_select_token(cur_p, dola_sampler_step(smpl->ctx));
}

static void dola_sampler_reset(struct llama_sampler * smpl) {
    dola_sampler_state * st = smpl->ctx;
    led_constrained_reset(&st->constrained);
    llama_sampler_reset(st->chain);
    st->refused = false;
}

static void dola_sampler_free_state(dola_sampler_state * st) {
    if (st != NULL) {
        llama_sampler_free(st->chain);
        led_constrained_free(&st->constrained);
        free(st->latent_index);
        free(st->premature);
        free(st->contrast);
        free(st);
    }
}

static void dola_sampler_free(struct llama_sampler * smpl) {
    dola_sampler_free_state(smpl->ctx);
}

static struct llama_sampler_i dola_sampler_iface = {
    /* .name              = */ dola_sampler_name,
    /* .accept            = */ dola_sampler_accept,
    /* .apply             = */ dola_sampler_apply,
    /* .reset             = */ dola_sampler_reset,
    /* .clone             = */ NULL,  // the chain it owns has no generic clone here; clone the settings instead
    /* .free              = */ dola_sampler_free,
    /* .backend_init      = */ NULL,
    /* .backend_accept    = */ NULL,
    /* .backend_apply     = */ NULL,
    /* .backend_set_input = */ NULL,
    /* .backend_reset     = */ NULL,
    /* .copy_state        = */ NULL,
};

struct llama_sampler * dola_sampler_new(struct llama_context * ctx, int32_t m, const int32_t * latent_index,
                                        struct llama_sampler * constraints, struct llama_sampler * chain) {
    bool identity = true;
    for (int32_t l = 0; latent_index != NULL && l < m; l++) {
        if (latent_index[l] < 0) {
            identity = false;
            m = 0;  // invalid: refused below
            break;
        }
        identity = identity && latent_index[l] == l;
    }
    dola_sampler_state * st = ctx != NULL && chain != NULL && m >= 1 ? calloc(1, sizeof(*st)) : NULL;
    if (st == NULL) {
        if (chain != NULL) {
            llama_sampler_free(chain);
        }
        if (constraints != NULL) {
            llama_sampler_free(constraints);
        }
        return NULL;
    }
    st->ctx      = ctx;
    st->chain    = chain;
    st->m        = m;
    st->n_vocab  = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    st->row      = -1;
    st->contrast = malloc(sizeof(float) * (size_t) st->n_vocab);
    bool ok = led_constrained_init(&st->constrained, constraints, st->n_vocab, true) && st->contrast != NULL;
    if (ok && !identity) {
        st->latent_index = malloc(sizeof(int32_t) * (size_t) m);
        st->premature    = malloc(sizeof(float) * (size_t) m * (size_t) st->n_vocab);
        ok = st->latent_index != NULL && st->premature != NULL;
        if (ok) {
            memcpy(st->latent_index, latent_index, sizeof(int32_t) * (size_t) m);
        }
    }
    if (!ok) {
        dola_sampler_free_state(st);  // and the chain it took over
        return NULL;
    }
    return llama_sampler_init(&dola_sampler_iface, st);
}

int32_t dola_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t row) {
    dola_sampler_state * st = smpl->ctx;
    st->ctx = ctx;
    st->row = row;
    const int32_t token = dola_sampler_step(st);
    if (token >= 0) {
        llama_sampler_accept(smpl, token);
    }
    return st->refused ? -3 : token;
}

int32_t dola_sampler_last(const struct llama_sampler * smpl) {
    return ((const dola_sampler_state *) smpl->ctx)->last_premature;
}
