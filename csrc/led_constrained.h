// led_constrained: the final logits through a request's constraints (logit bias, penalties, grammar:
// led_constraints_new), the buffers that takes, and their one owner. LED, DoLa and the standard chain
// (led_sampler.c, dola_sampler.c, chain_sampler.c) each hold one, so ownership and the error path are
// written once.
#pragma once

#include "llama.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct led_constrained {
    struct llama_sampler * constraints;  // owned, or NULL: none
    int32_t            n_vocab;
    llama_token_data * data;             // [n_vocab] scratch: the logits as llama.cpp's samplers take them
    float            * z;                // [n_vocab] the constrained logits (only with constraints)
} led_constrained;

// Takes over `constraints` whatever happens (freed when this fails). `data` is allocated even without
// constraints when `with_data` (a caller that runs a llama.cpp chain over it). False: out of memory, and
// *c is left empty (led_constrained_free is then a no-op).
bool led_constrained_init(led_constrained * c, struct llama_sampler * constraints, int32_t n_vocab, bool with_data);
void led_constrained_free(led_constrained * c);

// z0 through the constraints. Returns the logits to use (z0 itself without constraints) and, in
// *n_allowed, how many tokens they leave (finite logits; n_vocab without constraints). A constraint that
// drops entries rules those tokens out.
const float * led_constrained_apply(led_constrained * c, const float * z0, int32_t * n_allowed);

// Feeds the emitted token to the constraints; false when they threw on it (led_accept: the sampler answers
// -3 and must not be used again).
bool led_constrained_accept(led_constrained * c, llama_token token);
void led_constrained_reset(led_constrained * c);

// llama_sampler_i.apply's answer: marks `token` as cur_p's selected entry (-1: none, also for token < 0).
void led_select_token(llama_token_data_array * cur_p, llama_token token);

// `z` as llama.cpp's candidates array over the whole vocabulary, in token order (in c->data).
llama_token_data_array led_constrained_candidates(led_constrained * c, const float * z);
