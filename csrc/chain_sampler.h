// chain_sampler: standard sampling behind a request's constraints.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_context;
struct llama_model;
struct llama_sampler;

// Standard sampling: `constraints` (led_constraints_new; NULL: none) on the final logits, then `chain`
// (truncations, temperature, draw), as one llama.cpp chain would run them, except that a step whose
// constraints leave no token returns -2 instead of drawing from nothing (and accepting a token a grammar
// refuses, which llama.cpp answers by throwing). Takes ownership of both, also when it fails.
struct chain_sampler;
struct chain_sampler * chain_sampler_new(const struct llama_model * model, struct llama_sampler * constraints,
                                         struct llama_sampler * chain);
// The token (accepted), -1 without logits for the row, -2 when the constraints leave no token, -3 when the
// grammar refused the token (led_accept).
int32_t chain_sampler_sample(struct chain_sampler * smpl, struct llama_context * ctx, int32_t row);
void    chain_sampler_free(struct chain_sampler * smpl);

#ifdef __cplusplus
}
#endif
