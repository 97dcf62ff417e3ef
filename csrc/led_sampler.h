// led_sampler: LED as a llama.cpp sampler (struct llama_sampler_i) over the patched context's latent rows.
//
// The coin of docs/led.md step 8 needs only the final layer, so each step first takes the final layer's
// top-k and flips the coin, and asks the context for the latent logits only when it explores: with the
// readout in "states only" mode (llama_set_latents(..., with_logits=false)) the LM head then runs over
// the latent states of that one row, on demand. The emitted-token distribution is exactly the spec's.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_context;
struct llama_sampler;

typedef struct led_sampler_params {
    int32_t d;                    // depths: the final layer and the d-1 latent blocks set on the context
    int32_t k;                    // candidates
    float   temperature;          // 0 = greedy
    bool    exploit;              // step 8's coin; off: always explore
    bool    think_only;           // never explore once the end-of-thinking marker was emitted
    const int32_t * end_think;    // that marker's token ids (may be NULL: the model has none)
    int32_t n_end_think;
    uint32_t seed;
    const int32_t * latent_index; // [d-1]: depth j reads the context's latent row latent_index[j-1]; NULL:
                                  // row j-1 (the context hands out exactly this sampler's blocks, in order)
    struct llama_sampler * constraints; // applied to the final layer's logits before step 3 (logit bias,
                                  // penalties, grammar: led_constraints_new), fed every emitted token; the
                                  // latent rows stay as the model gives them. Taken over by led_sampler_new
                                  // (freed if it fails). NULL: none
} led_sampler_params;

// NULL for invalid parameters (d < 1, k < 1, temperature < 0 or not finite, a negative latent index). The
// context must hand out the latent rows named by latent_index (llama_set_latents) whenever d > 1; other
// requests decoded in the same batch may have asked for more blocks.
struct llama_sampler * led_sampler_new(struct llama_context * ctx, const led_sampler_params * params);

// One step on output row `row` of ctx's last decode, and its accept, without building llama.cpp's
// full-vocabulary candidates array (the sampler's llama_sampler_i.apply then reads that row too).
// Returns the token, -1 when the context has no latent rows for an exploring step, -2 when the
// constraints leave no token (a grammar at a dead end), or -3 when the grammar refused the token (led_accept).
int32_t led_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t row);

// What the last step did, for traces and for checking a real generation step by step against led_step
// (docs/led.md steps 8-9). The arrays belong to the sampler and hold until its next step.
typedef struct led_sampler_step_info {
    bool    explored;              // the coin's branch
    bool    latent_head;           // the step read the latent logits (only exploring steps with d > 1 do)
    int32_t depth;                 // m*, 0 when exploiting
    float   p_top1;                // the final layer's top-1 probability (full vocabulary, at T)
    float   u_coin;                // the step's two uniform draws: the coin (step 8) ...
    float   u_sample;              // ... and the token (step 9)
    int32_t n_cand;                // min(k, V, the tokens the constraints leave)
    const int32_t * candidates;    // [n_cand] step 3's candidates
    const float   * probs;         // [n_cand] the distribution the token was drawn from: P_{m*} or r_0
} led_sampler_step_info;
void led_sampler_last(const struct llama_sampler * smpl, led_sampler_step_info * info);

// llama_sampler_accept, false when it throws (a grammar refusing the token; led_guard.cpp): the step then
// answers -3 and the sampler must not be used again.
bool led_accept(struct llama_sampler * smpl, int32_t token);

#ifdef __cplusplus
}
#endif
