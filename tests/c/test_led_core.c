// Stand-alone checks of csrc/led_core.c, built by tests/test_sanitizers.py with AddressSanitizer and
// UBSan: every code path over random, extreme, tied and non-finite logits, with invariants checked.
#include "led_core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int failures = 0;

#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static uint64_t rng_state = 88172645463325252ULL;
static double urand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double) (rng_state >> 11) * 0x1.0p-53;
}

static void fill(float * z, int64_t n, int kind) {
    for (int64_t i = 0; i < n; i++) {
        const double u = urand();
        switch (kind) {
            case 0: z[i] = (float) ((u - 0.5) * 20.0); break;
            case 1: z[i] = (float) (int) (u * 4.0); break;                       // ties
            case 2: z[i] = u < 0.05 ? NAN : u < 0.1 ? -INFINITY : u < 0.12 ? INFINITY : (float) ((u - 0.5) * 1e4); break;
            default: z[i] = -INFINITY; break;                                    // nothing finite
        }
    }
}

int main(void) {
    const int32_t vocabs[] = { 1, 2, 5, 64, 3000 };
    for (int iter = 0; iter < 400; iter++) {
        const int32_t V = vocabs[iter % 5];
        const int32_t d = 1 + (int32_t) (urand() * 8);
        const int32_t k = 1 + (int32_t) (urand() * 40);
        const float T = (float) ((int) (urand() * 5)) * 0.5f;  // 0 (greedy), 0.5, ..., 2
        const int kind = (int) (urand() * 4);
        float * z = malloc(sizeof(float) * (size_t) d * (size_t) V);
        fill(z, (int64_t) d * V, kind);

        led_workspace * ws = led_workspace_new(d, k);
        int32_t * cand = malloc(sizeof(int32_t) * (size_t) k);
        float * probs = malloc(sizeof(float) * 3 * (size_t) k);
        led_step_result r = { 0, cand, probs, probs + k, probs + 2 * k, 0, 0, 0, 0, false };
        const int rc = led_step(z, d, V, T, k, urand() < 0.7, urand() < 0.8, (float) urand(), (float) urand(), ws, &r);
        CHECK(rc == 0, "led_step failed: d=%d V=%d k=%d", d, V, k);
        CHECK(r.n_cand == (k < V ? k : V), "n_cand %d", r.n_cand);
        double sum = 0.0, sum_e = 0.0, sum_x = 0.0;
        bool token_in = false;
        for (int32_t c = 0; c < r.n_cand; c++) {
            CHECK(cand[c] >= 0 && cand[c] < V, "candidate out of range");
            CHECK(isfinite(r.token_probs[c]) && r.token_probs[c] >= 0, "bad probability");
            sum += r.token_probs[c];
            sum_e += r.explore_probs[c];
            sum_x += r.exploit_probs[c];
            token_in |= cand[c] == r.token;
        }
        CHECK(fabs(sum - 1.0) < 1e-4 && fabs(sum_e - 1.0) < 1e-4 && fabs(sum_x - 1.0) < 1e-4,
              "distributions must sum to 1: %g %g %g (d=%d V=%d k=%d kind=%d)", sum, sum_e, sum_x, d, V, k, kind);
        CHECK(token_in, "sampled token is not a candidate");
        CHECK(r.depth >= 0 && r.depth < d, "depth out of range");
        CHECK(r.p_top1 >= 0.0f && r.p_top1 <= 1.0f, "p_top1 out of range");
        led_workspace_free(ws);
        free(cand);
        free(probs);
        free(z);
    }
    // invalid arguments are refused, not crashed on
    led_step_result none = { 0 };
    CHECK(led_step(NULL, 1, 1, 1.0f, 1, true, true, 0.5f, 0.5f, NULL, &none) == -1, "NULL logits accepted");
    CHECK(led_workspace_new(0, 3) == NULL, "d = 0 accepted");
    printf("%d passed, %d failed\n", failures ? 0 : 1, failures ? 1 : 0);
    return failures != 0;
}
