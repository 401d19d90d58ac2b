// Helpers shared by the architectures' training code: an allocation list freed at the end of a step,
// parameter lookup by name, and the GLU block (forward keeps its activations, backward accumulates).
#ifndef PERI_TRAIN_TCOMMON_H
#define PERI_TRAIN_TCOMMON_H

#include "core/error.h"
#include "train/tops.h"
#include "train/train.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Every buffer of one forward/backward; freed together. oom is set on the first failed allocation, and
// later requests return a small dummy so the code can run to the check point without branching on each.
typedef struct tr_arena { void **p; int n, cap; int oom; } tr_arena;

static inline float *tr_alloc(tr_arena *a, size_t n) {
    if (a->oom) return NULL;
    if (a->n == a->cap) {
        int nc = a->cap ? a->cap * 2 : 256;
        void **np = realloc(a->p, sizeof(void *) * (size_t)nc);
        if (!np) { a->oom = 1; return NULL; }
        a->p = np;
        a->cap = nc;
    }
    float *x = calloc(n ? n : 1, sizeof(float));
    if (!x) { a->oom = 1; return NULL; }
    a->p[a->n++] = x;
    return x;
}
static inline void tr_arena_free(tr_arena *a) {
    for (int i = 0; i < a->n; i++) free(a->p[i]);
    free(a->p);
    memset(a, 0, sizeof(*a));
}

// Index of the parameter named by the format, or -1.
static inline int tr_pidx(const peri_trainer *t, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (int i = 0; i < t->n_params; i++)
        if (!strcmp(t->params[i].name, name)) return i;
    return -1;
}
#define TW(t, i) ((i) < 0 ? NULL : (t)->w + (t)->params[i].off)
#define TG(t, i) ((i) < 0 ? NULL : (t)->g + (t)->params[i].off)

// GLU(x) = W3 (silu(W1 x + b1) * (W2 x + b2)) + b3 over n rows: in -> hid -> in.
typedef struct tr_glu { int w1, b1, w2, b2, w3, b3; int64_t in, hid; } tr_glu;
typedef struct tr_glu_act { const float *x; float *a1, *a2, *h, *y; } tr_glu_act;

static inline void tr_glu_fwd(peri_trainer *t, tr_arena *ar, const tr_glu *g, tr_glu_act *s, const float *x, int64_t n) {
    s->x = x;
    s->a1 = tr_alloc(ar, (size_t)(n * g->hid));
    s->a2 = tr_alloc(ar, (size_t)(n * g->hid));
    s->h = tr_alloc(ar, (size_t)(n * g->hid));
    s->y = tr_alloc(ar, (size_t)(n * g->in));
    if (ar->oom) return;
    peri_tr_lin_fwd(t->pool, s->a1, x, TW(t, g->w1), TW(t, g->b1), n, g->in, g->hid);
    peri_tr_lin_fwd(t->pool, s->a2, x, TW(t, g->w2), TW(t, g->b2), n, g->in, g->hid);
    peri_tr_swiglu_fwd(s->h, s->a1, s->a2, n * g->hid);
    peri_tr_lin_fwd(t->pool, s->y, s->h, TW(t, g->w3), TW(t, g->b3), n, g->hid, g->in);
}
// dx += d/dx of <dy, GLU(x)>; parameter gradients accumulate. Returns PERI_OK or PERI_E_NOMEM.
static inline int tr_glu_bwd(peri_trainer *t, const tr_glu *g, const tr_glu_act *s, const float *dy, float *dx, int64_t n) {
    size_t nh = (size_t)(n * g->hid);
    float *dh = calloc(nh * 3, sizeof(float));
    if (!dh) return peri_fail(PERI_E_NOMEM, "out of memory in the backward pass");
    float *da1 = dh + nh, *da2 = dh + 2 * nh;
    peri_tr_lin_bwd(t->pool, dh, TG(t, g->w3), TG(t, g->b3), dy, s->h, TW(t, g->w3), n, g->hid, g->in);
    peri_tr_swiglu_bwd(da1, da2, dh, s->a1, s->a2, (int64_t)nh);
    peri_tr_lin_bwd(t->pool, dx, TG(t, g->w1), TG(t, g->b1), da1, s->x, TW(t, g->w1), n, g->in, g->hid);
    peri_tr_lin_bwd(t->pool, dx, TG(t, g->w2), TG(t, g->b2), da2, s->x, TW(t, g->w2), n, g->in, g->hid);
    free(dh);
    return PERI_OK;
}
static inline void tr_glu_bind(const peri_trainer *t, tr_glu *g, const char *prefix, int64_t in, int64_t hid) {
    g->w1 = tr_pidx(t, "%s.gluw1.weight", prefix);
    g->b1 = tr_pidx(t, "%s.gluw1.bias", prefix);
    g->w2 = tr_pidx(t, "%s.gluw2.weight", prefix);
    g->b2 = tr_pidx(t, "%s.gluw2.bias", prefix);
    g->w3 = tr_pidx(t, "%s.gluw3.weight", prefix);
    g->b3 = tr_pidx(t, "%s.gluw3.bias", prefix);
    g->in = in;
    g->hid = hid;
}

// Cross-entropy over the labelled rows of logits [n,V]; dlogits (may be NULL) gets (softmax - onehot) * w
// where w = grad_scale / n_terms. Returns the mean loss; *n_terms the count.
static inline double tr_loss(const float *logits, float *dlogits, const int32_t *labels, int64_t n, int64_t V,
                             double grad_scale, int64_t *n_terms) {
    int64_t cnt = 0;
    for (int64_t i = 0; i < n; i++) cnt += labels[i] >= 0;
    *n_terms = cnt;
    if (!cnt) return 0;
    double sum = 0;
    float w = (float)(grad_scale / (double)cnt);
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] < 0) continue;
        sum += peri_tr_xent(dlogits ? dlogits + i * V : NULL, logits + i * V, V, labels[i], w);
    }
    return sum / (double)cnt;
}

#endif
