// Task heads against ../shared/fixtures/heads (HF classes, float64 reference): the final hidden states, token
// classification logits, QA start/end logits at every position, and the pooled sequence-classification
// logits, for a left-padded batch (positions 0..S-1 in every row, as HF without position_ids) and a
// right-padded one; PLDR-LLM with both sdpa and eager treatment of padding queries. Tolerance 1e-4 (README).
#include "formats/safetensors.h"
#include "peri.h"
#include "test.h"

#include <unistd.h>

static const double TOL = 1e-4;

typedef struct { float *last; int L; } cap_t;

static void on_tensor(const char *name, int32_t seq, const float *data, int32_t n_dims, const int64_t *shape, void *ud) {
    cap_t *c = ud;
    char want[32];
    snprintf(want, sizeof want, "hidden.%d", c->L - 1);
    if (strcmp(name, want) && strcmp(name, "last_hidden")) return;
    size_t n = 1;
    for (int i = 0; i < n_dims; i++) n *= (size_t)shape[i];
    memcpy(c->last + (size_t)seq * n, data, n * sizeof(float));
}

// Runs the 2-row batch; returns the logits (every position) and fills last hidden [2, S, D].
static float *run_batch(peri_model *m, const int32_t *ids, const int32_t *mask32, int S, int attn, float *last) {
    cap_t cap = {last, peri_model_n_layer(m)};
    struct peri_context_params cp = peri_context_default_params();
    cp.n_seq_max = 2;
    cp.n_ctx = S;
    cp.n_batch = S;
    cp.logits_all = true;
    cp.attn = attn;
    cp.kv_type = PERI_KV_F32;   // the float64 references are matched by float32 caches (docs/plm.md)
    cp.tensor_cb = on_tensor;
    cp.tensor_cb_data = &cap;
    peri_context *c;
    if (peri_context_init(m, cp, &c) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return NULL; }
    int8_t mask[64];
    int32_t pos[64];
    for (int i = 0; i < 2 * S; i++) { mask[i] = (int8_t)mask32[i]; pos[i] = i % S; }
    struct peri_batch b = {.n_seq = 2, .n_tokens = S, .tokens = ids, .pos = pos, .mask = mask, .logits_all = true};
    float *out = NULL;
    if (peri_decode(c, &b) == PERI_OK) {
        size_t n = (size_t)2 * S * peri_model_n_outputs(m);
        out = malloc(n * sizeof(float));
        memcpy(out, peri_get_logits(c), n * sizeof(float));
    } else {
        CHECKF(0, "%s", peri_last_error());
    }
    peri_context_free(c);
    return out;
}

static const float *get(const peri_safetensors *e, const char *name) {
    const peri_tensor *t = peri_safetensors_find(e, name);
    if (!t) fprintf(stderr, "expected tensor %s missing\n", name);
    return t ? t->data : NULL;
}

static void check(const char *fix, const char *what, const float *got, const float *want, size_t n) {
    if (!got || !want) { CHECKF(0, "%s %s: missing", fix, what); return; }
    double d = test_max_abs_diff(got, want, n);
    CHECKF(d <= TOL, "%s %s: max abs diff %.3g", fix, what, d);
}

static void run(const char *shared, const char *fix, int pldr) {
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s/fixtures/heads/%s", shared, fix);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    peri_safetensors e;
    if (peri_safetensors_open(&e, path, true) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return; }
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) {
        CHECKF(0, "%s: %s", fix, peri_last_error());
        peri_safetensors_close(&e);
        return;
    }
    const peri_tensor *it = peri_safetensors_find(&e, "input_ids");
    const int S = (int)it->shape[1], D = peri_model_n_embd(m), K = peri_model_n_outputs(m), head = peri_model_head(m);
    const int32_t *ids = it->data, *mask = (const int32_t *)get(&e, "attention_mask");
    for (int mode = 0; mode < (pldr ? 2 : 1); mode++) {
        const char *sfx = mode ? "_eager" : "";
        float *last = calloc((size_t)2 * S * D, sizeof(float));
        float *lg = run_batch(m, ids, mask, S, mode ? PERI_ATTN_EAGER : PERI_ATTN_SDPA, last);
        char nm[64];
        snprintf(nm, sizeof nm, "last_hidden%s", sfx);
        const float *want = get(&e, nm);
        if (pldr) {
            check(fix, nm, last, want, (size_t)2 * S * D);
        } else if (want) { // PLM pad rows: compare real tokens only (README)
            for (int r = 0; r < 2; r++)
                for (int i = 0; i < S; i++)
                    if (mask[r * S + i]) check(fix, nm, last + ((size_t)r * S + i) * D, want + ((size_t)r * S + i) * D, (size_t)D);
        }
        if (lg && head == PERI_HEAD_TOKEN_CLS) {
            snprintf(nm, sizeof nm, "logits%s", sfx);
            if (pldr) check(fix, nm, lg, get(&e, nm), (size_t)2 * S * K);
            else
                for (int r = 0; r < 2; r++)
                    for (int i = 0; i < S; i++)
                        if (mask[r * S + i]) check(fix, nm, lg + ((size_t)r * S + i) * K, get(&e, nm) + ((size_t)r * S + i) * K, (size_t)K);
        }
        if (lg && head == PERI_HEAD_QA) {
            float *st = malloc(sizeof(float) * 2 * S), *en = malloc(sizeof(float) * 2 * S);
            for (int i = 0; i < 2 * S; i++) { st[i] = lg[2 * i]; en[i] = lg[2 * i + 1]; }
            snprintf(nm, sizeof nm, "start_logits%s", sfx);
            check(fix, nm, st, get(&e, nm), (size_t)2 * S);
            snprintf(nm, sizeof nm, "end_logits%s", sfx);
            check(fix, nm, en, get(&e, nm), (size_t)2 * S);
            free(st);
            free(en);
        }
        if (lg && head == PERI_HEAD_SEQ_CLS) {
            const int32_t *idx = (const int32_t *)get(&e, "last_non_pad_index");
            float pooled[2 * 16];
            for (int r = 0; r < 2; r++) {
                int32_t k = peri_seq_cls_pool_index(m, ids + r * S, S);
                CHECKF(idx && k == idx[r], "%s pool index row %d: %d", fix, r, k);
                memcpy(pooled + r * K, lg + ((size_t)r * S + k) * K, sizeof(float) * K);
            }
            snprintf(nm, sizeof nm, "logits%s", sfx);
            check(fix, nm, pooled, get(&e, nm), (size_t)2 * K);
            if (!mode) { // right padding
                const int32_t *rids = (const int32_t *)get(&e, "input_ids_rightpad"), *rmask = (const int32_t *)get(&e, "attention_mask_rightpad");
                const int32_t *ridx = (const int32_t *)get(&e, "last_non_pad_index_rightpad");
                float *rl = rids && rmask ? run_batch(m, rids, rmask, S, PERI_ATTN_SDPA, last) : NULL;
                for (int r = 0; rl && r < 2; r++) {
                    int32_t k = peri_seq_cls_pool_index(m, rids + r * S, S);
                    CHECKF(ridx && k == ridx[r], "%s rightpad pool index row %d: %d", fix, r, k);
                    memcpy(pooled + r * K, rl + ((size_t)r * S + k) * K, sizeof(float) * K);
                }
                if (rl) check(fix, "logits_rightpad", pooled, get(&e, "logits_rightpad"), (size_t)2 * K);
                free(rl);
            }
        }
        free(lg);
        free(last);
    }
    if (head == PERI_HEAD_SEQ_CLS || head == PERI_HEAD_TOKEN_CLS)
        CHECKF(peri_model_label(m, 0) && peri_model_label(m, K - 1), "%s: labels from id2label", fix);
    peri_model_free(m);
    peri_safetensors_close(&e);
}

// Without a pad id, a batch cannot be pooled (HF raises); one sequence pools on its last token.
static void check_no_pad(void) {
    char dir[128], cfg[1024];
    snprintf(dir, sizeof dir, "/tmp/peri-nopad-%d", (int)getpid());
    snprintf(cfg, sizeof cfg, "{\"architectures\":[\"PldrllmForSequenceClassification\"],\"model_type\":\"pldrllm\","
             "\"vocab_size\":64,\"hidden_size\":32,\"num_hidden_layers\":1,\"num_attention_heads\":2,\"head_dim\":16,"
             "\"intermediate_size\":48,\"A_dff\":8,\"num_reslayerA\":1,\"max_position_embeddings\":32,\"pad_token_id\":null,"
             "\"id2label\":{\"0\":\"a\",\"1\":\"b\"}}");
    CHECKF(peri_model_init_random(cfg, 3, dir) == PERI_OK, "%s", peri_last_error());
    peri_model *m;
    if (peri_model_load(dir, peri_model_default_params(), &m) != PERI_OK) { CHECKF(0, "%s", peri_last_error()); return; }
    CHECK(peri_model_pad(m) < 0 && peri_model_head(m) == PERI_HEAD_SEQ_CLS && peri_model_n_outputs(m) == 2);
    peri_token ids[2][4] = {{5, 6, 7, 8}, {0, 0, 9, 10}};
    int32_t idx[2];
    CHECK(peri_seq_cls_pool(m, &ids[0][0], 2, 4, idx) == PERI_E_ARG && strstr(peri_last_error(), "pad_token_id"));
    CHECK(peri_seq_cls_pool(m, &ids[1][0], 1, 4, idx) == PERI_OK && idx[0] == 3);
    peri_model_free(m);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void) {
    check_no_pad();
    const char *shared = test_shared_dir();
    if (!shared) { fprintf(stderr, "test_heads: ../shared not found; skipping\n"); return TEST_SKIP; }
    run(shared, "pldr-seqcls", 1);
    run(shared, "pldr-tokencls", 1);
    run(shared, "pldr-qa", 1);
    const char *only = getenv("PERI_HEADS_PLDR_ONLY");
    if (!only) {
        run(shared, "plm-seqcls", 0);
        run(shared, "plm-tokencls", 0);
    }
    return TEST_END();
}
