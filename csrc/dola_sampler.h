// dola_sampler: DoLa (Chuang et al., 2023) as a llama.cpp sampler over the patched context's latent rows.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_context;
struct llama_sampler;

// DoLa over m premature rows the context hands out (llama_set_latents with in-graph logits): rows
// latent_index[0..m) of the context's latent set (NULL: rows 0..m-1), followed
// by `chain` (penalties, temperature, top-k, top-p, ... or greedy) on the contrasted logits, as transformers
// applies its logits processors after DoLa's contrast. `constraints` (logit bias, grammar; NULL: none) act
// on the final logits before the contrast, so its plausibility set holds only tokens they allow. Takes
// ownership of both, also when it fails. Its llama_sampler_i.apply reads the row of the last
// dola_sampler_sample call; dola_sampler_sample is the way to drive it.
struct llama_sampler * dola_sampler_new(struct llama_context * ctx, int32_t m, const int32_t * latent_index,
                                        struct llama_sampler * constraints, struct llama_sampler * chain);
// The token, -1 without premature rows, -2 when the constraints leave no token, -3 (led_accept).
int32_t dola_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t row);
// The premature row the last step contrasted with.
int32_t dola_sampler_last(const struct llama_sampler * smpl);

#ifdef __cplusplus
}
#endif
