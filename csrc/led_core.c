// LED math; see led_core.h and docs/led.md (steps cited inline).
#include "led_core.h"

#include <math.h>
#include <stdlib.h>

static inline float led_key(float x) {
    return isnan(x) ? -INFINITY : x;
}

led_row_norm led_row_normalize(const float * z, int32_t n_vocab, float temperature) {
    // step 1: divide by T (greedy keeps the raw logits); step 2: softmax over the FULL vocabulary,
    // max-shifted so that large logits cannot overflow
    led_row_norm norm = { temperature > 0.0f ? 1.0 / temperature : 1.0, -INFINITY, 0.0, n_vocab };
    int32_t n_posinf = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        const double x = led_key(z[i]) * norm.inv_t;
        if (x > norm.max) {
            norm.max = x;
        }
        n_posinf += x == INFINITY;
    }
    if (norm.max == INFINITY) {
        norm.sum = n_posinf;
    } else if (norm.max == -INFINITY) {
        norm.sum = n_vocab;  // nothing to prefer: uniform
    } else {
        // float exp of a double difference: ~1e-7 relative per term, and this loop runs over the whole
        // vocabulary on every step, where double exp would cost several times more
        double sum = 0.0;
        for (int32_t i = 0; i < n_vocab; i++) {
            sum += expf((float) (led_key(z[i]) * norm.inv_t - norm.max));
        }
        norm.sum = sum;
    }
    return norm;
}

float led_row_prob(const led_row_norm * norm, float z) {
    const double x = led_key(z) * norm->inv_t;
    if (norm->max == INFINITY) {
        return x == INFINITY ? (float) (1.0 / norm->sum) : 0.0f;
    }
    if (norm->max == -INFINITY) {
        return (float) (1.0 / norm->sum);
    }
    return (float) (exp(x - norm->max) / norm->sum);
}

float led_candidates(const float * z0, int32_t n_vocab, float temperature, int32_t k,
                     int32_t * cand, float * p0_cand) {
    // step 3: top-k by p_0, i.e. by z_0 (T > 0 keeps the order); ties: lower token id first, so a later
    // equal value never displaces an earlier one
    const int32_t n = k < n_vocab ? k : n_vocab;
    int32_t count = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        const float x = led_key(z0[i]);
        if (count == n && !(x > led_key(z0[cand[n - 1]]))) {
            continue;
        }
        int32_t pos = count < n ? count : n - 1;
        while (pos > 0 && led_key(z0[cand[pos - 1]]) < x) {
            cand[pos] = cand[pos - 1];
            pos--;
        }
        cand[pos] = i;
        count += count < n;
    }
    const led_row_norm norm = led_row_normalize(z0, n_vocab, temperature);
    for (int32_t c = 0; c < n; c++) {
        p0_cand[c] = led_row_prob(&norm, z0[cand[c]]);
    }
    return p0_cand[0];
}

int32_t led_explore_distribution(const float * q_raw, int32_t d, int32_t n, float * explore, double * s, double * p) {
    int32_t best = 0;
    double best_h = -INFINITY;
    for (int32_t c = 0; c < n; c++) {
        s[c] = 0.0;
    }
    for (int32_t m = 0; m < d; m++) {
        // steps 4-5: floor each depth's candidate probabilities, sum cumulatively from the final layer down
        double total = 0.0;
        for (int32_t c = 0; c < n; c++) {
            const float q = q_raw[(int64_t) m * n + c];
            s[c] += q > LED_Q_FLOOR ? q : LED_Q_FLOOR;
            total += s[c];
        }
        // steps 6-7: normalize over C, entropy; keep the first maximum
        double h = 0.0;
        for (int32_t c = 0; c < n; c++) {
            p[c] = s[c] / total;
            h -= p[c] * log(p[c] > LED_P_FLOOR ? p[c] : LED_P_FLOOR);
        }
        if (h > best_h) {
            best_h = h;
            best = m;
            for (int32_t c = 0; c < n; c++) {
                explore[c] = (float) p[c];
            }
        }
    }
    return best;
}

void led_exploit_distribution(const float * p0_cand, int32_t n, float * exploit) {
    double total = 0.0;
    for (int32_t c = 0; c < n; c++) {
        total += p0_cand[c];
    }
    for (int32_t c = 0; c < n; c++) {
        // all candidates at probability 0 (only when the row puts its mass elsewhere on +inf): uniform
        exploit[c] = total > 0.0 ? (float) (p0_cand[c] / total) : 1.0f / (float) n;
    }
}

int32_t led_draw(const float * probs, int32_t n, float u, bool greedy) {
    if (greedy) {
        int32_t best = 0;
        for (int32_t c = 1; c < n; c++) {
            if (probs[c] > probs[best]) {
                best = c;
            }
        }
        return best;
    }
    double cum = 0.0;
    int32_t last = 0;
    for (int32_t c = 0; c < n; c++) {
        if (probs[c] > 0.0f) {
            cum += probs[c];
            last = c;
            if ((double) u < cum) {
                return c;
            }
        }
    }
    return last;  // u beyond the rounded total
}

float led_p_exploit(float p_top1, bool exploit, bool explore_allowed) {
    // step 8: explore with probability 1 - p_top1; exploit off: always explore; think_only past the
    // end-of-thinking marker: never explore
    if (!explore_allowed) {
        return 1.0f;
    }
    return exploit ? p_top1 : 0.0f;
}

led_workspace * led_workspace_new(int32_t d, int32_t k) {
    if (d < 1 || k < 1) {
        return NULL;
    }
    led_workspace * ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        return NULL;
    }
    ws->d = d;
    ws->k = k;
    ws->q = malloc(sizeof(float) * (size_t) d * (size_t) k);
    ws->s = malloc(sizeof(double) * (size_t) k);
    ws->p = malloc(sizeof(double) * (size_t) k);
    if (ws->q == NULL || ws->s == NULL || ws->p == NULL) {
        led_workspace_free(ws);
        return NULL;
    }
    return ws;
}

void led_workspace_free(led_workspace * ws) {
    if (ws != NULL) {
        free(ws->q);
        free(ws->s);
        free(ws->p);
        free(ws);
    }
}

int led_step(const float * logits, int32_t d, int32_t n_vocab, float temperature, int32_t k,
             bool exploit, bool explore_allowed, float u_coin, float u_sample,
             led_workspace * ws, led_step_result * out) {
    if (logits == NULL || ws == NULL || out == NULL || d < 1 || k < 1 || n_vocab < 1 || d > ws->d || k > ws->k ||
        out->candidates == NULL || out->token_probs == NULL || out->explore_probs == NULL || out->exploit_probs == NULL) {
        return -1;
    }
    const int32_t n = k < n_vocab ? k : n_vocab;
    out->n_cand = n;
    out->p_top1 = led_candidates(logits, n_vocab, temperature, k, out->candidates, ws->q);
    for (int32_t j = 1; j < d; j++) {
        const float * zj = logits + (int64_t) j * n_vocab;
        const led_row_norm norm = led_row_normalize(zj, n_vocab, temperature);
        for (int32_t c = 0; c < n; c++) {
            ws->q[(int64_t) j * n + c] = led_row_prob(&norm, zj[out->candidates[c]]);
        }
    }
    out->depth = led_explore_distribution(ws->q, d, n, out->explore_probs, ws->s, ws->p);
    led_exploit_distribution(ws->q, n, out->exploit_probs);
    out->p_exploit = led_p_exploit(out->p_top1, exploit, explore_allowed);
    // the emitted-token distribution: each branch's, weighted by the coin; greedy (step 9) emits each
    // branch's argmax, so there the branches are point masses
    const bool greedy = temperature <= 0.0f;
    const int32_t top_exploit = led_draw(out->exploit_probs, n, 0.0f, true);
    const int32_t top_explore = led_draw(out->explore_probs, n, 0.0f, true);
    for (int32_t c = 0; c < n; c++) {
        const float r = greedy ? (float) (c == top_exploit) : out->exploit_probs[c];
        const float e = greedy ? (float) (c == top_explore) : out->explore_probs[c];
        out->token_probs[c] = out->p_exploit * r + (1.0f - out->p_exploit) * e;
    }
    // step 9: the coin first, then a draw from the chosen distribution (argmax when greedy)
    out->explored = u_coin < 1.0f - out->p_exploit;
    const int32_t c = led_draw(out->explored ? out->explore_probs : out->exploit_probs, n, u_sample, greedy);
    out->token = out->candidates[c];
    return 0;
}

// --- DoLa ---------------------------------------------------------------------------------------------

static inline double led_log_prob(const led_row_norm * norm, float z) {
    // log softmax at T = 1 for a finite row (DoLa works on raw logits)
    return led_key(z) - norm->max - log(norm->sum);
}

int32_t dola_contrast(const float * final_logits, const float * premature, int32_t m, int32_t n_vocab, float * out) {
    const led_row_norm nf = led_row_normalize(final_logits, n_vocab, 1.0f);
    int32_t best = 0;
    if (m > 1) {
        // Jensen-Shannon divergence of each premature row from the final row, with transformers' reduction:
        // 0.5 * (mean_v KL(avg || final) + mean_v KL(avg || premature)); a zero-mass term counts 0
        double best_js = -INFINITY;
        for (int32_t l = 0; l < m; l++) {
            const float * zl = premature + (int64_t) l * n_vocab;
            const led_row_norm nl = led_row_normalize(zl, n_vocab, 1.0f);
            double kl_f = 0.0, kl_l = 0.0;
            for (int32_t v = 0; v < n_vocab; v++) {
                const double lpf = led_log_prob(&nf, final_logits[v]);
                const double lpl = led_log_prob(&nl, zl[v]);
                const double avg = 0.5 * (exp(lpf) + exp(lpl));
                if (avg > 0.0) {
                    kl_f += avg * (log(avg) - lpf);
                    kl_l += avg * (log(avg) - lpl);
                }
            }
            const double js = 0.5 * (kl_f / n_vocab + kl_l / n_vocab);
            if (js > best_js) {
                best_js = js;
                best = l;
            }
        }
    }
    // relative-top filter on the final row, then the contrast
    const float * zb = premature + (int64_t) best * n_vocab;
    const led_row_norm nb = led_row_normalize(zb, n_vocab, 1.0f);
    const double threshold = (nf.max - nf.max - log(nf.sum)) + log(DOLA_RELATIVE_TOP);  // log p_max + log 0.1
    for (int32_t v = 0; v < n_vocab; v++) {
        const double lpf = led_log_prob(&nf, final_logits[v]);
        out[v] = lpf < threshold ? -INFINITY : (float) (lpf - led_log_prob(&nb, zb[v]));
    }
    return best;
}
