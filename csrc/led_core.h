// led_core: the math of Latent Exploration Decoding (docs/led.md), pure C over float arrays.
//
// No llama.cpp header: this compiles and tests alone (and under AddressSanitizer/UBSan). The sampler
// glue (led_sampler.c) calls the same pieces in a lazier order: candidates and the coin first, the
// latent rows only when the coin says "explore".
//
// Conventions: `logits` rows hold the full vocabulary (V floats). Row 0 is the final layer (z_0), rows
// 1..d-1 the latent depths (z_j = f(W . h_{L-1-j})). NaN counts as -inf. A row with +inf entries puts
// its mass evenly on them; a row with no entry above -inf is uniform.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LED_Q_FLOOR 1e-6f   // docs/led.md step 4
#define LED_P_FLOOR 1e-9f   // step 7, inside the log

// The log-normalizer of one row at temperature T (T <= 0: no division, as greedy LED asks), so that
// p[i] = exp(z[i]/T - lse) (docs/led.md step 2). Works with the +inf/NaN conventions above.
typedef struct led_row_norm {
    double inv_t;      // 1/T, or 1 when greedy
    double max;        // max of z/T over the row (+inf or -inf in the degenerate cases)
    double sum;        // sum of exp(z/T - max) (count of +inf entries when max is +inf)
    int32_t n_vocab;
} led_row_norm;

led_row_norm led_row_normalize(const float * z, int32_t n_vocab, float temperature);
float        led_row_prob(const led_row_norm * norm, float z);

// Steps 1-3 on row 0: the k tokens of largest p_0, descending, ties by lower id (n = min(k, V) of them);
// p0 at each; returns p_0 of the top candidate over the full vocabulary (step 8's coin).
float led_candidates(const float * z0, int32_t n_vocab, float temperature, int32_t k,
                     int32_t * cand, float * p0_cand);

// Steps 4-7: from q_raw[j*n + c] = p_j[cand[c]] for j in 0..d-1, the explore distribution P_{m*} over
// the candidates and m* (first on ties). s, p: n doubles each of scratch.
int32_t led_explore_distribution(const float * q_raw, int32_t d, int32_t n, float * explore, double * s, double * p);

// Step 9, exploit side: p_0 restricted to the candidates and renormalized.
void led_exploit_distribution(const float * p0_cand, int32_t n, float * exploit);

// Draw from probs[0..n) with a uniform u in [0, 1), or the argmax (first on ties) when greedy.
int32_t led_draw(const float * probs, int32_t n, float u, bool greedy);

// The probability that step 8's coin exploits: p_top1; 0 with exploit off; 1 when exploring is not
// allowed (think_only, past the end-of-thinking marker).
float led_p_exploit(float p_top1, bool exploit, bool explore_allowed);

// Buffers for led_step, sized for d depths and k candidates; allocated once, not per step.
typedef struct led_workspace {
    int32_t d, k;
    float  * q;   // [d*k] p_j at the candidates
    double * s;   // [k]
    double * p;   // [k]
} led_workspace;

led_workspace * led_workspace_new(int32_t d, int32_t k);
void            led_workspace_free(led_workspace * ws);

// One whole decoding step (docs/led.md steps 1-9) for one sequence.
typedef struct led_step_result {
    int32_t n_cand;          // min(k, V)
    int32_t * candidates;    // [k]   (caller's buffers, k entries each)
    float   * token_probs;   // [k]   the emitted-token distribution: p1*r_0 + (1-p1)*P_{m*}; greedy (T = 0):
                             //       p1 on argmax r_0 plus (1-p1) on argmax P_{m*}
    float   * explore_probs; // [k]   P_{m*}
    float   * exploit_probs; // [k]   r_0
    float   p_top1;          // p_0 of the top candidate, full vocabulary, temperature T
    float   p_exploit;       // the probability the coin exploits (led_p_exploit)
    int32_t depth;           // m*
    int32_t token;           // the sampled token id
    bool    explored;        // which branch the coin took
} led_step_result;

// logits: [d][V]; ws sized for at least (d, k). u_coin, u_sample: uniform draws in [0, 1).
// Returns 0, or -1 for invalid arguments (d < 1, k < 1, V < 1, a NULL buffer, ws too small).
int led_step(const float * logits, int32_t d, int32_t n_vocab, float temperature, int32_t k,
             bool exploit, bool explore_allowed, float u_coin, float u_sample,
             led_workspace * ws, led_step_result * out);

// DoLa (Chuang et al. 2023), as Hugging Face transformers' `dola_layers` generation implements it
// (docs/led.md, "DoLa"): among m premature rows, the one with the largest Jensen-Shannon divergence from
// the final row (first on ties); then out[v] = log p_final(v) - log p_premature(v) for the tokens whose
// final probability is at least DOLA_RELATIVE_TOP times the best one, -inf for the others.
// Returns the chosen premature row.
#define DOLA_RELATIVE_TOP 0.1
int32_t dola_contrast(const float * final_logits, const float * premature, int32_t m, int32_t n_vocab, float * out);

#ifdef __cplusplus
}
#endif
