// Training forward/backward against ../shared/fixtures/grads (float64 reference gradients): loss, logits,
// grad.* of every parameter, the original PLDR convention, the DAG terms, one AdamW step; and the training
// forward's logits against the inference forward (src/models) on the same model.
#include "test.h"

#include "formats/safetensors.h"
#include "peri.h"
#include "train/train.h"

static const float *fx(const peri_safetensors *st, const char *name, size_t *n) {
    const peri_tensor *t = peri_safetensors_find(st, name);
    if (!t || t->type != PERI_TYPE_F32) return NULL;
    if (n) *n = (size_t)peri_tensor_nelem(t);
    return t->data;
}

// Every parameter's gradient within 1e-4 abs or 1e-3 x the tensor's max abs (README tolerances).
static void check_grads(const peri_trainer *t, const peri_safetensors *st, const char *prefix) {
    int bad = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < t->n_params; i++) {
        const peri_tparam *p = &t->params[i];
        char name[512];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        size_t n = 0;
        const float *ref = fx(st, name, &n);
        CHECKF(ref && n == p->n, "%s missing or wrong size", name);
        if (!ref || n != p->n) continue;
        double mx = 0;
        for (size_t k = 0; k < n; k++) mx = fmax(mx, fabs(ref[k]));
        double diff = test_max_abs_diff(t->g + p->off, ref, n);
        double tol = fmax(1e-4, 1e-3 * mx);
        if (diff > tol) {
            bad++;
            fprintf(stderr, "  %s: max abs diff %.3g (max |g| %.3g)\n", name, diff, mx);
        }
        if (diff / fmax(mx, 1e-30) > worst) { worst = diff / fmax(mx, 1e-30); worst_name = p->name; }
    }
    CHECKF(bad == 0, "%d %s* tensors outside tolerance", bad, prefix);
    printf("  %s*: worst relative diff %.2e (%s)\n", prefix, worst, worst_name);
}

static peri_token *ids_of(const peri_safetensors *st, int *B, int *T) {
    const peri_tensor *t = peri_safetensors_find(st, "input_ids");
    if (!t || t->type != PERI_TYPE_I32 || t->n_dims != 2) return NULL;
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    peri_token *ids = malloc(sizeof(peri_token) * (size_t)(*B * *T));
    memcpy(ids, t->data, sizeof(peri_token) * (size_t)(*B * *T));
    return ids;
}

// The inference engine's logits for row b (all positions) must match the training forward.
static void check_inference(const char *dir, const peri_token *ids, int B, int T, const float *logits, int V) {
    peri_model *m = NULL;
    struct peri_model_params mp = peri_model_default_params();
    mp.n_threads = 1;
    CHECK(peri_model_load(dir, mp, &m) == PERI_OK);
    if (!m) return;
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = T;
    cp.n_seq_max = 1;
    cp.n_threads = 1;
    cp.logits_all = true;
    cp.kv_type = PERI_KV_F32;
    peri_context *c = NULL;
    CHECK(peri_context_init(m, cp, &c) == PERI_OK);
    double worst = 0;
    for (int b = 0; c && b < B; b++) {
        int32_t seq = 0;
        peri_seq_clear(c, -1);
        struct peri_batch bt = {.n_seq = 1, .n_tokens = T, .seq_ids = &seq, .tokens = ids + (size_t)b * T, .logits_all = true};
        CHECK(peri_decode(c, &bt) == PERI_OK);
        double d = test_max_abs_diff(peri_get_logits(c), logits + (size_t)b * T * V, (size_t)T * V);
        if (d > worst) worst = d;
    }
    CHECKF(worst < 1e-4, "training vs inference forward: max abs logit diff %.3g", worst);
    printf("  training vs inference logits: %.2e\n", worst);
    peri_context_free(c);
    peri_model_free(m);
}

static void run_fixture(const char *shared, const char *name, bool pldr) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/fixtures/grads/%s", shared, name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    printf("%s\n", name);
    peri_safetensors st;
    CHECK(peri_safetensors_open(&st, path, true) == PERI_OK);
    peri_trainer *t = NULL;
    CHECK(peri_trainer_load(dir, 1, &t) == PERI_OK);
    if (!t) { peri_safetensors_close(&st); return; }
    int B = 0, T = 0;
    peri_token *ids = ids_of(&st, &B, &T);
    CHECK(ids != NULL);
    if (!ids) goto out;
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)(B * T));
    float *logits = malloc(sizeof(float) * (size_t)(B * T) * (size_t)t->V);
    peri_tr_labels_hf(labels, ids, B, T);
    struct peri_tr_opts o = {.backward = true, .grad_scale = 1, .logits_out = logits};
    struct peri_tr_result r;
    CHECK(peri_trainer_run(t, ids, labels, B, T, &o, &r) == PERI_OK);
    const float *ref_loss = fx(&st, "loss", NULL), *ref_logits = fx(&st, "logits", NULL);
    CHECKF(ref_loss && fabs(r.loss - ref_loss[0]) < 1e-5, "loss %.7f vs %.7f", r.loss, ref_loss ? ref_loss[0] : 0);
    CHECK(r.n_terms == (int64_t)B * (T - 1));
    double dl = ref_logits ? test_max_abs_diff(logits, ref_logits, (size_t)(B * T) * (size_t)t->V) : INFINITY;
    CHECKF(dl < 1e-4, "logits max abs diff %.3g", dl);
    printf("  loss %.7f (ref %.7f), logits diff %.2e\n", r.loss, ref_loss ? ref_loss[0] : 0, dl);
    check_grads(t, &st, "grad.");
    check_inference(dir, ids, B, T, logits, (int)t->V);
    if (pldr) {
        // AdamW fed the stored gradients: 1e-6 abs
        float *p = malloc(sizeof(float) * t->n_total), *m = calloc(t->n_total, 4), *v = calloc(t->n_total, 4);
        float *g = malloc(sizeof(float) * t->n_total);
        struct peri_adamw h = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-5, .weight_decay = 0.1};
        memcpy(p, t->w, sizeof(float) * t->n_total);
        int ok = 1;
        for (int i = 0; i < t->n_params; i++) {
            char nm[512];
            snprintf(nm, sizeof nm, "grad.%s", t->params[i].name);
            const float *gr = fx(&st, nm, NULL);
            if (gr) memcpy(g + t->params[i].off, gr, sizeof(float) * t->params[i].n);
            else ok = 0;
        }
        peri_adamw_step(p, g, m, v, t->n_total, &h, 1);
        double worst = 0;
        for (int i = 0; i < t->n_params && ok; i++) {
            char nm[512];
            snprintf(nm, sizeof nm, "adamw1.%s", t->params[i].name);
            const float *ref = fx(&st, nm, NULL);
            if (!ref) { ok = 0; break; }
            worst = fmax(worst, test_max_abs_diff(p + t->params[i].off, ref, t->params[i].n));
        }
        CHECKF(ok && worst < 1e-6, "adamw1 with stored grads: %.3g", worst);
        // and fed our own gradients: 1e-4 abs
        memcpy(p, t->w, sizeof(float) * t->n_total);
        memset(m, 0, sizeof(float) * t->n_total);
        memset(v, 0, sizeof(float) * t->n_total);
        peri_adamw_step(p, t->g, m, v, t->n_total, &h, 1);
        double worst2 = 0;
        for (int i = 0; i < t->n_params && ok; i++) {
            char nm[512];
            snprintf(nm, sizeof nm, "adamw1.%s", t->params[i].name);
            worst2 = fmax(worst2, test_max_abs_diff(p + t->params[i].off, fx(&st, nm, NULL), t->params[i].n));
        }
        CHECKF(ok && worst2 < 1e-4, "adamw1 with our grads: %.3g", worst2);
        printf("  adamw1: %.2e (stored grads), %.2e (own grads)\n", worst, worst2);
        free(p); free(m); free(v); free(g);

        // original convention: forward on ids[:, :-1], target 0 ignored, keys with id 0 masked; DAG terms
        int Ti = T - 1;
        peri_token *ids2 = malloc(sizeof(peri_token) * (size_t)(B * Ti));
        int32_t *lab2 = malloc(sizeof(int32_t) * (size_t)(B * Ti));
        for (int b = 0; b < B; b++)
            for (int i = 0; i < Ti; i++) {
                ids2[b * Ti + i] = ids[b * T + i];
                lab2[b * Ti + i] = ids[b * T + i + 1] == 0 ? -1 : ids[b * T + i + 1];
            }
        double *per_head = malloc(sizeof(double) * 3 * (size_t)(t->L * B * t->H));
        peri_trainer_zero_grad(t);
        struct peri_tr_opts o2 = {.backward = true, .grad_scale = 1, .mask_pad_keys = true, .dag_eval = true,
                                  .dag_per_head = per_head};
        CHECK(peri_trainer_run(t, ids2, lab2, B, Ti, &o2, &r) == PERI_OK);
        const float *lo = fx(&st, "loss_orig", NULL);
        CHECKF(lo && fabs(r.loss - lo[0]) < 1e-5, "loss_orig %.7f vs %.7f", r.loss, lo ? lo[0] : 0);
        check_grads(t, &st, "grad_orig.");
        const char *dn[3] = {"dag_L_A", "dag_L_Ap", "dag_L_G"}, *dp[3] = {"dag_per_head_L_A", "dag_per_head_L_Ap", "dag_per_head_L_G"};
        for (int k = 0; k < 3; k++) {
            const float *ref = fx(&st, dn[k], NULL);
            CHECKF(ref && fabs(r.dag[k] - ref[0]) < 1e-5 * fabs(ref[0]), "%s %.7f vs %.7f", dn[k], r.dag[k], ref ? ref[0] : 0);
            size_t nph = 0;
            const float *ph = fx(&st, dp[k], &nph);
            CHECK(ph && nph == (size_t)(t->L * B * t->H));
            double w = 0;
            for (size_t i = 0; ph && i < nph; i++) w = fmax(w, fabs(per_head[k * nph + i] - ph[i]) / fmax(1, fabs(ph[i])));
            CHECKF(w < 1e-5, "%s per head: relative diff %.3g", dp[k], w);
            printf("  %s %.6f (ref %.6f)\n", dn[k], r.dag[k], ref ? ref[0] : 0);
        }
        // the DAG loss's gradient: directional finite difference of the total loss along the gradient
        {
            double coef[3] = {0.05, 0.05, 0.2};
            struct peri_tr_opts o3 = {.backward = true, .grad_scale = 1, .mask_pad_keys = true};
            memcpy(o3.dag_coef, coef, sizeof coef);
            peri_trainer_zero_grad(t);
            CHECK(peri_trainer_run(t, ids2, lab2, B, Ti, &o3, &r) == PERI_OK);
            CHECK(fabs(r.total - (r.loss + coef[0] * r.dag[0] + coef[1] * r.dag[1] + coef[2] * r.dag[2])) < 1e-9);
            double gn = 0;
            for (size_t i = 0; i < t->n_total; i++) gn += (double)t->g[i] * t->g[i];
            gn = sqrt(gn);
            float *w0 = malloc(sizeof(float) * t->n_total), *u = malloc(sizeof(float) * t->n_total);
            memcpy(w0, t->w, sizeof(float) * t->n_total);
            for (size_t i = 0; i < t->n_total; i++) u[i] = (float)(t->g[i] / gn);
            const double step = 2e-3;
            struct peri_tr_opts of = o3;
            of.backward = false;
            struct peri_tr_result rp, rm;
            for (size_t i = 0; i < t->n_total; i++) t->w[i] = w0[i] + (float)step * u[i];
            peri_trainer_run(t, ids2, lab2, B, Ti, &of, &rp);
            for (size_t i = 0; i < t->n_total; i++) t->w[i] = w0[i] - (float)step * u[i];
            peri_trainer_run(t, ids2, lab2, B, Ti, &of, &rm);
            memcpy(t->w, w0, sizeof(float) * t->n_total);
            double fd = (rp.total - rm.total) / (2 * step);
            CHECKF(fabs(fd - gn) < 0.005 * gn, "DAG loss: directional FD %.6f vs |grad| %.6f", fd, gn);
            printf("  DAG loss gradient: directional FD %.5f vs |grad| %.5f\n", fd, gn);
            free(w0);
            free(u);
        }
        free(per_head);
        free(ids2);
        free(lab2);
    }
    free(labels);
    free(logits);
    free(ids);
out:
    peri_trainer_free(t);
    peri_safetensors_close(&st);
}

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) return TEST_SKIP;
    run_fixture(shared, "pldr-tiny", true);
    run_fixture(shared, "plm-tiny", false);
    return TEST_END();
}
