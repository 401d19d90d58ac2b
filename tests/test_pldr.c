// PLDR-LLM against the reference fixtures (../shared/fixtures/pldr, made by the original PyTorch code driven
// with the HF fork's semantics): no-cache and prefill logits, intermediates, the G-cache (A, A_LM, G_LM),
// teacher-forced decode with caches, greedy ids, the left-padded batch (sdpa and eager), identity G, bf16
// weights and the 32k-vocabulary model. Tolerances are the fixtures README's.
#include "formats/safetensors.h"
#include "peri.h"
#include "test.h"

#include <stdint.h>

static const double TOL_LOGITS = 1e-3, TOL_HIDDEN = 2e-4, TOL_REL = 1e-5, TOL_QK = 1e-5;

typedef struct {
    peri_safetensors exp;
    const char *name;
} fixture;

static const peri_tensor *need(fixture *f, const char *name) {
    const peri_tensor *t = peri_safetensors_find(&f->exp, name);
    if (!t) fprintf(stderr, "%s: expected tensor '%s' missing\n", f->name, name);
    return t;
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

// The tolerance of hidden states and G-cache tensors: 2e-4 absolute, or 1e-5 relative to the max abs value.
static int close_hidden(const float *got, const float *want, size_t n, double *diff) {
    *diff = test_max_abs_diff(got, want, n);
    return *diff <= TOL_HIDDEN || *diff / (max_abs(want, n) + 1e-30) <= TOL_REL;
}

// ---- intermediates through the tensor callback ------------------------------------------------------------

typedef struct {
    int S, D, H, d, L;
    float *embed_ln, *hidden[8], *q0, *k0; // [S*D] each
} capture;

static void on_tensor(const char *name, int32_t seq, const float *data, int32_t n_dims, const int64_t *shape, void *ud) {
    capture *c = ud;
    size_t n = 1;
    for (int i = 0; i < n_dims; i++) n *= (size_t)shape[i];
    float **dst = NULL;
    int l;
    if (!strcmp(name, "embed_ln")) dst = &c->embed_ln;
    else if (sscanf(name, "hidden.%d", &l) == 1 && l >= 0 && l < 8) dst = &c->hidden[l];
    else if (!strcmp(name, "q_rope.0")) dst = &c->q0;
    else if (!strcmp(name, "k_rope.0")) dst = &c->k0;
    if (!dst || seq != 0) return;
    free(*dst);
    *dst = malloc(n * sizeof(float));
    memcpy(*dst, data, n * sizeof(float));
}

// ours [S, H, d] -> reference [H, S, d]
static void to_hsd(const float *src, float *dst, int S, int H, int d) {
    for (int s = 0; s < S; s++)
        for (int h = 0; h < H; h++) memcpy(dst + ((size_t)h * S + s) * d, src + ((size_t)s * H + h) * d, sizeof(float) * d);
}

static peri_context *new_ctx(peri_model *m, int n_seq, int n_ctx, int n_batch, int attn, capture *cap) {
    struct peri_context_params cp = peri_context_default_params();
    cp.n_seq_max = n_seq;
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_threads = 2;
    cp.attn = attn;
    cp.logits_all = true;
    if (cap) {
        cp.tensor_cb = on_tensor;
        cp.tensor_cb_data = cap;
    }
    peri_context *c = NULL;
    int rc = peri_context_init(m, cp, &c);
    CHECKF(rc == PERI_OK, "context: %s", peri_last_error());
    return c;
}

static void check_rows(fixture *f, const char *what, const float *got, const float *want, size_t n, double tol) {
    double d = test_max_abs_diff(got, want, n);
    CHECKF(d <= tol, "%s %s: max abs diff %.3g > %.3g", f->name, what, d, tol);
}

// full: the fixture has every expected tensor (the 32k one has only logits_nocache and the greedy run).
static void run_fixture(const char *shared, const char *name, int learned, int full) {
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s/fixtures/pldr/%s", shared, name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    fixture f = {.name = name};
    if (peri_safetensors_open(&f.exp, path, true) != PERI_OK) {
        CHECKF(0, "%s: %s", name, peri_last_error());
        return;
    }
    peri_model *m = NULL;
    int rc = peri_model_load(dir, peri_model_default_params(), &m);
    CHECKF(rc == PERI_OK, "%s: load: %s", name, peri_last_error());
    if (rc) { peri_safetensors_close(&f.exp); return; }
    const int V = peri_model_n_vocab(m), D = peri_model_n_embd(m), L = peri_model_n_layer(m);
    const peri_tensor *ids_t = need(&f, "input_ids");
    const int S = (int)ids_t->shape[0];
    const int32_t *ids = ids_t->data;

    // 1. prefill (= no-cache forward of the prompt), with intermediates
    capture cap = {0};
    peri_context *c = new_ctx(m, 1, 128, 128, PERI_ATTN_SDPA, &cap);
    if (!c) goto out;
    struct peri_batch b = {.n_seq = 1, .n_tokens = S, .tokens = ids, .logits_all = true};
    rc = peri_decode(c, &b);
    CHECKF(rc == PERI_OK, "%s prefill: %s", name, peri_last_error());
    const peri_tensor *t;
    if ((t = need(&f, "logits_nocache"))) check_rows(&f, "logits_nocache", peri_get_logits(c), t->data, (size_t)S * V, TOL_LOGITS);
    if ((t = peri_safetensors_find(&f.exp, "prefill_logits"))) check_rows(&f, "prefill_logits", peri_get_logits(c), t->data, (size_t)S * V, TOL_LOGITS);
    double diff;
    if ((t = peri_safetensors_find(&f.exp, "embed_ln")))
        CHECKF(cap.embed_ln && close_hidden(cap.embed_ln, t->data, (size_t)S * D, &diff), "%s embed_ln diff %.3g", name, diff);
    for (int l = 0; l < L; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "hidden_%d", l);
        if ((t = peri_safetensors_find(&f.exp, nm)))
            CHECKF(cap.hidden[l] && close_hidden(cap.hidden[l], t->data, (size_t)S * D, &diff), "%s %s diff %.3g", name, nm, diff);
    }
    if ((t = peri_safetensors_find(&f.exp, "last_hidden")))
        CHECKF(cap.hidden[L - 1] && close_hidden(cap.hidden[L - 1], t->data, (size_t)S * D, &diff), "%s last_hidden diff %.3g", name, diff);
    const peri_tensor *qt = peri_safetensors_find(&f.exp, "q_rope_0"), *kt = peri_safetensors_find(&f.exp, "k_rope_0");
    if (qt && kt && cap.q0 && cap.k0) {
        int H = (int)qt->shape[0], d = (int)qt->shape[2];
        float *tmp = malloc(sizeof(float) * (size_t)S * D);
        to_hsd(cap.q0, tmp, S, H, d);
        check_rows(&f, "q_rope_0", tmp, qt->data, (size_t)S * D, TOL_QK);
        to_hsd(cap.k0, tmp, S, H, d);
        check_rows(&f, "k_rope_0", tmp, kt->data, (size_t)S * D, TOL_QK);
        free(tmp);
    }
    // 2. the G-cache (deductive outputs) after prefill
    if (learned && full) {
        const char *kinds[4][2] = {{"A_raw_%d", "A_raw.%d"}, {"A_%d", "A.%d"}, {"A_LM_%d", "A_LM.%d"}, {"G_LM_%d", "G_LM.%d"}};
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 4; k++) {
                char en[64], sn[64];
                snprintf(en, sizeof en, kinds[k][0], l);
                snprintf(sn, sizeof sn, kinds[k][1], l);
                if (!(t = need(&f, en))) continue;
                size_t n = (size_t)peri_tensor_nelem(t);
                float *buf = malloc(n * sizeof(float));
                int64_t got = peri_get_state(c, sn, 0, buf, n);
                CHECKF(got == (int64_t)n, "%s state %s: %s", name, sn, peri_last_error());
                if (got == (int64_t)n)
                    CHECKF(close_hidden(buf, t->data, n, &diff), "%s %s diff %.3g", name, en, diff);
                free(buf);
            }
        double dag[3];
        CHECKF(peri_pldr_dag(c, 0, dag) == PERI_OK && isfinite(dag[0]) && isfinite(dag[1]) && isfinite(dag[2]),
               "%s dag: %s", name, peri_last_error());
    }
    // 3. teacher-forced decode with KV + G cache
    const peri_tensor *dt = full ? need(&f, "decode_ids") : NULL;
    const int N = dt ? (int)dt->shape[0] : 0;
    const int32_t *dec = dt ? dt->data : NULL;
    if (dt && (t = need(&f, "decode_logits"))) {
        for (int i = 0; i < N; i++) {
            struct peri_batch db = {.n_seq = 1, .n_tokens = 1, .tokens = &dec[i]};
            CHECKF(peri_decode(c, &db) == PERI_OK, "%s decode: %s", name, peri_last_error());
            char what[64];
            snprintf(what, sizeof what, "decode_logits[%d]", i);
            check_rows(&f, what, peri_get_logits(c), (const float *)t->data + (size_t)i * V, (size_t)V, TOL_LOGITS);
        }
    }
    // 4. decode without cache: the whole sequence each step (G from the full input)
    if ((t = peri_safetensors_find(&f.exp, "decode_logits_nocache")) && dt) {
        int32_t *all = malloc(sizeof(int32_t) * (size_t)(S + N));
        memcpy(all, ids, sizeof(int32_t) * (size_t)S);
        memcpy(all + S, dec, sizeof(int32_t) * (size_t)N);
        for (int i = 0; i < N; i++) {
            peri_seq_clear(c, 0);
            struct peri_batch nb = {.n_seq = 1, .n_tokens = S + i + 1, .tokens = all};
            CHECKF(peri_decode(c, &nb) == PERI_OK, "%s nocache: %s", name, peri_last_error());
            char what[64];
            snprintf(what, sizeof what, "decode_logits_nocache[%d]", i);
            check_rows(&f, what, peri_get_logits(c), (const float *)t->data + (size_t)i * V, (size_t)V, TOL_LOGITS);
        }
        free(all);
    }
    // 5. greedy generation with caches: ids exactly
    const peri_tensor *gt = peri_safetensors_find(&f.exp, "greedy_ids"), *gl = peri_safetensors_find(&f.exp, "greedy_logits");
    if (gt) {
        const int K = (int)gt->shape[0];
        peri_seq_clear(c, 0);
        struct peri_batch pb = {.n_seq = 1, .n_tokens = S, .tokens = ids};
        int ok = peri_decode(c, &pb) == PERI_OK, same = 1;
        for (int i = 0; i < K && ok; i++) {
            const float *lg = peri_get_logits(c);
            if (gl) {
                char what[64];
                snprintf(what, sizeof what, "greedy_logits[%d]", i);
                check_rows(&f, what, lg, (const float *)gl->data + (size_t)i * V, (size_t)V, TOL_LOGITS);
            }
            int32_t best = 0;
            for (int v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
            if (best != ((const int32_t *)gt->data)[i]) same = 0;
            struct peri_batch db = {.n_seq = 1, .n_tokens = 1, .tokens = &best};
            if (i + 1 < K) ok = peri_decode(c, &db) == PERI_OK;
        }
        CHECKF(ok && same, "%s greedy ids differ (%s)", name, ok ? "" : peri_last_error());
    }
    peri_context_free(c);

    // 6. left-padded batch, sdpa and eager
    const peri_tensor *bi = peri_safetensors_find(&f.exp, "batch_input_ids"), *bm = peri_safetensors_find(&f.exp, "batch_attention_mask"),
                      *bp = peri_safetensors_find(&f.exp, "batch_position_ids"), *bdi = peri_safetensors_find(&f.exp, "batch_decode_ids"),
                      *bdp = peri_safetensors_find(&f.exp, "batch_decode_position_ids");
    for (int mode = 0; mode < 2 && bi && bm && bp; mode++) {
        const char *lname = mode ? "batch_logits_eager" : "batch_logits", *dname = mode ? "batch_decode_logits_eager" : "batch_decode_logits";
        const int BS = (int)bi->shape[1];
        peri_context *bc = new_ctx(m, 2, 64, BS, mode ? PERI_ATTN_EAGER : PERI_ATTN_SDPA, NULL);
        if (!bc) break;
        int8_t mask[2 * 64];
        for (int i = 0; i < 2 * BS; i++) mask[i] = (int8_t)((const int32_t *)bm->data)[i];
        struct peri_batch pb = {.n_seq = 2, .n_tokens = BS, .tokens = bi->data, .pos = bp->data, .mask = mask, .logits_all = true};
        CHECKF(peri_decode(bc, &pb) == PERI_OK, "%s batch prefill: %s", name, peri_last_error());
        if ((t = need(&f, lname))) check_rows(&f, lname, peri_get_logits(bc), t->data, (size_t)2 * BS * V, TOL_LOGITS);
        if (bdi && bdp && (t = need(&f, dname))) {
            const int M = (int)bdi->shape[1];
            for (int j = 0; j < M; j++) {
                int32_t tok[2] = {((const int32_t *)bdi->data)[j], ((const int32_t *)bdi->data)[M + j]};
                int32_t pos[2] = {((const int32_t *)bdp->data)[j], ((const int32_t *)bdp->data)[M + j]};
                struct peri_batch db = {.n_seq = 2, .n_tokens = 1, .tokens = tok, .pos = pos};
                CHECKF(peri_decode(bc, &db) == PERI_OK, "%s batch decode: %s", name, peri_last_error());
                const float *lg = peri_get_logits(bc);
                for (int r = 0; r < 2; r++) {
                    char what[96];
                    snprintf(what, sizeof what, "%s[%d][%d]", dname, r, j);
                    check_rows(&f, what, lg + (size_t)r * V, (const float *)t->data + ((size_t)r * M + j) * V, (size_t)V, TOL_LOGITS);
                }
            }
        }
        peri_context_free(bc);
    }
    // 7. the second prompt alone
    if ((t = peri_safetensors_find(&f.exp, "prompt2_logits_nopad")) && bi && bm) {
        const int BS = (int)bi->shape[1], S2 = (int)t->shape[0];
        peri_context *c2 = new_ctx(m, 1, 64, BS, PERI_ATTN_SDPA, NULL);
        if (c2) {
            struct peri_batch pb = {.n_seq = 1, .n_tokens = S2, .tokens = (const int32_t *)bi->data + BS + (BS - S2), .logits_all = true};
            CHECKF(peri_decode(c2, &pb) == PERI_OK, "%s prompt2: %s", name, peri_last_error());
            check_rows(&f, "prompt2_logits_nopad", peri_get_logits(c2), t->data, (size_t)S2 * V, TOL_LOGITS);
            peri_context_free(c2);
        }
    }
out:
    free(cap.embed_ln);
    for (int l = 0; l < 8; l++) free(cap.hidden[l]);
    free(cap.q0);
    free(cap.k0);
    peri_model_free(m);
    peri_safetensors_close(&f.exp);
}

// Errors the API must report clearly instead of computing garbage.
static void check_errors(const char *shared) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fixtures/pldr/pldr-tiny-gptj", shared);
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) return;
    peri_context *c = new_ctx(m, 1, 16, 16, PERI_ATTN_SDPA, NULL);
    int32_t bad = 100000, ok = 5;
    struct peri_batch b = {.n_seq = 1, .n_tokens = 1, .tokens = &bad};
    CHECK(peri_decode(c, &b) == PERI_E_ARG && strstr(peri_last_error(), "outside the vocabulary"));
    int32_t many[17] = {0};
    b = (struct peri_batch){.n_seq = 1, .n_tokens = 17, .tokens = many};
    CHECK(peri_decode(c, &b) == PERI_E_ARG);
    b = (struct peri_batch){.n_seq = 1, .n_tokens = 1, .tokens = &ok};
    for (int i = 0; i < 16; i++) CHECK(peri_decode(c, &b) == PERI_OK);
    CHECK(peri_decode(c, &b) == PERI_E_CONTEXT_FULL && strstr(peri_last_error(), "context"));
    float buf[4];
    CHECK(peri_get_state(c, "G_LM.0", 0, buf, 4) == PERI_E_ARG);
    CHECK(peri_get_state(c, "nonsense", 0, NULL, 0) == PERI_E_ARG);
    peri_context_free(c);
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = 100000;
    CHECK(peri_context_init(m, cp, &c) == PERI_E_ARG);
    peri_model_free(m);
}

// The DAG metric against the grads fixture (original-convention forward of ids[:, :-1], float64 reference).
// Tolerance: the fixture README's 1e-5 relative (our float32 G-cache lands within 2e-7).
static void check_dag(const char *shared) {
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s/fixtures/grads/pldr-tiny", shared);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    peri_safetensors exp;
    if (peri_safetensors_open(&exp, path, true) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return; }
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); peri_safetensors_close(&exp); return; }
    const peri_tensor *ids = peri_safetensors_find(&exp, "input_ids");
    const char *names[3] = {"dag_L_A", "dag_L_Ap", "dag_L_G"};
    peri_context *c = new_ctx(m, 2, 16, 16, PERI_ATTN_SDPA, NULL);
    if (ids && c) {
        const int T = (int)ids->shape[1];
        double sum[3] = {0, 0, 0};
        for (int r = 0; r < 2; r++) {
            int32_t seq = r;
            struct peri_batch b = {.n_seq = 1, .n_tokens = T - 1, .seq_ids = &seq, .tokens = (const int32_t *)ids->data + r * T};
            CHECK(peri_decode(c, &b) == PERI_OK);
            double v[3];
            CHECKF(peri_pldr_dag(c, r, v) == PERI_OK, "%s", peri_last_error());
            for (int k = 0; k < 3; k++) sum[k] += v[k] / 2;
        }
        for (int k = 0; k < 3; k++) {
            const peri_tensor *t = peri_safetensors_find(&exp, names[k]);
            if (!t) { CHECKF(0, "%s missing", names[k]); continue; }
            double want = ((const float *)t->data)[0], rel = fabs(sum[k] - want) / fabs(want);
            CHECKF(rel <= 1e-5, "%s: got %.9g want %.9g (rel %.3g)", names[k], sum[k], want, rel);
        }
    }
    peri_context_free(c);
    peri_model_free(m);
    peri_safetensors_close(&exp);
}

// cache_first_G: prefill rows use their own G (logits as without the option); afterwards every sequence of
// the batch caches row 0's G.
static void check_cache_first_G(const char *shared) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fixtures/pldr/pldr-tiny-neox", shared);
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return; }
    int32_t ids[2][6] = {{14, 219, 117, 107, 247, 245}, {308, 60, 506, 275, 233, 294}};
    float *ref = NULL;
    for (int first = 0; first < 2; first++) {
        struct peri_context_params cp = peri_context_default_params();
        cp.n_seq_max = 2;
        cp.n_ctx = 16;
        cp.n_batch = 6;
        cp.logits_all = true;
        cp.cache_first_G = first;
        peri_context *c;
        CHECK(peri_context_init(m, cp, &c) == PERI_OK);
        struct peri_batch b = {.n_seq = 2, .n_tokens = 6, .tokens = &ids[0][0], .logits_all = true};
        CHECK(peri_decode(c, &b) == PERI_OK);
        const size_t n = (size_t)12 * peri_model_n_vocab(m);
        if (!first) {
            ref = malloc(n * sizeof(float));
            memcpy(ref, peri_get_logits(c), n * sizeof(float));
        } else {
            CHECKF(test_max_abs_diff(ref, peri_get_logits(c), n) == 0, "cache_first_G changed the prefill logits");
            float g0[4 * 16 * 16], g1[4 * 16 * 16];
            for (int l = 0; l < 2; l++) {
                char nm[16];
                snprintf(nm, sizeof nm, "G_LM.%d", l);
                CHECK(peri_get_state(c, nm, 0, g0, 1024) == 1024 && peri_get_state(c, nm, 1, g1, 1024) == 1024);
                CHECKF(test_max_abs_diff(g0, g1, 1024) == 0, "sequence 1 does not cache sequence 0's G in layer %d", l);
            }
        }
        peri_context_free(c);
    }
    free(ref);
    peri_model_free(m);
}

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) {
        fprintf(stderr, "test_pldr: ../shared not found (PERI_SHARED_DIR); skipping\n");
        return TEST_SKIP;
    }
    run_fixture(shared, "pldr-tiny-gptj", 1, 1);
    run_fixture(shared, "pldr-tiny-neox", 1, 1);
    run_fixture(shared, "pldr-tiny-bf16", 1, 1);
    run_fixture(shared, "pldr-tiny-identity", 0, 1);
    run_fixture(shared, "pldr-small-vocab32k", 1, 0);
    check_errors(shared);
    check_dag(shared);
    check_cache_first_G(shared);
    return TEST_END();
}
