// Sampling semantics (Hugging Face generate's warpers): greedy ties, temperature, top-k, top-p (also over a
// vocabulary wider than the sampler's first slice), min-p, repetition penalty, seeding, bad parameters.
// Frequencies are checked against the exact filtered distributions with generous bounds (20000 draws).
#include "peri.h"
#include "test.h"

#include <math.h>

static struct peri_sampler_params params(float temp, int top_k, float top_p, float min_p) {
    struct peri_sampler_params p = peri_sampler_default_params();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = 42;
    return p;
}

// Draws `draws` samples; counts[n] gets the histogram.
static void histogram(struct peri_sampler_params p, const float *logits, int n, int draws, int *counts) {
    peri_sampler *s;
    CHECK(peri_sampler_init(p, n, &s) == PERI_OK);
    memset(counts, 0, sizeof(int) * (size_t)n);
    for (int i = 0; i < draws; i++) {
        peri_token t = peri_sampler_sample(s, logits);
        if (t >= 0 && t < n) counts[t]++;
    }
    peri_sampler_free(s);
}

int main(void) {
    // probabilities 0.5, 0.3, 0.15, 0.05 as logits
    const float lg4[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    int c[4096];
    const int D = 20000;

    // greedy: argmax, first index on ties
    {
        float t[5] = {1, 3, 3, -2, 0};
        peri_sampler *s;
        CHECK(peri_sampler_init(params(0, 0, 1, 0), 5, &s) == PERI_OK);
        CHECK(peri_sampler_sample(s, t) == 1);
        peri_sampler_free(s);
    }
    // no filter: frequencies follow the softmax
    histogram(params(1, 0, 1, 0), lg4, 4, D, c);
    CHECKF(fabs(c[0] / (double)D - 0.5) < 0.02 && fabs(c[3] / (double)D - 0.05) < 0.01, "plain: %d %d %d %d", c[0], c[1], c[2], c[3]);
    // top-k 2: renormalised 0.625 / 0.375
    histogram(params(1, 2, 1, 0), lg4, 4, D, c);
    CHECKF(c[2] == 0 && c[3] == 0 && fabs(c[0] / (double)D - 0.625) < 0.02, "top-k: %d %d %d %d", c[0], c[1], c[2], c[3]);
    // top-p 0.6: token 1 stays (mass before it 0.5 < 0.6), token 2 goes (0.8)
    histogram(params(1, 0, 0.6f, 0), lg4, 4, D, c);
    CHECKF(c[2] == 0 && c[3] == 0 && fabs(c[0] / (double)D - 0.625) < 0.02, "top-p: %d %d %d %d", c[0], c[1], c[2], c[3]);
    // top-p 0.5 exactly: the mass before token 1 is 0.5, not < 0.5 -> only token 0
    histogram(params(1, 0, 0.5f, 0), lg4, 4, D, c);
    CHECKF(c[0] == D, "top-p boundary: %d %d", c[0], c[1]);
    // top-k then top-p on the renormalised top-k distribution: top-k 3 -> 0.526, 0.316, 0.158; top-p 0.8:
    // mass before token 2 is 0.842 >= 0.8 -> tokens 0 and 1
    histogram(params(1, 3, 0.8f, 0), lg4, 4, D, c);
    CHECKF(c[2] == 0 && c[3] == 0, "top-k + top-p: %d %d %d %d", c[0], c[1], c[2], c[3]);
    // min-p 0.4: keep p >= 0.2 -> tokens 0 and 1
    histogram(params(1, 0, 1, 0.4f), lg4, 4, D, c);
    CHECKF(c[2] == 0 && c[3] == 0 && c[1] > 0, "min-p: %d %d %d %d", c[0], c[1], c[2], c[3]);
    // temperature 0.5 squares the odds: 0.5^2 : 0.3^2 : ... renormalised
    histogram(params(0.5f, 0, 1, 0), lg4, 4, D, c);
    {
        double z = 0.25 + 0.09 + 0.0225 + 0.0025;
        CHECKF(fabs(c[0] / (double)D - 0.25 / z) < 0.02, "temperature: %d %d %d %d", c[0], c[1], c[2], c[3]);
    }
    // top-p over a wide, flat vocabulary: 4000 tokens, the first 3000 slightly likelier (logit 0 vs -1).
    // Mass of the head: 3000 / (3000 + 1000/e) = 0.891; top-p 0.85 keeps only head tokens, more than the
    // sampler's first slice of 256
    {
        static float wide[4000];
        for (int i = 0; i < 4000; i++) wide[i] = i < 3000 ? 0.0f : -1.0f;
        histogram(params(1, 0, 0.85f, 0), wide, 4000, D, c);
        int tail = 0, distinct = 0;
        for (int i = 0; i < 4000; i++) { tail += i >= 3000 ? c[i] : 0; distinct += c[i] > 0; }
        CHECKF(tail == 0 && distinct > 1000, "wide top-p: tail %d, distinct %d", tail, distinct);
    }
    // repetition penalty (HF): positive logits divided, negative multiplied, for tokens seen
    {
        float t[3] = {2.0f, 1.9f, -1.0f};
        struct peri_sampler_params p = params(0, 0, 1, 0);
        p.repeat_penalty = 1.5f;
        peri_sampler *s;
        CHECK(peri_sampler_init(p, 3, &s) == PERI_OK);
        CHECK(peri_sampler_sample(s, t) == 0);
        peri_sampler_accept(s, 0);               // 2.0 / 1.5 = 1.33 < 1.9
        CHECK(peri_sampler_sample(s, t) == 1);
        peri_sampler_reset(s);
        CHECK(peri_sampler_sample(s, t) == 0);
        peri_sampler_free(s);
    }
    // seeded: the same seed gives the same draws, after reset too
    {
        peri_sampler *a, *b;
        CHECK(peri_sampler_init(params(1, 0, 1, 0), 4, &a) == PERI_OK);
        CHECK(peri_sampler_init(params(1, 0, 1, 0), 4, &b) == PERI_OK);
        int same = 1;
        peri_token first[50];
        for (int i = 0; i < 50; i++) {
            first[i] = peri_sampler_sample(a, lg4);
            same &= first[i] == peri_sampler_sample(b, lg4);
        }
        peri_sampler_reset(a);
        for (int i = 0; i < 50; i++) same &= first[i] == peri_sampler_sample(a, lg4);
        CHECK(same);
        peri_sampler_free(a);
        peri_sampler_free(b);
    }
    // bad parameters
    peri_sampler *s;
    CHECK(peri_sampler_init(params(-1, 0, 1, 0), 4, &s) == PERI_E_ARG);
    CHECK(peri_sampler_init(params(1, -1, 1, 0), 4, &s) == PERI_E_ARG);
    CHECK(peri_sampler_init(params(1, 0, 1.5f, 0), 4, &s) == PERI_E_ARG);
    CHECK(peri_sampler_init(params(1, 0, 1, 0), 0, &s) == PERI_E_ARG);
    return TEST_END();
}
