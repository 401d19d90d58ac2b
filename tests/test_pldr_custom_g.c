// custom_G_type "external" and "random" (no ../shared needed): a G read from a file gives exactly the logits
// of the same model with that G saved in its past_G_values buffer, differs from the identity G, and bad
// files or models are refused with a clear message.
#include "formats/safetensors.h"
#include "peri.h"
#include "test.h"

#include <math.h>
#include <unistd.h>

static const char *CFG =
    "{\"model_type\":\"pldrllm\",\"vocab_size\":64,\"hidden_size\":32,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":2,\"head_dim\":16,\"intermediate_size\":48,\"max_position_embeddings\":32,"
    "\"custom_G_type\":\"%s\"}";

static float *logits_of(const char *dir, const char *gfile, int *n_out) {
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return NULL; }
    if (gfile && peri_pldr_load_external_G(m, gfile) != PERI_OK) {
        CHECKF(0, "%s", peri_last_error());
        peri_model_free(m);
        return NULL;
    }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = 16;
    cp.logits_all = true;
    cp.n_threads = 1;
    peri_context *c;
    CHECK(peri_context_init(m, cp, &c) == PERI_OK);
    int32_t ids[6] = {3, 9, 27, 1, 50, 12};
    struct peri_batch b = {.n_seq = 1, .n_tokens = 6, .tokens = ids, .logits_all = true};
    CHECK(peri_decode(c, &b) == PERI_OK);
    int n = 6 * peri_model_n_vocab(m);
    float *out = malloc(sizeof(float) * (size_t)n);
    memcpy(out, peri_get_logits(c), sizeof(float) * (size_t)n);
    *n_out = n;
    peri_context_free(c);
    peri_model_free(m);
    return out;
}

// With a G that does not depend on the prompt, attention is causal: row i of one long prefill must give the logits
// of a prefill of tokens 0..i, of a second call after a cached prefix, and of cached decode. 80 tokens are three
// blocks of attn_task's query rows (PLDR_ABLOCK 32), so this checks each block's keys and causal mask.
static void check_blocks(const char *dir) {
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return; }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = 96;
    cp.n_batch = 96;
    cp.logits_all = true;
    cp.n_threads = 2;
    peri_context *c;
    CHECK(peri_context_init(m, cp, &c) == PERI_OK);
    enum { T = 80 };
    const int V = peri_model_n_vocab(m);
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = (i * 37 + 11) % V;
    float *all = malloc(sizeof(float) * (size_t)T * V);
    struct peri_batch b = {.n_seq = 1, .n_tokens = T, .tokens = ids, .logits_all = true};
    CHECK(peri_decode(c, &b) == PERI_OK);
    memcpy(all, peri_get_logits(c), sizeof(float) * (size_t)T * V);
    double big = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) big = fabs(all[i]) > big ? fabs(all[i]) : big;
    const double tol = 1e-5 * (1.0 + big);   // only the order of float sums differs
    static const int ends[] = {0, 1, 31, 32, 33, 63, 64, 79};
    for (size_t e = 0; e < sizeof ends / sizeof ends[0]; e++) {
        peri_seq_clear(c, 0);
        b = (struct peri_batch){.n_seq = 1, .n_tokens = ends[e] + 1, .tokens = ids, .logits_all = true};
        CHECK(peri_decode(c, &b) == PERI_OK);
        double dd = test_max_abs_diff(peri_get_logits(c) + (size_t)ends[e] * V, all + (size_t)ends[e] * V, (size_t)V);
        CHECKF(dd <= tol, "prefill of %d tokens: last row differs from row %d of one prefill by %g", ends[e] + 1, ends[e], dd);
    }
    // a cached prefix of 10, then 65 tokens in one call (blocks of 32, 32 and 1 after it), then the last 5 decoded
    peri_seq_clear(c, 0);
    b = (struct peri_batch){.n_seq = 1, .n_tokens = 10, .tokens = ids, .logits_all = true};
    CHECK(peri_decode(c, &b) == PERI_OK);
    b = (struct peri_batch){.n_seq = 1, .n_tokens = 65, .tokens = ids + 10, .logits_all = true};
    CHECK(peri_decode(c, &b) == PERI_OK);
    double dd = test_max_abs_diff(peri_get_logits(c), all + (size_t)10 * V, (size_t)65 * V);
    CHECKF(dd <= tol, "65 tokens after a cached prefix of 10 differ from one prefill by %g", dd);
    for (int i = 75; i < T; i++) {
        b = (struct peri_batch){.n_seq = 1, .n_tokens = 1, .tokens = ids + i, .logits_all = true};
        CHECK(peri_decode(c, &b) == PERI_OK);
        dd = test_max_abs_diff(peri_get_logits(c), all + (size_t)i * V, (size_t)V);
        CHECKF(dd <= tol, "decoded token %d differs from row %d of one prefill by %g", i, i, dd);
    }
    free(all);
    peri_context_free(c);
    peri_model_free(m);
}

int main(void) {
    char dir[256], ext[300], rnd[300], gpath[300], cfg[1024], cmd[1024];
    snprintf(dir, sizeof dir, "/tmp/peri-customg-%d", (int)getpid());
    snprintf(ext, sizeof ext, "%s/ext", dir);
    snprintf(rnd, sizeof rnd, "%s/rnd", dir);
    snprintf(gpath, sizeof gpath, "%s/g.safetensors", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    CHECK(system(cmd) == 0);

    snprintf(cfg, sizeof cfg, CFG, "external");
    CHECKF(peri_model_init_random(cfg, 11, ext) == PERI_OK, "%s", peri_last_error());

    // G = a random matrix per layer and head, [L=2, H=2, 16, 16]
    const int L = 2, H = 2, d = 16, n = L * H * d * d;
    float *G = malloc(sizeof(float) * n);
    uint32_t s = 12345;
    for (int i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        G[i] = ((s >> 8) / 16777216.0f - 0.5f) * 0.5f + ((i / d) % d == i % d ? 1.0f : 0.0f);
    }
    peri_tensor gt = {.name = "G_LM", .type = PERI_TYPE_F32, .n_dims = 4, .shape = {L, H, d, d}, .data = G, .nbytes = sizeof(float) * n};
    CHECK(peri_safetensors_write(gpath, &gt, 1, NULL, 0) == PERI_OK);

    // the "random" twin: same weights, G saved in decoder.past_G_values[:, 2]
    snprintf(cfg, sizeof cfg, CFG, "random");
    CHECK(peri_model_init_random(cfg, 11, rnd) == PERI_OK);
    char wpath[400];
    snprintf(wpath, sizeof wpath, "%s/model.safetensors", rnd);
    peri_safetensors st;
    CHECK(peri_safetensors_open(&st, wpath, false) == PERI_OK);
    peri_tensor *ts = calloc((size_t)st.n_tensors, sizeof *ts);
    float *pg = NULL;
    for (int i = 0; i < st.n_tensors; i++) {
        ts[i] = st.tensors[i];
        if (!strcmp(ts[i].name, "decoder.past_G_values")) {
            pg = malloc(ts[i].nbytes);
            memcpy(pg, ts[i].data, ts[i].nbytes);
            for (int l = 0; l < L; l++) memcpy(pg + ((size_t)l * 3 + 2) * H * d * d, G + (size_t)l * H * d * d, sizeof(float) * H * d * d);
            ts[i].data = pg;
        }
    }
    CHECK(pg != NULL);
    char wpath2[400];
    snprintf(wpath2, sizeof wpath2, "%s/model2.safetensors", rnd);
    CHECK(peri_safetensors_write(wpath2, ts, st.n_tensors, NULL, 0) == PERI_OK);
    peri_safetensors_close(&st);
    free(ts);
    free(pg);
    CHECK(rename(wpath2, wpath) == 0);

    int n1 = 0, n2 = 0, n3 = 0;
    float *l_id = logits_of(ext, NULL, &n1);
    float *l_ext = logits_of(ext, gpath, &n2);
    float *l_rnd = logits_of(rnd, NULL, &n3);
    if (l_id && l_ext && l_rnd && n1 == n2 && n2 == n3) {
        CHECKF(test_max_abs_diff(l_ext, l_rnd, (size_t)n2) == 0, "external G and the saved buffer disagree: %g",
               test_max_abs_diff(l_ext, l_rnd, (size_t)n2));
        CHECKF(test_max_abs_diff(l_ext, l_id, (size_t)n2) > 1e-3, "the external G had no effect");
    }
    free(l_id);
    free(l_ext);
    free(l_rnd);

    char blk[300];
    snprintf(blk, sizeof blk, "%s/blocks", dir);
    snprintf(cfg, sizeof cfg, "{\"model_type\":\"pldrllm\",\"vocab_size\":64,\"hidden_size\":32,\"num_hidden_layers\":2,"
             "\"num_attention_heads\":2,\"head_dim\":16,\"intermediate_size\":48,\"max_position_embeddings\":128,"
             "\"custom_G_type\":\"random\"}");
    CHECK(peri_model_init_random(cfg, 5, blk) == PERI_OK);
    check_blocks(blk);

    // refusals
    peri_model *m;
    CHECK(peri_model_load(ext, peri_model_default_params(), &m) == PERI_OK);
    CHECK(peri_pldr_load_external_G(m, "/nonexistent.safetensors") == PERI_E_IO);
    peri_tensor bad = gt;
    bad.shape[0] = 3;
    bad.nbytes = sizeof(float) * 3 * H * d * d;
    float *big = calloc(3 * H * d * d, sizeof(float));
    bad.data = big;
    CHECK(peri_safetensors_write(gpath, &bad, 1, NULL, 0) == PERI_OK);
    CHECK(peri_pldr_load_external_G(m, gpath) == PERI_E_FORMAT && strstr(peri_last_error(), "G_LM must be"));
    free(big);
    peri_model_free(m);
    snprintf(cfg, sizeof cfg, "{\"model_type\":\"pldrllm\",\"vocab_size\":64,\"hidden_size\":32,\"num_hidden_layers\":1,"
             "\"num_attention_heads\":2,\"head_dim\":16,\"intermediate_size\":48,\"A_dff\":8,\"num_reslayerA\":1,"
             "\"max_position_embeddings\":32}");
    char lrn[300];
    snprintf(lrn, sizeof lrn, "%s/learned", dir);
    CHECK(peri_model_init_random(cfg, 1, lrn) == PERI_OK);
    CHECK(peri_model_load(lrn, peri_model_default_params(), &m) == PERI_OK);
    CHECK(peri_pldr_load_external_G(m, gpath) == PERI_E_ARG && strstr(peri_last_error(), "custom_G_type"));
    peri_model_free(m);
    free(G);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return TEST_END();
}
