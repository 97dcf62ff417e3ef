// Standard sampling: the request's constraints (led_constrained), then llama.cpp's ordinary chain; see
// chain_sampler.h.
#include "chain_sampler.h"

#include "led_constrained.h"
#include "llama.h"

#include <stdlib.h>

typedef struct chain_sampler_state {
    led_constrained constrained;         // its data: the chain's candidates
    struct llama_sampler * chain;        // owned
} chain_sampler_state;

static void chain_sampler_free_state(chain_sampler_state * st) {
    if (st != NULL) {
        led_constrained_free(&st->constrained);
        if (st->chain != NULL) {
            llama_sampler_free(st->chain);
        }
        free(st);
    }
}

struct chain_sampler * chain_sampler_new(const struct llama_model * model, struct llama_sampler * constraints,
                                         struct llama_sampler * chain) {
    chain_sampler_state * st = model != NULL && chain != NULL ? calloc(1, sizeof(*st)) : NULL;
    if (st == NULL) {
        if (constraints != NULL) {
            llama_sampler_free(constraints);
        }
        if (chain != NULL) {
            llama_sampler_free(chain);
        }
        return NULL;
    }
    st->chain = chain;
    if (!led_constrained_init(&st->constrained, constraints, llama_vocab_n_tokens(llama_model_get_vocab(model)), true)) {
        chain_sampler_free_state(st);
        return NULL;
    }
    return (struct chain_sampler *) st;
}

void chain_sampler_free(struct chain_sampler * smpl) {
    chain_sampler_free_state((chain_sampler_state *) smpl);
}

int32_t chain_sampler_sample(struct chain_sampler * smpl, struct llama_context * ctx, int32_t row) {
    chain_sampler_state * st = (chain_sampler_state *) smpl;
    const float * z0 = llama_get_logits_ith(ctx, row);
    if (z0 == NULL) {
        return -1;
    }
    int32_t n_allowed;
    z0 = led_constrained_apply(&st->constrained, z0, &n_allowed);
    if (n_allowed == 0) {
        return -2;  // checked before the chain: a draw over no finite logit has no meaning
    }
    llama_token_data_array cur = led_constrained_candidates(&st->constrained, z0);
    llama_sampler_apply(st->chain, &cur);
    if (cur.selected < 0 || (size_t) cur.selected >= cur.size) {
        return -1;
    }
    const llama_token token = cur.data[cur.selected].id;
    if (!led_constrained_accept(&st->constrained, token)) {
        return -3;
    }
    llama_sampler_accept(st->chain, token);
    return token;
}
