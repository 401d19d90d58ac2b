// The trainer object: parameter table and storage, loading and saving in Hugging Face layout, the
// threaded linear layers, the DAG matrix exponential, AdamW, clipping and LR schedules.
#include "train/train.h"

#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/weights.h"
#include "kernels/ops.h"
#include "tensor/repack.h"
#include "tensor/types.h"
#include "train/tops.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TR_MAX_PARAMS 100000

int peri_tr_add_param(peri_trainer *t, const char *name, int n_dims, const int64_t *shape) {
    if (t->n_params >= TR_MAX_PARAMS) return peri_fail(PERI_E_NOMEM, "too many parameters (over %d)", TR_MAX_PARAMS);
    if (t->n_params % 64 == 0) {
        peri_tparam *np = realloc(t->params, sizeof(*np) * (size_t)(t->n_params + 64));
        if (!np) return peri_fail(PERI_E_NOMEM, "out of memory");
        t->params = np;
    }
    peri_tparam *p = &t->params[t->n_params];
    memset(p, 0, sizeof(*p));
    p->name = strdup(name);
    if (!p->name) return peri_fail(PERI_E_NOMEM, "out of memory");
    p->n_dims = n_dims;
    size_t n = 1;
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] <= 0 || shape[i] > (1 << 30)) return peri_fail(PERI_E_FORMAT, "%s: bad dimension %lld", name, (long long)shape[i]);
        p->shape[i] = shape[i];
        n *= (size_t)shape[i];
        if (n > ((size_t)1 << 34)) return peri_fail(PERI_E_NOMEM, "%s: too large to train", name);
    }
    p->n = n;
    p->off = t->n_total;
    p->no_decay = n_dims == 1;
    t->n_total += n;
    if (t->n_total > ((size_t)1 << 34)) return peri_fail(PERI_E_NOMEM, "model too large to train");
    return t->n_params++;
}

const peri_tparam *peri_trainer_find(const peri_trainer *t, const char *name) {
    for (int i = 0; i < t->n_params; i++)
        if (!strcmp(t->params[i].name, name)) return &t->params[i];
    return NULL;
}

void peri_trainer_free(peri_trainer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_params; i++) free(t->params[i].name);
    free(t->params);
    free(t->w);
    free(t->g);
    free(t->cos_tab);
    free(t->sin_tab);
    free(t->config_text);
    if (t->pool) peri_pool_free(t->pool);
    free(t);
}

static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long n = ftell(f);
    if (n < 0 || n > (1 << 24)) { fclose(f); return NULL; }
    rewind(f);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    fclose(f);
    if (s) { s[n] = 0; *len = (size_t)n; }
    return s;
}

int peri_trainer_load(const char *path, int n_threads, peri_trainer **out) {
    *out = NULL;
    peri_weights w;
    int rc = peri_weights_open(&w, path, true);
    if (rc) return rc;
    if (!w.config || !w.dir) {
        peri_weights_close(&w);
        return peri_fail(PERI_E_UNSUPPORTED, "%s: training needs a Hugging Face folder (config.json + "
                         "model.safetensors); convert a GGUF first", path);
    }
    peri_trainer *t = calloc(1, sizeof(*t));
    if (!t) { peri_weights_close(&w); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s/config.json", w.dir);
    t->config_text = read_text(cpath, &t->config_len);
    if (!t->config_text) { rc = peri_fail(PERI_E_IO, "%s: cannot read", cpath); goto fail; }
    const char *mt = NULL;
    if (!json_get_str(w.config, "model_type", "", &mt)) { rc = PERI_E_FORMAT; goto fail; }
    t->head_w = t->head_b = -1;
    if ((rc = peri_tr_head_config(t, w.config)) < 0) goto fail;
    if (!strcmp(mt, "pldrllm")) { t->arch = PERI_TR_PLDR; rc = peri_tr_pldr_params(t, w.config); }
    else if (!strcmp(mt, "plm")) { t->arch = PERI_TR_PLM; rc = peri_tr_plm_params(t, w.config); }
    else rc = peri_fail(PERI_E_UNSUPPORTED, "%s: model_type \"%s\" cannot be trained (pldrllm or plm)", cpath, mt);
    if (rc < 0) goto fail;
    t->w = malloc(sizeof(float) * t->n_total);
    t->g = calloc(t->n_total, sizeof(float));
    if (!t->w || !t->g) { rc = peri_fail(PERI_E_NOMEM, "out of memory for %zu parameters", t->n_total); goto fail; }
    for (int i = 0; i < t->n_params; i++) {
        const peri_tparam *p = &t->params[i];
        const peri_tensor *x = peri_weights_find(&w, p->name);
        if (!x) { rc = peri_fail(PERI_E_FORMAT, "%s: tensor %s is missing", path, p->name); goto fail; }
        bool same = x->n_dims == p->n_dims;
        for (int k = 0; same && k < p->n_dims; k++) same = x->shape[k] == p->shape[k];
        if (!same) { rc = peri_fail(PERI_E_FORMAT, "%s: tensor %s has the wrong shape for the config", path, p->name); goto fail; }
        const struct peri_type_traits *tr = peri_type_traits(x->type);
        if (!tr || !tr->to_float || tr->blck_size != 1) {
            rc = peri_fail(PERI_E_UNSUPPORTED, "%s: tensor %s is %s; training needs F32, F16 or BF16 weights", path,
                           p->name, peri_type_name(x->type));
            goto fail;
        }
        tr->to_float(x->data, t->w + p->off, (int64_t)p->n);
    }
    peri_weights_close(&w);
    // RoPE table as the inference code builds it, so both use the same float32 cos/sin
    int n_rot = (int)(t->arch == PERI_TR_PLDR ? t->d : t->rope);
    t->cos_tab = malloc(sizeof(float) * (size_t)t->n_ctx * (size_t)(n_rot / 2));
    t->sin_tab = malloc(sizeof(float) * (size_t)t->n_ctx * (size_t)(n_rot / 2));
    if (!t->cos_tab || !t->sin_tab) { peri_trainer_free(t); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    peri_rope_table(t->cos_tab, t->sin_tab, t->n_ctx, n_rot, t->theta);
    if (n_threads != 1) {
        t->pool = peri_pool_new(n_threads);
        if (!t->pool) { peri_trainer_free(t); return PERI_E_NOMEM; }
    }
    *out = t;
    return PERI_OK;
fail:
    peri_weights_close(&w);
    peri_trainer_free(t);
    return rc;
}

void peri_trainer_zero_grad(peri_trainer *t) { memset(t->g, 0, sizeof(float) * t->n_total); }

void peri_tr_labels_hf(int32_t *labels, const int32_t *ids, int B, int T) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) labels[(size_t)b * T + i] = i + 1 < T ? ids[(size_t)b * T + i + 1] : -100;
}

int peri_trainer_run(peri_trainer *t, const int32_t *ids, const int32_t *labels, int B, int T,
                     const struct peri_tr_opts *o, struct peri_tr_result *r) {
    if (B <= 0 || T <= 0 || T > t->n_ctx)
        return peri_fail(PERI_E_ARG, "batch of %d rows x %d tokens: need at least 1 x 1 and at most %lld tokens per row",
                         B, T, (long long)t->n_ctx);
    if ((int64_t)B * T > (1 << 22)) return peri_fail(PERI_E_ARG, "batch too large (%d x %d tokens)", B, T);
    for (int64_t i = 0; i < (int64_t)B * T; i++) {
        if (ids[i] < 0 || ids[i] >= t->V) return peri_fail(PERI_E_ARG, "token id %d at %lld is outside the vocabulary (%lld)", ids[i], (long long)i, (long long)t->V);
        if (t->head == PERI_TR_HEAD_LM && labels[i] >= t->V) return peri_fail(PERI_E_ARG, "label %d at %lld is outside the vocabulary (%lld)", labels[i], (long long)i, (long long)t->V);
    }
    memset(r, 0, sizeof(*r));
    return t->arch == PERI_TR_PLDR ? peri_tr_pldr_run(t, ids, labels, B, T, o, r) : peri_tr_plm_run(t, ids, labels, B, T, o, r);
}

// ---- saving -------------------------------------------------------------------------------------------------

int peri_trainer_save(const peri_trainer *t, const char *dir) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return peri_fail(PERI_E_IO, "%s: cannot create the folder (%s)", dir, strerror(errno));
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return peri_fail(PERI_E_IO, "%s: cannot write (%s)", path, strerror(errno));
    bool ok = fwrite(t->config_text, 1, t->config_len, f) == t->config_len;
    if (fclose(f) != 0) ok = false;
    if (!ok) return peri_fail(PERI_E_IO, "%s: write failed", path);
    peri_tensor *ts = calloc((size_t)t->n_params, sizeof(*ts));
    if (!ts) return peri_fail(PERI_E_NOMEM, "out of memory");
    for (int i = 0; i < t->n_params; i++) {
        const peri_tparam *p = &t->params[i];
        ts[i].name = p->name;
        ts[i].type = PERI_TYPE_F32;
        ts[i].n_dims = p->n_dims;
        for (int k = 0; k < p->n_dims; k++) ts[i].shape[k] = p->shape[k];
        ts[i].data = t->w + p->off;
        ts[i].nbytes = p->n * sizeof(float);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    int rc = peri_safetensors_write(path, ts, t->n_params, meta, 1);
    free(ts);
    return rc;
}

// ---- threaded linear layers -----------------------------------------------------------------------------------

void peri_tr_lin_fwd(peri_pool *pool, float *y, const float *x, const float *W, const float *b, int64_t n, int64_t K,
                     int64_t M) {
    peri_tensor wt = {.name = "train", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {M, K}, .data = W,
                      .nbytes = sizeof(float) * (size_t)(M * K)};
    peri_matmul(pool, y, x, &wt, b, n);
}

struct lin_bwd_job { float *dx, *dW, *db; const float *dy, *x, *W; int64_t n, K, M; };

// Blocked over rows of W so that a block of W (or of dW) stays in cache while every token row passes over it:
// the unblocked loops re-read the whole of W once per token, which dominated a step with a large vocabulary.
#define LIN_BLOCK 64
static void lin_bwd_task(void *arg, int ith, int nth) {
    const struct lin_bwd_job *j = arg;
    long lo, hi;
    if (j->dx) {
        peri_split((long)j->n, ith, nth, &lo, &hi);
        for (int64_t m0 = 0; m0 < j->M; m0 += LIN_BLOCK) {
            int64_t m1 = m0 + LIN_BLOCK < j->M ? m0 + LIN_BLOCK : j->M;
            for (long i = lo; i < hi; i++) {
                float *d = j->dx + i * j->K;
                const float *g = j->dy + i * j->M;
                for (int64_t m = m0; m < m1; m++) {
                    float gm = g[m];
                    if (gm == 0) continue;
                    peri_axpy(d, gm, j->W + m * j->K, j->K);   // dispatched SIMD (the build has no -mavx2)
                }
            }
        }
    }
    if (j->dW || j->db) {
        peri_split((long)j->M, ith, nth, &lo, &hi);
        for (long m0 = lo; m0 < hi; m0 += LIN_BLOCK) {
            long m1 = m0 + LIN_BLOCK < hi ? m0 + LIN_BLOCK : hi;
            for (int64_t i = 0; i < j->n; i++) {
                const float *g = j->dy + i * j->M, *xi = j->x + i * j->K;
                for (long m = m0; m < m1; m++) {
                    float gm = g[m];
                    if (gm == 0) continue;
                    if (j->db) j->db[m] += gm;
                    if (j->dW) peri_axpy(j->dW + m * j->K, gm, xi, j->K);
                }
            }
        }
    }
}

// Both products as the forward's register-tiled peri_matmul on transposed copies: dx += dy . W is
// matmul(dy, W^T as a [K x M] weight), dW += dy^T . x is matmul(dy^T, x^T as a [K x n] weight). The copies
// cost O(n M + M K + n K) against the O(n M K) products. Returns false (nothing done) if memory is short.
static bool lin_bwd_matmul(peri_pool *pool, float *dx, float *dW, const float *dy, const float *x, const float *W,
                           int64_t n, int64_t K, int64_t M) {
    size_t big = (size_t)(n * K > M * K ? n * K : M * K);
    float *t1 = malloc(sizeof(float) * (size_t)(M * K > M * n ? M * K : M * n));
    float *t2 = malloc(sizeof(float) * (size_t)(n * K));
    float *out = malloc(sizeof(float) * big);
    if (!t1 || !t2 || !out) { free(t1); free(t2); free(out); return false; }
    if (dx) {
        peri_transpose_elems(t1, W, M, K, K, sizeof(float));    // [K x M]
        peri_tensor wt = {.name = "train.dx", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {K, M}, .data = t1,
                          .nbytes = sizeof(float) * (size_t)(M * K)};
        peri_matmul(pool, out, dy, &wt, NULL, n);
        for (int64_t i = 0; i < n * K; i++) dx[i] += out[i];
    }
    if (dW) {
        peri_transpose_elems(t1, dy, n, M, M, sizeof(float));   // [M x n]
        peri_transpose_elems(t2, x, n, K, K, sizeof(float));    // [K x n]
        peri_tensor xt = {.name = "train.dW", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {K, n}, .data = t2,
                          .nbytes = sizeof(float) * (size_t)(n * K)};
        peri_matmul(pool, out, t1, &xt, NULL, M);
        for (int64_t i = 0; i < M * K; i++) dW[i] += out[i];
    }
    free(t1);
    free(t2);
    free(out);
    return true;
}

void peri_tr_lin_bwd(peri_pool *pool, float *dx, float *dW, float *db, const float *dy, const float *x, const float *W,
                     int64_t n, int64_t K, int64_t M) {
    // the matmul path pays for its copies once there are enough rows to reuse them
    if (n >= 32 && (dx || dW) && lin_bwd_matmul(pool, dx, dW, dy, x, W, n, K, M)) {
        if (db)
            for (int64_t i = 0; i < n; i++)
                for (int64_t m = 0; m < M; m++) db[m] += dy[i * M + m];
        return;
    }
    struct lin_bwd_job j = {dx, dW, db, dy, x, W, n, K, M};
    peri_pool_run(pool, lin_bwd_task, &j);
}

// ---- attention over the heads, on the pool -------------------------------------------------------------------

struct attn_job {
    float *O, *P, *dQ, *dK, *dV, *dQh, *dG;
    const float *Q, *K, *V, *dO, *Qh, *G;
    const uint8_t *keep;
    int64_t BH, H;
    int T, dk, dv, bad;
    float scale;
};

static void attn_fwd_task(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    long lo, hi;
    peri_split((long)j->BH, ith, nth, &lo, &hi);
    const int64_t T = j->T;
    for (long bh = lo; bh < hi; bh++)
        peri_tr_attn_fwd(j->O + bh * T * j->dv, j->P + bh * T * T, j->Q + bh * T * j->dk, j->K + bh * T * j->dk,
                         j->V + bh * T * j->dv, j->keep ? j->keep + (bh / j->H) * T : NULL, j->T, j->dk, j->dv, j->scale);
}

static void attn_bwd_task(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    long lo, hi;
    peri_split((long)j->BH, ith, nth, &lo, &hi);
    if (lo >= hi) return;
    const int64_t T = j->T, dk = j->dk, dv = j->dv;
    float *tmp = malloc(sizeof(float) * (size_t)T);
    if (!tmp) { j->bad = 1; return; }
    for (long bh = lo; bh < hi; bh++) {
        peri_tr_attn_bwd(j->dQ + bh * T * dk, j->dK + bh * T * dk, j->dV + bh * T * dv, j->dO + bh * T * dv,
                         j->P + bh * T * T, j->Q + bh * T * dk, j->K + bh * T * dk, j->V + bh * T * dv, j->T, j->dk,
                         j->dv, j->scale, tmp);
        if (j->G)   // PLDR-LLM: the query is Q' = Qh G; its gradient goes to Qh and to G
            peri_tr_mm_bwd(j->dQh + bh * T * dk, j->dG + bh * dk * dk, j->dQ + bh * T * dk, j->Qh + bh * T * dk,
                           j->G + bh * dk * dk, j->T, j->dk, j->dk);
    }
    free(tmp);
}

void peri_tr_attn_fwd_heads(peri_pool *pool, float *O, float *P, const float *Q, const float *K, const float *V,
                            const uint8_t *keep, int64_t B, int64_t H, int T, int dk, int dv, float scale) {
    struct attn_job j = {.O = O, .P = P, .Q = Q, .K = K, .V = V, .keep = keep, .BH = B * H, .H = H, .T = T, .dk = dk,
                         .dv = dv, .scale = scale};
    peri_pool_run(pool, attn_fwd_task, &j);
}

int peri_tr_attn_bwd_heads(peri_pool *pool, float *dQ, float *dK, float *dV, const float *dO, const float *P,
                           const float *Q, const float *K, const float *V, int64_t B, int64_t H, int T, int dk, int dv,
                           float scale, float *dQh, float *dG, const float *Qh, const float *G) {
    struct attn_job j = {.dQ = dQ, .dK = dK, .dV = dV, .dO = dO, .P = (float *)P, .Q = Q, .K = K, .V = V, .BH = B * H,
                         .H = H, .T = T, .dk = dk, .dv = dv, .scale = scale, .dQh = dQh, .dG = dG, .Qh = Qh, .G = G};
    peri_pool_run(pool, attn_bwd_task, &j);
    return j.bad ? peri_fail(PERI_E_NOMEM, "out of memory in the attention backward") : PERI_OK;
}

// ---- DAG: log tr(expm(X)) ---------------------------------------------------------------------------------------

double peri_tr_log_trace_expm(const double *X, int d, double *grad, double *work) {
    double *E = work, *term = work + d * d, *tmp = work + 2 * d * d;
    double norm = 0;
    for (int i = 0; i < d; i++) {
        double rs = 0;
        for (int j = 0; j < d; j++) rs += fabs(X[i * d + j]);
        if (rs > norm) norm = rs;
    }
    int s = 0;
    while (norm > 0.5 && s < 1100) { norm /= 2; s++; }
    double scale = ldexp(1.0, -s);
    for (int i = 0; i < d * d; i++) E[i] = term[i] = 0;
    for (int i = 0; i < d; i++) E[i * d + i] = term[i * d + i] = 1;
    // Taylor series of expm(X / 2^s); the scaled norm is <= 0.5 so 30 terms reach double precision
    for (int k = 1; k < 30; k++) {
        double mx = 0;
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) {
                double acc = 0;
                for (int q = 0; q < d; q++) acc += term[i * d + q] * X[q * d + j];
                tmp[i * d + j] = acc * scale / k;
            }
        for (int i = 0; i < d * d; i++) { term[i] = tmp[i]; E[i] += tmp[i]; mx = fmax(mx, fabs(tmp[i])); }
        if (mx < 1e-18) break;
    }
    // squaring, renormalised by the largest entry so that nothing overflows: expm(X) = E * exp(logf)
    double logf_ = 0;
    for (int k = 0; k < s; k++) {
        double mx = 0;
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) {
                double acc = 0;
                for (int q = 0; q < d; q++) acc += E[i * d + q] * E[q * d + j];
                tmp[i * d + j] = acc;
                mx = fmax(mx, fabs(acc));
            }
        if (mx == 0) mx = 1;
        for (int i = 0; i < d * d; i++) E[i] = tmp[i] / mx;
        logf_ = 2 * logf_ + log(mx);
    }
    double tr = 0;
    for (int i = 0; i < d; i++) tr += E[i * d + i];
    // d tr(expm X)/dX = expm(X)^T; divided by the trace the common factor exp(logf) cancels
    if (grad)
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) grad[i * d + j] = E[j * d + i] / tr;
    return log(tr) + logf_;
}

// ---- AdamW, clipping, schedules -------------------------------------------------------------------------------

void peri_adamw_step_ref(float *p, const float *g, float *m, float *v, size_t n, const struct peri_adamw *h,
                         int64_t step) {
    double bc1 = 1 - pow(h->beta1, (double)step), bc2 = 1 - pow(h->beta2, (double)step);
    double step_size = h->lr / bc1, bc2s = sqrt(bc2);
    float decay = (float)(1 - h->lr * h->weight_decay);
    for (size_t i = 0; i < n; i++) {
        p[i] *= decay;
        m[i] = (float)(h->beta1 * m[i] + (1 - h->beta1) * g[i]);
        v[i] = (float)(h->beta2 * v[i] + (1 - h->beta2) * (double)g[i] * g[i]);
        double denom = sqrt((double)v[i]) / bc2s + h->eps;
        p[i] = (float)(p[i] - step_size * m[i] / denom);
    }
}

struct adamw_job { float *p; const float *g; float *m, *v; size_t n; const struct peri_adamw *h; int64_t step; };
static void adamw_task(void *arg, int ith, int nth) {
    const struct adamw_job *j = arg;
    long lo, hi;
    peri_split((long)j->n, ith, nth, &lo, &hi);
    if (hi > lo) peri_adamw_step_ref(j->p + lo, j->g + lo, j->m + lo, j->v + lo, (size_t)(hi - lo), j->h, j->step);
}
void peri_adamw_step(float *p, const float *g, float *m, float *v, size_t n, const struct peri_adamw *h, int64_t step) {
    struct adamw_job j = {p, g, m, v, n, h, step};
    adamw_task(&j, 0, 1);
}

void peri_clip_value(float *g, size_t n, float c) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] > c ? c : g[i] < -c ? -c : g[i];
}

double peri_clip_norm(float *g, size_t n, double max_norm) {
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    double norm = sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        float s = (float)(max_norm / (norm + 1e-6));
        for (size_t i = 0; i < n; i++) g[i] *= s;
    }
    return norm;
}

double peri_schedule_lr(const struct peri_schedule *s, int64_t step) {
    if (s->warmup > 0 && step < s->warmup) return s->lr * (double)(step + 1) / (double)s->warmup;
    if (s->kind == PERI_SCHED_COSINE) {
        int64_t span = s->total - s->warmup;
        if (span <= 0 || step >= s->total) return s->min_lr;
        double frac = (double)(step - s->warmup) / (double)span;
        return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1 + cos(M_PI * frac));
    }
    if (s->kind == PERI_SCHED_WSD) {
        int64_t decay_start = s->total - s->decay;
        if (step < decay_start) return s->lr;
        if (step >= s->total || s->decay <= 0) return s->min_lr;
        double frac = (double)(step - decay_start) / (double)s->decay;
        return s->lr + (s->min_lr - s->lr) * frac;
    }
    return s->lr;
}
