// Token sampling with Hugging Face generate's semantics: penalties, temperature, then top-k, top-p and
// min-p filters, then a draw from the softmax. temperature 0 is greedy (argmax, first index on ties).
#include "core/error.h"
#include "peri.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct peri_sampler {
    struct peri_sampler_params p;
    int32_t n_vocab;
    uint64_t rng[4];
    float *work;          // [n_vocab] probabilities
    int32_t *idx;         // [n_vocab] candidate ids
    int32_t *counts;      // [n_vocab] how often each token was accepted (penalties)
    float *probs, *heap;  // [n_vocab] scratch, allocated once
};

struct peri_sampler_params peri_sampler_default_params(void) {
    return (struct peri_sampler_params){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.0f,
                                        .repeat_penalty = 1.0f, .presence_penalty = 0.0f,
                                        .frequency_penalty = 0.0f, .seed = 0};
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t next64(uint64_t s[4]) {
    uint64_t r = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl64(s[3], 45);
    return r;
}

static void seed_rng(uint64_t s[4], uint64_t seed) {
    uint64_t z = seed;
    for (int i = 0; i < 4; i++) {
        z += 0x9e3779b97f4a7c15ull;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        s[i] = x ^ (x >> 31);
    }
}

int peri_sampler_init(struct peri_sampler_params params, int32_t n_vocab, peri_sampler **out) {
    *out = NULL;
    if (n_vocab <= 0) return peri_fail(PERI_E_ARG, "sampler: vocabulary size must be positive");
    if (!(params.temperature >= 0) || !(params.top_p >= 0 && params.top_p <= 1) || params.top_k < 0 ||
        !(params.min_p >= 0 && params.min_p <= 1) || !(params.repeat_penalty > 0))
        return peri_fail(PERI_E_ARG, "sampler: temperature >= 0, top_k >= 0, 0 <= top_p <= 1, 0 <= min_p <= 1 and "
                         "repeat_penalty > 0 are required");
    peri_sampler *s = calloc(1, sizeof *s);
    if (!s) return peri_fail(PERI_E_NOMEM, "out of memory");
    s->p = params;
    s->n_vocab = n_vocab;
    s->work = malloc(sizeof(float) * (size_t)n_vocab);
    s->idx = malloc(sizeof(int32_t) * (size_t)n_vocab);
    s->counts = calloc((size_t)n_vocab, sizeof(int32_t));
    s->probs = malloc(sizeof(float) * (size_t)n_vocab);
    s->heap = malloc(sizeof(float) * (size_t)n_vocab);
    if (!s->work || !s->idx || !s->counts || !s->probs || !s->heap) { peri_sampler_free(s); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    seed_rng(s->rng, params.seed);
    *out = s;
    return PERI_OK;
}

void peri_sampler_free(peri_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->idx);
    free(s->counts);
    free(s->probs);
    free(s->heap);
    free(s);
}

void peri_sampler_reset(peri_sampler *s) {
    memset(s->counts, 0, sizeof(int32_t) * (size_t)s->n_vocab);
    seed_rng(s->rng, s->p.seed);
}

void peri_sampler_accept(peri_sampler *s, peri_token tok) {
    if (tok >= 0 && tok < s->n_vocab) s->counts[tok]++;
}

static _Thread_local const float *g_sort_keys;
static int cmp_desc(const void *a, const void *b) {
    float x = g_sort_keys[*(const int32_t *)a], y = g_sort_keys[*(const int32_t *)b];
    if (x > y) return -1;
    if (x < y) return 1;
    return *(const int32_t *)a - *(const int32_t *)b; // stable: lower id first
}

// Moves the k largest (by key) to the front of idx, sorted descending; returns how many are kept.
static int select_top(const float *key, int32_t *idx, int n, int k, float *tmp) {
    if (k >= n) {
        g_sort_keys = key;
        qsort(idx, (size_t)n, sizeof *idx, cmp_desc);
        return n;
    }
    // the k-th largest value via a min-heap of size k, then sort only the survivors
    int hn = 0;
    for (int i = 0; i < n; i++) {
        float v = key[idx[i]];
        if (hn < k) {
            int j = hn++;
            tmp[j] = v;
            while (j > 0 && tmp[(j - 1) / 2] > tmp[j]) { float t = tmp[j]; tmp[j] = tmp[(j - 1) / 2]; tmp[(j - 1) / 2] = t; j = (j - 1) / 2; }
        } else if (v > tmp[0]) {
            tmp[0] = v;
            int j = 0;
            for (;;) {
                int l = 2 * j + 1, r = l + 1, m = j;
                if (l < k && tmp[l] < tmp[m]) m = l;
                if (r < k && tmp[r] < tmp[m]) m = r;
                if (m == j) break;
                float t = tmp[j]; tmp[j] = tmp[m]; tmp[m] = t; j = m;
            }
        }
    }
    float thr = tmp[0];
    int m = 0;
    for (int i = 0; i < n; i++) if (key[idx[i]] >= thr) idx[m++] = idx[i];
    g_sort_keys = key;
    qsort(idx, (size_t)m, sizeof *idx, cmp_desc);
    return m < k ? m : k; // ties at the threshold: HF keeps all >= k-th value; we keep the first k by id
}

// Probabilities of the candidates idx[0..m) (sorted by logit, descending), normalised over them.
static void softmax_candidates(const float *w, const int32_t *idx, int m, float *pr) {
    float mx = w[idx[0]];
    double sum = 0;
    for (int i = 0; i < m; i++) { pr[i] = expf(w[idx[i]] - mx); sum += pr[i]; }
    for (int i = 0; i < m; i++) pr[i] = (float)(pr[i] / sum);
}

// top-p: how many of the descending probabilities pr[0..m) to keep. HF removes tokens whose ascending
// cumulative mass is <= 1 - top_p, i.e. keeps token i while the mass before it is < top_p (at least one).
static int top_p_prefix(const float *pr, int m, float top_p) {
    double cum = 0;
    for (int i = 0; i < m; i++) {
        cum += pr[i];
        if (cum >= top_p) return i + 1;
    }
    return m;
}

peri_token peri_sampler_sample(peri_sampler *s, const float *logits) {
    const int n = s->n_vocab;
    float *w = s->work;
    memcpy(w, logits, sizeof(float) * (size_t)n);
    // penalties (HF repetition_penalty: divide positive logits, multiply negative ones; OpenAI presence/frequency)
    for (int i = 0; i < n; i++) {
        if (!s->counts[i]) continue;
        if (s->p.repeat_penalty != 1.0f) w[i] = w[i] > 0 ? w[i] / s->p.repeat_penalty : w[i] * s->p.repeat_penalty;
        w[i] -= s->p.presence_penalty + s->p.frequency_penalty * (float)s->counts[i];
    }
    if (s->p.temperature <= 0) {
        int best = 0;
        for (int i = 1; i < n; i++) if (w[i] > w[best]) best = i;
        return best;
    }
    for (int i = 0; i < n; i++) w[i] /= s->p.temperature;
    float *pr = s->probs;
    int m;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        // top-k, then top-p on the distribution renormalised over those k (HF's warper order)
        for (int i = 0; i < n; i++) s->idx[i] = i;
        m = select_top(w, s->idx, n, s->p.top_k, s->heap);
        softmax_candidates(w, s->idx, m, pr);
        if (s->p.top_p < 1.0f) m = top_p_prefix(pr, m, s->p.top_p);
    } else if (s->p.top_p < 1.0f) {
        // top-p alone: only the head of the distribution matters, so sort a growing top slice (probabilities
        // normalised over the whole vocabulary) until its mass reaches top_p, instead of sorting everything
        float mx = w[0];
        for (int i = 1; i < n; i++) mx = w[i] > mx ? w[i] : mx;
        double sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)w[i] - mx);
        for (int k = n < 256 ? n : 256;; k = k * 8 < n ? k * 8 : n) {
            for (int i = 0; i < n; i++) s->idx[i] = i;
            m = select_top(w, s->idx, n, k, s->heap);
            double mass = 0;
            for (int i = 0; i < m; i++) mass += (pr[i] = (float)(exp((double)w[s->idx[i]] - mx) / sum));
            if (mass >= s->p.top_p || k == n) break;
        }
        m = top_p_prefix(pr, m, s->p.top_p);
    } else {
        // neither filter: every token is a candidate (sorted, so min-p can cut the tail)
        for (int i = 0; i < n; i++) s->idx[i] = i;
        m = select_top(w, s->idx, n, n, s->heap);
        softmax_candidates(w, s->idx, m, pr);
    }
    if (s->p.min_p > 0) {
        float lim = pr[0] * s->p.min_p;
        int keep = 1;
        while (keep < m && pr[keep] >= lim) keep++;
        m = keep;
    }
    double tot = 0;
    for (int i = 0; i < m; i++) tot += pr[i];
    double u = ((next64(s->rng) >> 11) * (1.0 / 9007199254740992.0)) * tot, acc = 0;
    peri_token out = s->idx[m - 1];
    for (int i = 0; i < m; i++) {
        acc += pr[i];
        if (u < acc) { out = s->idx[i]; break; }
    }
    return out;
}
