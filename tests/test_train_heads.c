// Fine-tuning of the task heads: the trainer's head logits against the Hugging Face fixtures
// (../shared/fixtures/heads, row 0 which has no padding), every head loss (CE, BCE, MSE, token CE, QA) against
// central finite differences of itself, and a few AdamW steps that lower the loss and save a checkpoint that
// the inference engine loads with the same head logits.
#include "test.h"

#include "formats/safetensors.h"
#include "peri.h"
#include "train/train.h"

#include <math.h>
#include <unistd.h>

enum { T0 = 11 };

static peri_trainer *load(const char *shared, const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/heads/%s", shared, name);
    peri_trainer *t = NULL;
    CHECKF(peri_trainer_load(dir, 1, &t) == PERI_OK, "%s: %s", name, peri_last_error());
    return t;
}

// Row 0 of the fixture batch (11 real tokens): the trainer's head logits against HF's.
static void check_logits(const char *shared, const char *name) {
    peri_trainer *t = load(shared, name);
    if (!t) return;
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/heads/%s/expected.safetensors", shared, name);
    peri_safetensors st;
    CHECK(peri_safetensors_open(&st, path, true) == PERI_OK);
    const peri_tensor *ids_t = peri_safetensors_find(&st, "input_ids");
    CHECK(ids_t && ids_t->type == PERI_TYPE_I32);
    if (!ids_t) { peri_trainer_free(t); return; }
    const int32_t *ids = ids_t->data;   // row 0
    int32_t lab[2 * T0];
    for (int i = 0; i < 2 * T0; i++) lab[i] = -100;
    lab[0] = 0;
    lab[1] = 1;
    float logits[T0 * 8];
    struct peri_tr_opts o = {.grad_scale = 1, .logits_out = logits};
    struct peri_tr_result r;
    CHECK(peri_trainer_run(t, ids, lab, 1, T0, &o, &r) == PERI_OK);
    const int64_t C = t->n_out;
    double d = 0;
    if (t->head == PERI_TR_HEAD_SEQ_CLS) {
        const peri_tensor *e = peri_safetensors_find(&st, "logits");
        CHECK(e != NULL);
        if (e) d = test_max_abs_diff(logits + (T0 - 1) * C, e->data, (size_t)C);
    } else if (t->head == PERI_TR_HEAD_TOKEN_CLS) {
        const peri_tensor *e = peri_safetensors_find(&st, "logits");
        CHECK(e != NULL);
        if (e) d = test_max_abs_diff(logits, e->data, (size_t)(T0 * C));
    } else {
        const peri_tensor *s = peri_safetensors_find(&st, "start_logits"), *e = peri_safetensors_find(&st, "end_logits");
        CHECK(s && e);
        for (int i = 0; s && e && i < T0; i++) {
            d = fmax(d, fabs(logits[2 * i] - ((const float *)s->data)[i]));
            d = fmax(d, fabs(logits[2 * i + 1] - ((const float *)e->data)[i]));
        }
    }
    CHECKF(d < 1e-4, "%s: head logits differ from HF by %.3g", name, d);
    printf("%s: head logits vs HF max abs diff %.2e\n", name, d);
    peri_safetensors_close(&st);
    peri_trainer_free(t);
}

static double run_loss(peri_trainer *t, const int32_t *ids, const int32_t *lab, const float *tg, int B, int T, bool bwd) {
    struct peri_tr_opts o = {.backward = bwd, .grad_scale = 1, .targets = tg};
    struct peri_tr_result r;
    if (bwd) peri_trainer_zero_grad(t);
    if (peri_trainer_run(t, ids, lab, B, T, &o, &r) != PERI_OK) return NAN;
    return r.loss;
}

// Directional finite difference along the gradient of one parameter (the head, and a base weight): the
// derivative there is |g_p|^2 / |g_p|, large enough to measure in float32.
static void grad_check(peri_trainer *t, const char *what, const int32_t *ids, const int32_t *lab, const float *tg,
                       int B, int T) {
    double l0 = run_loss(t, ids, lab, tg, B, T, true);
    CHECKF(isfinite(l0), "%s: loss", what);
    const char *pn[2] = {t->params[t->head_w].name, t->params[1].name};
    for (int k = 0; k < 2; k++) {
        const peri_tparam *p = peri_trainer_find(t, pn[k]);
        if (!p) continue;
        double nrm = 0;
        for (size_t i = 0; i < p->n; i++) nrm += (double)t->g[p->off + i] * t->g[p->off + i];
        nrm = sqrt(nrm);
        if (!(nrm > 1e-6)) { CHECKF(k == 1, "%s: zero gradient of %s", what, pn[k]); continue; }
        float *u = malloc(sizeof(float) * p->n), *w0 = malloc(sizeof(float) * p->n);
        memcpy(w0, t->w + p->off, sizeof(float) * p->n);
        for (size_t i = 0; i < p->n; i++) u[i] = (float)(t->g[p->off + i] / nrm);
        const double h = 1e-2;
        for (size_t i = 0; i < p->n; i++) t->w[p->off + i] = w0[i] + (float)(h * u[i]);
        double lp = run_loss(t, ids, lab, tg, B, T, false);
        for (size_t i = 0; i < p->n; i++) t->w[p->off + i] = w0[i] - (float)(h * u[i]);
        double lm = run_loss(t, ids, lab, tg, B, T, false);
        memcpy(t->w + p->off, w0, sizeof(float) * p->n);
        double fd = (lp - lm) / (2 * h), rel = fabs(fd - nrm) / nrm;
        CHECKF(rel < 2e-2, "%s: d loss / d %s: finite difference %.6g, gradient %.6g (rel %.2g)", what, pn[k], fd, nrm, rel);
        printf("%s: %s: fd %.6g grad %.6g rel %.1e\n", what, pn[k], fd, nrm, rel);
        free(u);
        free(w0);
    }
}

static void grad_checks(const char *shared, const char *name) {
    peri_trainer *t = load(shared, name);
    if (!t) return;
    enum { B = 2, T = 7 };
    int32_t ids[B * T], lab[B * T];
    float tg[B * 8];
    for (int i = 0; i < B * T; i++) ids[i] = 4 + (i * 53) % 300;
    ids[B * T - 1] = t->pad_id;   // row 1 ends with a pad: sequence pooling takes the token before it
    char what[128];
    if (t->head == PERI_TR_HEAD_SEQ_CLS) {
        lab[0] = 2; lab[1] = 0;
        snprintf(what, sizeof what, "%s single-label", name);
        grad_check(t, what, ids, lab, NULL, B, T);
        t->problem = PERI_TR_MULTI_LABEL;
        for (int i = 0; i < B * t->n_out; i++) tg[i] = (float)(i % 2);
        snprintf(what, sizeof what, "%s multi-label", name);
        grad_check(t, what, ids, lab, tg, B, T);
        t->problem = PERI_TR_REGRESSION;
        for (int i = 0; i < B * t->n_out; i++) tg[i] = 0.3f * (float)i - 0.5f;
        snprintf(what, sizeof what, "%s regression", name);
        grad_check(t, what, ids, lab, tg, B, T);
    } else if (t->head == PERI_TR_HEAD_TOKEN_CLS) {
        for (int i = 0; i < B * T; i++) lab[i] = i % 3 == 2 ? -100 : (i * 7) % (int)t->n_out;
        snprintf(what, sizeof what, "%s", name);
        grad_check(t, what, ids, lab, NULL, B, T);
    } else {
        lab[0] = 2; lab[1] = 4; lab[2] = 5; lab[3] = 9;   // row 1's end is past T: clamped to T and ignored
        snprintf(what, sizeof what, "%s", name);
        grad_check(t, what, ids, lab, NULL, B, T);
    }
    peri_trainer_free(t);
}

// A few AdamW steps on four labelled rows lower the loss; the saved checkpoint loads in the inference engine
// (what peri classify uses) with the trainer's logits.
static void finetune(const char *shared) {
    peri_trainer *t = load(shared, "pldr-seqcls");
    if (!t) return;
    enum { N = 4, T = 6 };
    int32_t ids[N][T], lab[N];
    for (int e = 0; e < N; e++) {
        for (int i = 0; i < T; i++) ids[e][i] = 4 + (e * 97 + i * 31) % 400;
        lab[e] = e % 3;
    }
    float *m = calloc(t->n_total, 4), *v = calloc(t->n_total, 4);
    struct peri_adamw h = {.lr = 3e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0};
    double first = 0, last = 0;
    for (int s = 1; s <= 10; s++) {
        peri_trainer_zero_grad(t);
        double loss = 0;
        for (int e = 0; e < N; e++) {
            struct peri_tr_opts o = {.backward = true, .grad_scale = 1.0 / N};
            struct peri_tr_result r;
            CHECK(peri_trainer_run(t, ids[e], &lab[e], 1, T, &o, &r) == PERI_OK);
            loss += r.loss / N;
        }
        if (s == 1) first = loss;
        last = loss;
        peri_clip_norm(t->g, t->n_total, 1.0);
        peri_adamw_step(t->w, t->g, m, v, t->n_total, &h, s);
    }
    CHECKF(last < 0.5 * first, "fine-tune: loss %.4f -> %.4f", first, last);
    printf("pldr-seqcls fine-tune: loss %.4f -> %.4f in 10 steps\n", first, last);
    char tmp[] = "/tmp/peri_test_heads_XXXXXX";
    CHECK(mkdtemp(tmp) != NULL);
    CHECK(peri_trainer_save(t, tmp) == PERI_OK);
    float logits[T * 3];
    struct peri_tr_opts o = {.grad_scale = 1, .logits_out = logits};
    struct peri_tr_result r;
    CHECK(peri_trainer_run(t, ids[1], &lab[1], 1, T, &o, &r) == PERI_OK);
    peri_model *model = NULL;
    struct peri_model_params mp = peri_model_default_params();
    mp.n_threads = 1;
    CHECKF(peri_model_load(tmp, mp, &model) == PERI_OK, "%s", peri_last_error());
    if (model) {
        CHECK(peri_model_head(model) == PERI_HEAD_SEQ_CLS && peri_model_n_outputs(model) == 3);
        struct peri_context_params cp = peri_context_default_params();
        cp.n_ctx = T;
        cp.n_seq_max = 1;
        cp.n_threads = 1;
        cp.logits_all = true;
        peri_context *c = NULL;
        CHECK(peri_context_init(model, cp, &c) == PERI_OK);
        int32_t seq = 0;
        struct peri_batch bt = {.n_seq = 1, .n_tokens = T, .seq_ids = &seq, .tokens = ids[1], .logits_all = true};
        CHECK(c && peri_decode(c, &bt) == PERI_OK);
        double d = c ? test_max_abs_diff(peri_get_logits(c) + (T - 1) * 3, logits + (T - 1) * 3, 3) : INFINITY;
        CHECKF(d < 1e-4, "fine-tuned checkpoint: inference logits differ from the trainer's by %.3g", d);
        peri_context_free(c);
        peri_model_free(model);
    }
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0);
    free(m);
    free(v);
    peri_trainer_free(t);
}

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) return TEST_SKIP;
    const char *names[] = {"pldr-seqcls", "pldr-tokencls", "pldr-qa", "plm-seqcls", "plm-tokencls"};
    for (int i = 0; i < 5; i++) check_logits(shared, names[i]);
    for (int i = 0; i < 5; i++) grad_checks(shared, names[i]);
    finetune(shared);
    return TEST_END();
}
