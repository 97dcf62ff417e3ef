// See led_constrained.h.
#include "led_constrained.h"

#include "led_sampler.h"  // led_accept

#include <math.h>
#include <stdlib.h>

bool led_constrained_init(led_constrained * c, struct llama_sampler * constraints, int32_t n_vocab, bool with_data) {
    *c = (led_constrained) { constraints, n_vocab, NULL, NULL };
    if (constraints != NULL || with_data) {
        c->data = malloc(sizeof(llama_token_data) * (size_t) n_vocab);
    }
    if (constraints != NULL) {
        c->z = malloc(sizeof(float) * (size_t) n_vocab);
    }
    if (((constraints != NULL || with_data) && c->data == NULL) || (constraints != NULL && c->z == NULL)) {
        led_constrained_free(c);
        return false;
    }
    return true;
}

void led_constrained_free(led_constrained * c) {
    if (c->constraints != NULL) {
        llama_sampler_free(c->constraints);
    }
    free(c->data);
    free(c->z);
    *c = (led_constrained) { NULL, c->n_vocab, NULL, NULL };
}

const float * led_constrained_apply(led_constrained * c, const float * z0, int32_t * n_allowed) {
    if (c->constraints == NULL) {
        *n_allowed = c->n_vocab;
        return z0;
    }
    for (int32_t v = 0; v < c->n_vocab; v++) {
        c->data[v] = (llama_token_data) { v, z0[v], 0.0f };
        c->z[v] = -INFINITY;
    }
    llama_token_data_array cur = { c->data, (size_t) c->n_vocab, -1, false };
    llama_sampler_apply(c->constraints, &cur);
    int32_t n = 0;
    for (size_t i = 0; i < cur.size; i++) {
        c->z[cur.data[i].id] = cur.data[i].logit;
        n += isfinite(cur.data[i].logit) ? 1 : 0;
    }
    *n_allowed = n;
    return c->z;
}

bool led_constrained_accept(led_constrained * c, llama_token token) {
    return c->constraints == NULL || led_accept(c->constraints, token);
}

void led_constrained_reset(led_constrained * c) {
    if (c->constraints != NULL) {
        llama_sampler_reset(c->constraints);
    }
}

llama_token_data_array led_constrained_candidates(led_constrained * c, const float * z) {
    for (int32_t v = 0; v < c->n_vocab; v++) {
        c->data[v] = (llama_token_data) { v, z[v], 0.0f };
    }
    return (llama_token_data_array) { c->data, (size_t) c->n_vocab, -1, false };
}

void led_select_token(llama_token_data_array * cur_p, llama_token token) {
    cur_p->selected = -1;
    if (token < 0) {
        return;
    }
    // llama_sampler_sample hands the full vocabulary in token order; search in case a caller did not
    if ((size_t) token < cur_p->size && cur_p->data[token].id == token) {
        cur_p->selected = token;
        return;
    }
    for (size_t i = 0; i < cur_p->size; i++) {
        if (cur_p->data[i].id == token) {
            cur_p->selected = (int64_t) i;
            return;
        }
    }
}
