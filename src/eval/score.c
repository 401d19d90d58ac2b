// Log-likelihood scoring of continuations and perplexity over the public peri API (docs/eval.md).
#include "eval/eval.h"

#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct peri_eval_ctx {
    peri_model *m;
    peri_context *c;
    struct peri_eval_params p;
    int32_t n_ctx, n_batch, n_seq, V;
    bool pldr;
    peri_token *buf;        // scratch tokens [n_seq * n_ctx]
    int8_t *mask;           // [n_seq * n_ctx]
    int32_t *seq_ids;       // [n_seq]
};

struct peri_eval_params peri_eval_default_params(void) {
    return (struct peri_eval_params){.n_ctx = 0, .n_threads = 0, .n_parallel = 1, .one_forward = false, .add_bos = false,
                                      .kv_type = PERI_KV_DEFAULT};
}

// log softmax(row)[t] in double, and whether t is the (first) argmax.
static double token_logprob(const float *row, int32_t V, peri_token t, bool *is_argmax) {
    float mx = row[0];
    int32_t am = 0;
    for (int32_t i = 1; i < V; i++)
        if (row[i] > mx) mx = row[i], am = i;
    double s = 0;
    for (int32_t i = 0; i < V; i++) s += exp((double)row[i] - (double)mx);
    if (is_argmax) *is_argmax = am == t;
    return (double)row[t] - (double)mx - log(s);
}

static int make_context(peri_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_seq, int32_t n_threads,
                        int32_t kv_type, peri_context **out) {
    struct peri_context_params cp = peri_context_default_params();
    cp.kv_type = kv_type;
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_seq_max = n_seq;
    cp.n_threads = n_threads;
    cp.logits_all = true;
    return peri_context_init(m, cp, out);
}

int peri_eval_init(peri_model *model, const struct peri_eval_params *params, peri_eval_ctx **out) {
    if (!model || !out) return peri_fail(PERI_E_ARG, "peri_eval_init: model and out must not be NULL");
    *out = NULL;
    peri_eval_ctx *e = calloc(1, sizeof *e);
    if (!e) return peri_fail(PERI_E_NOMEM, "out of memory");
    e->m = model;
    e->p = params ? *params : peri_eval_default_params();
    e->pldr = !strcmp(peri_model_arch(model), "pldrllm");
    e->n_ctx = e->p.n_ctx > 0 ? e->p.n_ctx : peri_model_n_ctx_train(model);
    if (e->p.n_ctx <= 0 && e->n_ctx > 2048) e->n_ctx = 2048;
    if (e->n_ctx < 2) e->n_ctx = 2;
    e->n_seq = e->p.n_parallel > 1 ? e->p.n_parallel : 1;
    if (e->p.one_forward) e->n_seq = 1;
    // PLDR-LLM computes G at prefill from the whole prompt: a context (or a one-forward request) must go in one
    // call, so the batch is the whole window. PLM gives the same result in micro-batches.
    e->n_batch = (e->pldr || e->p.one_forward) ? e->n_ctx : (e->n_ctx < 256 ? e->n_ctx : 256);
    e->V = peri_model_n_vocab(model);
    e->buf = malloc(sizeof *e->buf * (size_t)e->n_seq * (size_t)e->n_ctx);
    e->mask = malloc((size_t)e->n_seq * (size_t)e->n_ctx);
    e->seq_ids = malloc(sizeof *e->seq_ids * (size_t)e->n_seq);
    if (!e->buf || !e->mask || !e->seq_ids) {
        peri_eval_free(e);
        return peri_fail(PERI_E_NOMEM, "out of memory");
    }
    int rc = make_context(model, e->n_ctx, e->n_batch, e->n_seq, e->p.n_threads, e->p.kv_type, &e->c);
    if (rc) {
        peri_eval_free(e);
        return rc;
    }
    *out = e;
    return PERI_OK;
}

void peri_eval_free(peri_eval_ctx *e) {
    if (!e) return;
    peri_context_free(e->c);
    free(e->buf);
    free(e->mask);
    free(e->seq_ids);
    free(e);
}

// Decodes tok[0..n) into sequence seq in calls of at most n_batch tokens. With rows != NULL, the log-prob of
// next[i] given the prefix up to tok[i] is added for i in [score_from, n) (next[i] < 0: not scored).
static int decode_seq(peri_eval_ctx *e, int32_t seq, const peri_token *tok, int32_t n, bool all,
                      const peri_token *next, int32_t score_from, double *ll, bool *greedy) {
    for (int32_t s = 0; s < n; s += e->n_batch) {
        int32_t k = n - s < e->n_batch ? n - s : e->n_batch;
        struct peri_batch b = {.n_seq = 1, .n_tokens = k, .seq_ids = &seq, .tokens = tok + s, .logits_all = all};
        int rc = peri_decode(e->c, &b);
        if (rc) return rc;
        if (!next) continue;
        const float *lg = peri_get_logits(e->c);
        for (int32_t i = 0; i < k; i++) {
            int32_t g = s + i;
            if (!all && g != n - 1) continue;
            if (g < score_from || next[g] < 0) continue;
            bool am;
            *ll += token_logprob(lg + (size_t)(all ? i : 0) * (size_t)e->V, e->V, next[g], &am);
            if (!am) *greedy = false;
        }
    }
    return PERI_OK;
}

static int check_tokens(const peri_eval_ctx *e, const peri_token *t, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (t[i] < 0 || t[i] >= e->V)
            return peri_fail(PERI_E_ARG, "token %d at %d is outside the vocabulary (0..%d)", t[i], i, e->V - 1);
    return PERI_OK;
}

// One request as a single forward of context + continuation (the harness's way).
static int score_one_forward(peri_eval_ctx *e, const peri_token *ctx, int32_t nc, const peri_token *cont, int32_t m,
                             double *ll, bool *greedy) {
    int32_t total = nc + m;
    int32_t cut = total > e->n_ctx + 1 ? total - (e->n_ctx + 1) : 0;   // inp = (ctx + cont)[-(max_length + 1):]
    int32_t n_in = total - cut - 1;                                        // the last token is only a target
    peri_token *in = e->buf, *next = malloc(sizeof *next * (size_t)(n_in + 1));
    if (!next) return peri_fail(PERI_E_NOMEM, "out of memory");
    for (int32_t i = 0; i < n_in; i++) {
        int32_t g = cut + i;
        in[i] = g < nc ? ctx[g] : cont[g - nc];
        int32_t gn = g + 1;
        next[i] = gn >= nc ? cont[gn - nc] : -1;
    }
    peri_seq_clear(e->c, 0);
    *ll = 0;
    *greedy = true;
    int rc = decode_seq(e, 0, in, n_in, true, next, 0, ll, greedy);
    free(next);
    return rc;
}

// Choices sharing one context, one at a time: the context once, then each continuation on top of its caches
// (peri_seq_truncate back to the context; PLDR-LLM keeps the context's G).
static int score_group_seq(peri_eval_ctx *e, const peri_token *ctx, int32_t nc, const peri_token *const *cont,
                           const int32_t *m, int k, double *ll, bool *greedy) {
    int32_t mmax = 0;
    for (int i = 0; i < k; i++) mmax = m[i] > mmax ? m[i] : mmax;
    int32_t cut = nc + mmax - 1 > e->n_ctx ? nc + mmax - 1 - e->n_ctx : 0;
    if (cut >= nc) return peri_fail(PERI_E_CONTEXT_FULL, "a continuation of %d tokens does not fit in n_ctx %d", mmax, e->n_ctx);
    ctx += cut;
    nc -= cut;
    peri_seq_clear(e->c, 0);
    int rc = decode_seq(e, 0, ctx, nc, false, NULL, 0, NULL, NULL);
    if (rc) return rc;
    float *last = malloc(sizeof *last * (size_t)e->V);
    peri_token *next = malloc(sizeof *next * (size_t)(mmax + 1));
    if (!last || !next) {
        free(last);
        free(next);
        return peri_fail(PERI_E_NOMEM, "out of memory");
    }
    memcpy(last, peri_get_logits(e->c), sizeof *last * (size_t)e->V);
    for (int i = 0; i < k && !rc; i++) {
        bool am;
        ll[i] = token_logprob(last, e->V, cont[i][0], &am);
        greedy[i] = am;
        if (m[i] < 2) continue;
        if ((rc = peri_seq_truncate(e->c, 0, nc))) break;
        for (int32_t j = 0; j + 1 < m[i]; j++) next[j] = cont[i][j + 1];
        rc = decode_seq(e, 0, cont[i], m[i] - 1, true, next, 0, &ll[i], &greedy[i]);
    }
    free(last);
    free(next);
    return rc;
}

// Choices sharing one context, side by side: every sequence gets the context in one rectangular batch, then all
// continuations go in one rectangular batch (padding masked at the end).
static int score_group_par(peri_eval_ctx *e, const peri_token *ctx, int32_t nc, const peri_token *const *cont,
                           const int32_t *m, int k, double *ll, bool *greedy) {
    int32_t mmax = 0;
    for (int i = 0; i < k; i++) mmax = m[i] > mmax ? m[i] : mmax;
    if (mmax - 1 > e->n_batch) return score_group_seq(e, ctx, nc, cont, m, k, ll, greedy);
    int32_t cut = nc + mmax - 1 > e->n_ctx ? nc + mmax - 1 - e->n_ctx : 0;
    if (cut >= nc) return peri_fail(PERI_E_CONTEXT_FULL, "a continuation of %d tokens does not fit in n_ctx %d", mmax, e->n_ctx);
    ctx += cut;
    nc -= cut;
    int rc = PERI_OK;
    for (int i = 0; i < k; i++) {
        e->seq_ids[i] = i;
        peri_seq_clear(e->c, i);
    }
    for (int32_t s = 0; s < nc && !rc; s += e->n_batch) {
        int32_t n = nc - s < e->n_batch ? nc - s : e->n_batch;
        for (int i = 0; i < k; i++) memcpy(e->buf + (size_t)i * n, ctx + s, sizeof *ctx * (size_t)n);
        struct peri_batch b = {.n_seq = k, .n_tokens = n, .seq_ids = e->seq_ids, .tokens = e->buf};
        rc = peri_decode(e->c, &b);
    }
    if (rc) return rc;
    const float *lg = peri_get_logits(e->c);
    for (int i = 0; i < k; i++) {
        bool am;
        ll[i] = token_logprob(lg + (size_t)i * (size_t)e->V, e->V, cont[i][0], &am);
        greedy[i] = am;
    }
    // continuations with more than one token
    int32_t nt = mmax - 1, rows = 0;
    int32_t idx[64];
    if (nt <= 0) return PERI_OK;
    for (int i = 0; i < k; i++) {
        if (m[i] < 2) continue;
        idx[rows] = i;
        e->seq_ids[rows] = i;
        for (int32_t j = 0; j < nt; j++) {
            bool real = j < m[i] - 1;
            e->buf[(size_t)rows * nt + j] = real ? cont[i][j] : 0;
            e->mask[(size_t)rows * nt + j] = real ? 1 : 0;
        }
        rows++;
    }
    struct peri_batch b = {.n_seq = rows, .n_tokens = nt, .seq_ids = e->seq_ids, .tokens = e->buf, .mask = e->mask,
                           .logits_all = true};
    if ((rc = peri_decode(e->c, &b))) return rc;
    lg = peri_get_logits(e->c);
    for (int r = 0; r < rows; r++) {
        int i = idx[r];
        for (int32_t j = 0; j + 1 < m[i]; j++) {
            bool am;
            ll[i] += token_logprob(lg + ((size_t)r * nt + j) * (size_t)e->V, e->V, cont[i][j + 1], &am);
            if (!am) greedy[i] = false;
        }
    }
    return PERI_OK;
}

static bool same_tokens(const peri_token *a, int32_t na, const peri_token *b, int32_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, sizeof *a * (size_t)na));
}

int peri_eval_loglik_tokens(peri_eval_ctx *e, const peri_token *const *ctx, const int32_t *n_ctx,
                            const peri_token *const *cont, const int32_t *n_cont, int n, double *ll, bool *greedy) {
    if (!e || (n > 0 && (!ctx || !n_ctx || !cont || !n_cont || !ll)))
        return peri_fail(PERI_E_ARG, "peri_eval_loglik_tokens: NULL argument");
    bool *g = greedy ? greedy : malloc(sizeof *g * (size_t)(n > 0 ? n : 1));
    if (!g) return peri_fail(PERI_E_NOMEM, "out of memory");
    int rc = PERI_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (n_ctx[i] < 1 || n_cont[i] < 1)
            rc = peri_fail(PERI_E_ARG, "request %d: context and continuation need at least one token each", i);
        else if (!(rc = check_tokens(e, ctx[i], n_ctx[i]))) rc = check_tokens(e, cont[i], n_cont[i]);
    }
    for (int i = 0; i < n && !rc;) {
        if (e->p.one_forward) {
            rc = score_one_forward(e, ctx[i], n_ctx[i], cont[i], n_cont[i], &ll[i], &g[i]);
            i++;
            continue;
        }
        int k = 1;
        while (i + k < n && k < 64 && same_tokens(ctx[i], n_ctx[i], ctx[i + k], n_ctx[i + k])) k++;
        if (e->n_seq > 1) {
            for (int s = 0; s < k && !rc; s += e->n_seq) {
                int kk = k - s < e->n_seq ? k - s : e->n_seq;
                rc = score_group_par(e, ctx[i], n_ctx[i], cont + i + s, n_cont + i + s, kk, ll + i + s, g + i + s);
            }
        } else {
            rc = score_group_seq(e, ctx[i], n_ctx[i], cont + i, n_cont + i, k, ll + i, g + i);
        }
        i += k;
    }
    if (!greedy) free(g);
    return rc;
}

// No tokenizer here makes more tokens than bytes plus a dummy prefix, so one call with room for len + 16 ids
// either succeeds or fails with a real error.
static int encode(const peri_tokenizer *tok, const char *s, size_t len, peri_token **out, int32_t *n) {
    size_t cap = len + 16;
    *out = malloc(sizeof **out * cap);
    if (!*out) return peri_fail(PERI_E_NOMEM, "out of memory");
    int64_t got = peri_tokenize(tok, s, len, *out, cap, false);
    if (got < 0) {
        free(*out);
        *out = NULL;
        // a status sets the last error; a size (more ids than the bound) clears it
        if (peri_last_error()[0]) return got >= PERI_E_ABORTED ? (int)got : PERI_E_FORMAT;
        return peri_fail(PERI_E_FORMAT, "the tokenizer produced more than %zu ids for %zu bytes", cap, len);
    }
    *n = (int32_t)got;
    return PERI_OK;
}

static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

int peri_eval_loglik(peri_eval_ctx *e, const char *const *ctx, const char *const *cont, int n, double *ll,
                     bool *greedy, int32_t *n_cont_tokens) {
    if (!e || (n > 0 && (!ctx || !cont || !ll))) return peri_fail(PERI_E_ARG, "peri_eval_loglik: NULL argument");
    const peri_tokenizer *tok = peri_model_tokenizer(e->m);
    if (!tok) return peri_fail(PERI_E_ARG, "the model carries no tokenizer; text cannot be scored");
    peri_token **ct = calloc((size_t)n + 1, sizeof *ct), **kt = calloc((size_t)n + 1, sizeof *kt);
    int32_t *nct = calloc((size_t)n + 1, sizeof *nct), *nkt = calloc((size_t)n + 1, sizeof *nkt);
    int rc = (!ct || !kt || !nct || !nkt) ? peri_fail(PERI_E_NOMEM, "out of memory") : PERI_OK;
    peri_token bos = peri_model_bos(e->m), eos = peri_model_eos(e->m);
    for (int i = 0; i < n && !rc; i++) {
        // The harness moves the context's trailing whitespace to the continuation.
        size_t lc = strlen(ctx[i]), lk = strlen(cont[i]), keep = lc;
        while (keep > 0 && is_space(ctx[i][keep - 1])) keep--;
        char *whole = malloc(lc + lk + 1);
        if (!whole) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); break; }
        memcpy(whole, ctx[i], lc);
        memcpy(whole + lc, cont[i], lk + 1);
        peri_token *w = NULL, *c = NULL;
        int32_t nw = 0, ncx = 0;
        int extra = e->p.add_bos && bos >= 0 ? 1 : 0;
        if (keep == 0) {
            // empty context: the harness conditions on the end-of-text token
            rc = encode(tok, whole, lc + lk, &w, &nw);
            if (!rc) {
                ct[i] = malloc(sizeof **ct * 2);
                if (!ct[i]) rc = peri_fail(PERI_E_NOMEM, "out of memory");
                else {
                    ct[i][0] = extra ? bos : (eos >= 0 ? eos : 0);
                    nct[i] = 1;
                    kt[i] = w, nkt[i] = nw, w = NULL;
                }
            }
        } else {
            rc = encode(tok, whole, lc + lk, &w, &nw);
            if (!rc) rc = encode(tok, whole, keep, &c, &ncx);
            if (!rc) {
                ct[i] = malloc(sizeof **ct * (size_t)(ncx + extra + 1));
                kt[i] = malloc(sizeof **kt * (size_t)(nw > ncx ? nw - ncx : 0) + sizeof **kt);
                if (!ct[i] || !kt[i]) rc = peri_fail(PERI_E_NOMEM, "out of memory");
                else {
                    if (extra) ct[i][0] = bos;
                    memcpy(ct[i] + extra, c, sizeof *c * (size_t)ncx);
                    nct[i] = ncx + extra;
                    nkt[i] = nw > ncx ? nw - ncx : 0;
                    memcpy(kt[i], w + ncx, sizeof *w * (size_t)nkt[i]);
                    if (nkt[i] == 0) rc = peri_fail(PERI_E_ARG, "request %d: the continuation \"%s\" has no tokens", i, cont[i]);
                }
            }
        }
        free(w);
        free(c);
        free(whole);
        if (n_cont_tokens) n_cont_tokens[i] = nkt[i];
    }
    if (!rc)
        rc = peri_eval_loglik_tokens(e, (const peri_token *const *)ct, nct, (const peri_token *const *)kt, nkt, n, ll, greedy);
    for (int i = 0; i < n && ct && kt; i++) {
        free(ct[i]);
        free(kt[i]);
    }
    free(ct);
    free(kt);
    free(nct);
    free(nkt);
    return rc;
}

// ---- perplexity ----------------------------------------------------------------------------------------------

int peri_perplexity(peri_model *model, const peri_token *tokens, int64_t n, const struct peri_ppl_params *params,
                    struct peri_ppl_result *res) {
    if (!model || !tokens || !params || !res) return peri_fail(PERI_E_ARG, "peri_perplexity: NULL argument");
    memset(res, 0, sizeof *res);
    res->n_tokens = n;
    int32_t n_ctx = params->n_ctx > 0 ? params->n_ctx : peri_model_n_ctx_train(model);
    int32_t V = peri_model_n_vocab(model);
    bool pldr = !strcmp(peri_model_arch(model), "pldrllm");
    if (n_ctx < 2) return peri_fail(PERI_E_ARG, "perplexity: the context must hold at least 2 tokens (got %d)", n_ctx);
    if (params->stride < 0 || params->stride > n_ctx)
        return peri_fail(PERI_E_ARG, "perplexity: --stride %d must be between 1 and the context %d", params->stride, n_ctx);
    if (n < (params->stride ? 2 : n_ctx))
        return peri_fail(PERI_E_ARG, "perplexity: the text has %lld tokens; %s", (long long)n,
                         params->stride ? "at least 2 are needed" : "one chunk of --ctx tokens is needed at least");
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return peri_fail(PERI_E_ARG, "perplexity: token %d at %lld is outside the vocabulary", tokens[i], (long long)i);
    // PLDR-LLM's G comes from the whole prefill: a window must be one call.
    int32_t n_batch = pldr ? n_ctx : (n_ctx < 512 ? n_ctx : 512);
    peri_context *c;
    int rc = make_context(model, n_ctx, n_batch, 1, params->n_threads, params->kv_type, &c);
    if (rc) return rc;
    peri_token *win = malloc(sizeof *win * (size_t)n_ctx);
    if (!win) {
        peri_context_free(c);
        return peri_fail(PERI_E_NOMEM, "out of memory");
    }
    double nll = 0, nll2 = 0;
    int64_t count = 0;
    peri_token bos = peri_model_bos(model);
    // Windows: [begin, end) evaluated; positions q in [score_lo, end) scored from row q-1-begin.
    int64_t n_win = params->stride ? 0 : n / n_ctx, done = 0, prev_end = 0;
    if (params->stride) {
        for (int64_t b = 0;; b += params->stride) {
            n_win++;
            if (b + n_ctx >= n) break;
        }
    }
    for (int64_t w = 0; w < n_win && !rc; w++) {
        int64_t begin, end, lo;
        if (params->stride) {
            begin = w * params->stride;
            end = begin + n_ctx < n ? begin + n_ctx : n;
            lo = prev_end > begin + 1 ? prev_end : begin + 1;   // trg_len = end - prev_end; the window's first token is never a target
            prev_end = end;
        } else {
            begin = w * n_ctx;
            end = begin + n_ctx;
            lo = begin + n_ctx / 2 + 1;   // llama-perplexity scores the second half: rows first..n_ctx-2
        }
        int32_t len = (int32_t)(end - begin);
        memcpy(win, tokens + begin, sizeof *win * (size_t)len);
        if (params->add_bos && bos >= 0) win[0] = bos;
        peri_seq_clear(c, 0);
        int32_t seq = 0;
        for (int32_t s = 0; s < len && !rc; s += n_batch) {
            int32_t k = len - s < n_batch ? len - s : n_batch;
            struct peri_batch b = {.n_seq = 1, .n_tokens = k, .seq_ids = &seq, .tokens = win + s, .logits_all = true};
            if ((rc = peri_decode(c, &b))) break;
            const float *lg = peri_get_logits(c);
            for (int32_t i = 0; i < k; i++) {
                int64_t q = begin + s + i + 1;   // the token this row predicts
                if (q < lo || q >= end) continue;
                double v = -token_logprob(lg + (size_t)i * (size_t)V, V, tokens[q], NULL);
                nll += v;
                nll2 += v * v;
                count++;
            }
        }
        done++;
        if (params->progress) params->progress(done, n_win, params->progress_user);
    }
    free(win);
    peri_context_free(c);
    if (rc) return rc;
    if (count == 0) return peri_fail(PERI_E_ARG, "perplexity: no token was scored (text too short for the window)");
    nll /= (double)count;
    nll2 /= (double)count;
    res->n_scored = count;
    res->nll = nll;
    res->ppl = exp(nll);
    double var = nll2 - nll * nll;
    res->ppl_stderr = (var > 0 && count > 1) ? sqrt(var / (double)(count - 1)) * res->ppl : 0;
    return PERI_OK;
}
