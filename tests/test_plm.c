// PLM end to end on the fixtures of ../shared/fixtures/plm: logits, teacher-forced decode, greedy ids and
// layer intermediates against llama.cpp and the float64 reference, in both cache modes (latent and full).
#include "formats/safetensors.h"
#include "runtime/model.h"
#include "peri.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_T 64

static char g_fix[1024];           // the fixture folder being tested
static peri_safetensors g_exp;     // its expected.safetensors
static int g_threads = 2;
static int g_verbose;              // env PERI_TEST_VERBOSE: print every measured difference

#define REPORT(...) do { if (g_verbose) { printf(__VA_ARGS__); putchar('\n'); } } while (0)

static const peri_tensor *ref(const char *name) {
    const peri_tensor *t = peri_safetensors_find(&g_exp, name);
    CHECKF(t != NULL, "%s: expected tensor '%s' missing", g_fix, name);
    return t;
}
static const float *ref_f32(const char *name, int64_t *nelem) {
    const peri_tensor *t = ref(name);
    if (!t) return NULL;
    CHECKF(t->type == PERI_TYPE_F32, "%s is not F32", name);
    if (nelem) *nelem = peri_tensor_nelem(t);
    return t->data;
}
static int ref_ids(const char *name, int32_t *out, int max) {
    const peri_tensor *t = ref(name);
    if (!t || t->type != PERI_TYPE_I32) return 0;
    int n = (int)peri_tensor_nelem(t);
    if (n > max) n = max;
    memcpy(out, t->data, sizeof(int32_t) * (size_t)n);
    return n;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}
static float top2_margin(const float *v, int n) {
    int b = argmax(v, n);
    float s = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != b && v[i] > s) s = v[i];
    return v[b] - s;
}

// ---- intermediates through the tensor callback ---------------------------------------------------------------

struct capture {
    const char *want[16];
    float *data[16];
    int64_t n[16];
    int64_t shape[16][3];
};
static void capture_cb(const char *name, int32_t seq, const float *data, int32_t n_dims, const int64_t *shape,
                       void *ud) {
    struct capture *cp = ud;
    for (int i = 0; i < 16 && cp->want[i]; i++) {
        if (strcmp(cp->want[i], name) || cp->data[i]) continue;
        int64_t n = 1;
        for (int d = 0; d < n_dims; d++) n *= shape[d], cp->shape[i][d] = shape[d];
        cp->data[i] = malloc(sizeof(float) * (size_t)n);
        memcpy(cp->data[i], data, sizeof(float) * (size_t)n);
        cp->n[i] = n;
    }
}

// ---- running the model ---------------------------------------------------------------------------------------

// Cache element type of the contexts new_ctx makes: F32 reproduces the references to fp32 noise; the F16
// default is checked separately with the fixtures' f16 tolerance (F16_TOL).
static int g_kv_type = PERI_KV_F32;
// llama.cpp's F16 cache moves these logits by 5e-3 to 1.2e-2 (fixtures README); their f16 tolerance.
#define F16_TOL 3e-2

static peri_context *new_ctx(peri_model *m, bool full, peri_tensor_cb cb, void *ud, int n_seq) {
    struct peri_context_params cp = peri_context_default_params();
    cp.kv_type = g_kv_type;
    cp.n_ctx = peri_model_n_ctx_train(m) < 64 ? peri_model_n_ctx_train(m) : 64;
    cp.n_threads = g_threads;
    cp.kv_full = full;
    cp.tensor_cb = cb;
    cp.tensor_cb_data = ud;
    cp.n_seq_max = n_seq;
    cp.logits_all = true;
    peri_context *c = NULL;
    int rc = peri_context_init(m, cp, &c);
    CHECKF(rc == 0, "context: %s", peri_last_error());
    return c;
}

static int decode1(peri_context *c, const int32_t *ids, int n, bool all) {
    struct peri_batch b = {.n_seq = 1, .n_tokens = n, .tokens = ids, .logits_all = all};
    int rc = peri_decode(c, &b);
    CHECKF(rc == 0, "decode: %s", peri_last_error());
    return rc;
}

// What to compare one model file against.
struct expect {
    const char *prefill[3];        // [T, V] logits references (NULL-terminated)
    double prefill_tol[3];
    const char *decode[2];         // [N, V] teacher-forced references
    double decode_tol[2];
    const char *greedy;            // [G] ids
    const char *margins;           // [G] margins of those ids (NULL: compare all)
    double greedy_tol;             // compare greedy ids while the reference margin exceeds 2x this
    bool argmax_vs_prefill0;       // check argmax agreement with prefill[0] where its own margin is clear
    bool layer0;                   // compare the layer intermediates (f32 weights only)
    bool no_f16;                   // skip the F16-cache runs (quantized files: covered by the others)
};

static void check_layer0(peri_model *m, bool full, const int32_t *ids, int T, const char *what) {
    struct capture cp = {.want = {"kv_latent.0", "q.0", "k_rope.0", "attn_probs.0", "hidden.0", "hidden.1",
                                  "last_hidden"}};
    peri_context *c = new_ctx(m, full, capture_cb, &cp, 1);
    if (!c) return;
    decode1(c, ids, T, true);
    const char *refn[] = {"kv_latent_0", "q_0", "k_rope_0", "attn_probs_0", "hidden_0", "hidden_1", "last_hidden"};
    const double tol[] = {2e-5, 2e-5, 2e-5, 1e-5, 2e-4, 2e-4, 2e-4};
    for (int i = 0; i < 7; i++) {
        int64_t n;
        const float *r = ref_f32(refn[i], &n);
        CHECKF(cp.data[i] != NULL, "%s: intermediate %s not emitted", what, cp.want[i]);
        if (!r || !cp.data[i]) continue;
        CHECKF(cp.n[i] == n, "%s: %s has %lld values, reference %lld", what, cp.want[i], (long long)cp.n[i],
               (long long)n);
        if (cp.n[i] != n) continue;
        double d;
        if (i == 1) {   // ours [T, H, dk], reference [H, T, dk]
            int64_t H = cp.shape[i][1], dk = cp.shape[i][2];
            d = 0;
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < H; h++) {
                    double e = test_max_abs_diff(cp.data[i] + (t * H + h) * dk, r + (h * T + t) * dk, (size_t)dk);
                    if (e > d) d = e;
                }
        } else {
            d = test_max_abs_diff(cp.data[i], r, (size_t)n);
        }
        REPORT("%s: %s: %.3g", what, refn[i], d);
        CHECKF(d <= tol[i], "%s: %s differs from the reference by %g (tolerance %g)", what, refn[i], d, tol[i]);
    }
    for (int i = 0; i < 16; i++) free(cp.data[i]);
    peri_context_free(c);
}

static void run_model(const char *file, const struct expect *e) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", g_fix, file);
    int32_t ids[MAX_T], dec[MAX_T], gref[MAX_T];
    int T = ref_ids("input_ids", ids, MAX_T);
    int N = peri_safetensors_find(&g_exp, "decode_ids") ? ref_ids("decode_ids", dec, MAX_T) : 0;
    peri_model *m = NULL;
    int rc = peri_model_load(path, peri_model_default_params(), &m);
    CHECKF(rc == 0, "load %s: %s", path, peri_last_error());
    if (rc) return;
    CHECK(strcmp(peri_model_arch(m), "plm") == 0);
    const int V = peri_model_n_vocab(m);
    float *lg = malloc(sizeof(float) * (size_t)V * MAX_T);
    const struct expect e32 = *e;
    for (int mode = 0; mode < (e32.no_f16 ? 2 : 4); mode++) {
        // Modes: latent/full with an F32 cache, then latent/full with the default F16 cache, whose tolerance is
        // the fixtures' f16 one (and greedy ids are compared while the reference margin exceeds twice that).
        const int full = mode & 1;
        struct expect ef = e32;
        g_kv_type = mode < 2 ? PERI_KV_F32 : PERI_KV_DEFAULT;
        if (mode >= 2) {
            for (int k = 0; k < 3; k++) ef.prefill_tol[k] = ef.prefill_tol[k] > F16_TOL ? ef.prefill_tol[k] : F16_TOL;
            for (int k = 0; k < 2; k++) ef.decode_tol[k] = ef.decode_tol[k] > F16_TOL ? ef.decode_tol[k] : F16_TOL;
            ef.greedy_tol = ef.greedy_tol > F16_TOL ? ef.greedy_tol : F16_TOL;
            ef.layer0 = false;
        }
        e = &ef;
        char what[1300];
        snprintf(what, sizeof what, "%s [%s %s cache]", path, full ? "full" : "latent", mode < 2 ? "f32" : "f16");
        peri_context *c = new_ctx(m, full, NULL, NULL, 1);
        if (!c) continue;

        // Prefill, every row.
        if (decode1(c, ids, T, true) == 0) {
            memcpy(lg, peri_get_logits(c), sizeof(float) * (size_t)V * (size_t)T);
            for (int k = 0; k < 3 && e->prefill[k]; k++) {
                int64_t n;
                const float *r = ref_f32(e->prefill[k], &n);
                if (!r) continue;
                CHECKF(n == (int64_t)T * V, "%s: %s has %lld values", what, e->prefill[k], (long long)n);
                double d = n == (int64_t)T * V ? test_max_abs_diff(lg, r, (size_t)n) : INFINITY;
                REPORT("%s: prefill vs %s: %.3g", what, e->prefill[k], d);
                CHECKF(d <= e->prefill_tol[k], "%s: prefill vs %s: max abs %g > %g", what, e->prefill[k], d,
                       e->prefill_tol[k]);
                if (k == 0 && e->argmax_vs_prefill0)
                    for (int t = 0; t < T; t++)
                        if (top2_margin(r + (size_t)t * V, V) > 2 * e->prefill_tol[0])
                            CHECKF(argmax(lg + (size_t)t * V, V) == argmax(r + (size_t)t * V, V),
                                   "%s: row %d argmax differs from %s", what, t, e->prefill[0]);
            }
        }
        // Teacher-forced decode, one token per call.
        for (int i = 0; i < N; i++) {
            if (decode1(c, &dec[i], 1, false)) break;
            CHECK(peri_get_logits_count(c) == 1);
            for (int k = 0; k < 2 && e->decode[k]; k++) {
                int64_t n;
                const float *r = ref_f32(e->decode[k], &n);
                if (!r || n != (int64_t)N * V) continue;
                double d = test_max_abs_diff(peri_get_logits(c), r + (size_t)i * V, (size_t)V);
                REPORT("%s: decode %d vs %s: %.3g", what, i, e->decode[k], d);
                CHECKF(d <= e->decode_tol[k], "%s: decode step %d vs %s: max abs %g > %g", what, i, e->decode[k], d,
                       e->decode_tol[k]);
            }
        }
        // The prompt split into a prefill and single tokens must give the same rows (cache reuse), here
        // against the first prefill reference.
        peri_seq_clear(c, -1);
        int half = T / 2;
        const float *r0 = e->prefill[0] ? ref_f32(e->prefill[0], NULL) : NULL;
        if (r0 && decode1(c, ids, half, true) == 0) {
            double d = test_max_abs_diff(peri_get_logits(c), r0, (size_t)half * V);
            for (int t = half; t < T && d <= e->prefill_tol[0]; t++) {
                if (decode1(c, &ids[t], 1, true)) break;
                double dt = test_max_abs_diff(peri_get_logits(c), r0 + (size_t)t * V, (size_t)V);
                if (dt > d) d = dt;
            }
            CHECKF(d <= e->prefill_tol[0], "%s: split prefill vs %s: max abs %g > %g", what, e->prefill[0], d,
                   e->prefill_tol[0]);
        }
        // Greedy from a fresh cache.
        if (e->greedy) {
            peri_seq_clear(c, 0);
            CHECK(peri_seq_len(c, 0) == 0);
            int G = ref_ids(e->greedy, gref, MAX_T);
            const float *mg = e->margins ? ref_f32(e->margins, NULL) : NULL;
            int32_t tok;
            int ok = decode1(c, ids, T, false) == 0, cmp = 0, same = 1;
            for (int g = 0; ok && g < G; g++) {
                tok = argmax(peri_get_logits(c), V);
                if (mg && mg[g] < 2 * e->greedy_tol) break;   // a near tie: the reference's noise decides
                cmp++;
                if (tok != gref[g]) {
                    CHECKF(tok == gref[g], "%s: greedy step %d: %d, reference %s says %d", what, g, tok, e->greedy,
                           gref[g]);
                    same = 0;
                    break;
                }
                ok = decode1(c, &tok, 1, false) == 0;
            }
            CHECKF(cmp > 0 || !same, "%s: no greedy step compared", what);
        }
        peri_context_free(c);
        if (e->layer0) check_layer0(m, full, ids, T, what);
    }
    g_kv_type = PERI_KV_F32;
    free(lg);
    peri_model_free(m);
}

static int open_fixture(const char *shared, const char *name) {
    snprintf(g_fix, sizeof g_fix, "%s/fixtures/plm/%s", shared, name);
    char p[1200];
    snprintf(p, sizeof p, "%s/expected.safetensors", g_fix);
    int rc = peri_safetensors_open(&g_exp, p, true);
    CHECKF(rc == 0, "%s: %s", p, peri_last_error());
    return rc;
}

// Left-padded batch of two sequences: the padded row's real tokens must match the reference rows.
static void check_padded_batch(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", g_fix);
    int32_t ids[MAX_T];
    int T = ref_ids("input_ids", ids, MAX_T);
    const float *r = ref_f32("hf_logits", NULL);
    peri_model *m = NULL;
    if (!r || peri_model_load(path, peri_model_default_params(), &m)) {
        CHECKF(0, "padded batch: %s", peri_last_error());
        return;
    }
    const int V = peri_model_n_vocab(m), P = 3;
    for (int full = 0; full <= 1; full++) {
        peri_context *c = new_ctx(m, full, NULL, NULL, 2);
        if (!c) continue;
        int32_t tok[2 * MAX_T], pos[2 * MAX_T], seq[2] = {1, 0};
        int8_t mask[2 * MAX_T];
        for (int i = 0; i < T; i++) {   // row 0 -> sequence 1: the whole prompt
            tok[i] = ids[i], pos[i] = i, mask[i] = 1;
            int j = T + i;              // row 1 -> sequence 0: P pads then the first T-P tokens
            tok[j] = i < P ? 0 : ids[i - P];
            pos[j] = i < P ? 0 : i - P;
            mask[j] = i >= P;
        }
        struct peri_batch b = {.n_seq = 2, .n_tokens = T, .seq_ids = seq, .tokens = tok, .pos = pos, .mask = mask,
                               .logits_all = true};
        int rc = peri_decode(c, &b);
        CHECKF(rc == 0, "padded batch decode: %s", peri_last_error());
        if (rc == 0) {
            const float *lg = peri_get_logits(c);
            CHECK(peri_get_logits_count(c) == 2 * T);
            double d0 = test_max_abs_diff(lg, r, (size_t)T * V);
            double d1 = test_max_abs_diff(lg + (size_t)(T + P) * V, r, (size_t)(T - P) * V);
            CHECKF(d0 <= 1e-3 && d1 <= 1e-3, "padded batch (%s): rows differ by %g / %g", full ? "full" : "latent",
                   d0, d1);
            // Then one more token for both: the padded row continues at its own position.
            // Sequence 1 gets any token (not compared); sequence 0 its next prompt token at position T-P.
            int32_t tk[2] = {7, ids[T - P]}, p2[2] = {T, T - P};
            struct peri_batch b2 = {.n_seq = 2, .n_tokens = 1, .seq_ids = seq, .tokens = tk, .pos = p2};
            rc = peri_decode(c, &b2);
            CHECKF(rc == 0, "padded batch step: %s", peri_last_error());
            if (rc == 0) {
                double d = test_max_abs_diff(peri_get_logits(c) + V, r + (size_t)(T - P) * V, (size_t)V);
                CHECKF(d <= 1e-3, "padded batch step (%s): %g", full ? "full" : "latent", d);
            }
        }
        peri_context_free(c);
    }
    peri_model_free(m);
}

static void bad_config(void) {
    // q_lora_rank set: the loader refuses (PLM has no query LoRA).
    char dir[] = "/tmp/peri_plm_XXXXXX";
    if (!mkdtemp(dir)) return;
    char p[256], link[1400];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs("{\"model_type\": \"plm\", \"architectures\": [\"PLMForCausalLM\"], \"vocab_size\": 512, "
          "\"hidden_size\": 64, \"intermediate_size\": 256, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
          "\"num_key_value_heads\": 4, \"kv_lora_rank\": 32, \"q_lora_rank\": 16, \"qk_nope_head_dim\": 16, "
          "\"qk_rope_head_dim\": 8, \"v_head_dim\": 16, \"max_position_embeddings\": 128, \"hidden_act\": \"relu2\"}",
          f);
    fclose(f);
    snprintf(link, sizeof link, "%s/fixtures/plm/plm-tiny/model.safetensors", test_shared_dir());
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (symlink(link, p) == 0) {
        peri_model *m = NULL;
        int rc = peri_model_load(dir, peri_model_default_params(), &m);
        CHECKF(rc == PERI_E_UNSUPPORTED && strstr(peri_last_error(), "q_lora_rank"), "q_lora_rank: rc %d, %s", rc,
               peri_last_error());
        peri_model_free(m);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

// A prompt longer than the internal micro-batch (256 tokens per row) must give the same logits as the
// same prompt in two calls that each fit in one micro-batch (random model from peri_model_init_random).
static void noop_cb(const char *name, int32_t seq, const float *data, int32_t n_dims, const int64_t *shape, void *ud) {
    (void)name, (void)seq, (void)data, (void)n_dims, (void)shape, (void)ud;
}

// Two sequences with different cached lengths in one prefill batch (each batch row attends over its own number of
// keys; the decompressed form expands them per row): row 0 continues a 100-token sequence 0 with 40 tokens, row 1
// starts sequence 1 with 40 other tokens (140 keys: within this model's decompressed-form scratch of 176). Both must
// give the rows of single-sequence calls in the same kind of context, up to summation order: 1.9e-4 measured in the
// absorbed form, where the batch's 80 rows take the blocked attention and a lone 40-row call the (row, head) units.
static void check_two_lengths(peri_model *m, const int32_t *ids, int V) {
    struct peri_context_params cp = peri_context_default_params();
    cp.n_threads = g_threads;
    cp.n_seq_max = 2;
    cp.logits_all = true;
    peri_context *c = NULL;
    if (peri_context_init(m, cp, &c)) {
        CHECKF(0, "two lengths ctx: %s", peri_last_error());
        return;
    }
    float *ref = malloc(sizeof(float) * (size_t)80 * V);
    int32_t s0 = 0, seq[2] = {0, 1}, tok[80];
    int rc = decode1(c, ids, 140, true);
    if (rc == 0) memcpy(ref, peri_get_logits(c) + (size_t)100 * V, sizeof(float) * (size_t)40 * V);
    peri_seq_clear(c, 0);
    if (rc == 0 && (rc = decode1(c, ids + 300, 40, true)) == 0) memcpy(ref + (size_t)40 * V, peri_get_logits(c), sizeof(float) * (size_t)40 * V);
    peri_seq_clear(c, 0);
    struct peri_batch b0 = {.n_seq = 1, .n_tokens = 100, .seq_ids = &s0, .tokens = ids};
    for (int i = 0; i < 40; i++) tok[i] = ids[100 + i], tok[40 + i] = ids[300 + i];
    struct peri_batch b = {.n_seq = 2, .n_tokens = 40, .seq_ids = seq, .tokens = tok, .logits_all = true};
    if (rc == 0) rc = peri_decode(c, &b0);
    if (rc == 0) rc = peri_decode(c, &b);
    CHECKF(rc == 0, "two lengths decode: %s", peri_last_error());
    if (rc == 0) {
        const float *lg = peri_get_logits(c);
        double d0 = test_max_abs_diff(lg, ref, (size_t)40 * V), d1 = test_max_abs_diff(lg + (size_t)40 * V, ref + (size_t)40 * V, (size_t)40 * V);
        CHECKF(d0 <= 5e-4 && d1 <= 5e-4, "two sequences of different lengths in one batch: rows differ by %g / %g", d0,
               d1);
    }
    free(ref);
    peri_context_free(c);
}

static void check_long_prompt(void) {
    char dir[] = "/tmp/peri_plm_long_XXXXXX";   // up to 600 tokens: three micro-batches, and decode past 512 keys
    if (!mkdtemp(dir)) return;
    const char *cfg = "{\"model_type\": \"plm\", \"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 64, "
                      "\"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2, "
                      "\"kv_lora_rank\": 16, \"q_lora_rank\": null, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 4, "
                      "\"v_head_dim\": 8, \"max_position_embeddings\": 640, \"rope_theta\": 100000.0, "
                      "\"rms_norm_eps\": 1e-6, \"hidden_act\": \"relu2\", \"tie_word_embeddings\": true}";
    int rc = peri_model_init_random(cfg, 7, dir);
    CHECKF(rc == 0, "init: %s", peri_last_error());
    peri_model *m = NULL;
    if (!rc) {
        rc = peri_model_load(dir, peri_model_default_params(), &m);
        CHECKF(rc == 0, "load random: %s", peri_last_error());
    }
    if (!rc) {
        enum { L = 600, S = 300, H1 = 150 };
        const int V = peri_model_n_vocab(m);
        int32_t ids[L];
        for (int i = 0; i < L; i++) ids[i] = (i * 37 + 11) % V;
        float *one = malloc(sizeof(float) * (size_t)L * V), *one_s = malloc(sizeof(float) * (size_t)S * V);
        for (int full = 0; full <= 1; full++) {
            struct peri_context_params cp = peri_context_default_params();
            cp.n_threads = g_threads;
            cp.kv_full = full;
            cp.logits_all = true;
            peri_context *c = NULL;
            if (peri_context_init(m, cp, &c)) { CHECKF(0, "ctx: %s", peri_last_error()); continue; }
            if (decode1(c, ids, L, true) == 0) {
                memcpy(one, peri_get_logits(c), sizeof(float) * (size_t)L * V);
                // One call of S tokens (two micro-batches) against two calls of S / 2.
                peri_seq_clear(c, 0);
                double d = INFINITY;
                if (decode1(c, ids, S, true) == 0) {
                    memcpy(one_s, peri_get_logits(c), sizeof(float) * (size_t)S * V);
                    peri_seq_clear(c, 0);
                    if (decode1(c, ids, H1, true) == 0) {
                        d = test_max_abs_diff(one_s, peri_get_logits(c), (size_t)H1 * V);
                        if (decode1(c, ids + H1, S - H1, true) == 0) {
                            double d2 = test_max_abs_diff(one_s + (size_t)H1 * V, peri_get_logits(c), (size_t)(S - H1) * V);
                            d = d2 > d ? d2 : d;
                        } else d = INFINITY;
                    }
                }
                CHECKF(d <= 1e-5, "long prompt (%s cache): one call vs two differ by %g", full ? "full" : "latent", d);
                // One token per call after a 100-token and a 560-token prompt: decode attends with the keys split
                // over the threads (latent cache, 64 keys and more), in chunks of 256 keys per thread (more than one
                // chunk at 560 keys on 2 threads); each step must give the one-call row.
                double ds = 0;
                for (int start = 100; start <= 560; start += 460) {
                    peri_seq_clear(c, 0);
                    if (decode1(c, ids, start, false) != 0) ds = INFINITY;
                    for (int i = start; i < start + 40 && ds < INFINITY; i++) {
                        if (decode1(c, ids + i, 1, false) != 0) { ds = INFINITY; break; }
                        double di = test_max_abs_diff(one + (size_t)i * V, peri_get_logits(c), (size_t)V);
                        ds = di > ds ? di : ds;
                    }
                }
                CHECKF(ds <= 1e-4, "decode steps (%s cache) vs one call: %g", full ? "full" : "latent", ds);
            }
            peri_context_free(c);
            if (!full) {
                // With a tensor callback the probabilities are kept, and decode takes the four-phase key split
                // (the one-run form never forms them): the same rows.
                cp.logits_all = false;
                cp.tensor_cb = noop_cb;
                c = NULL;
                if (peri_context_init(m, cp, &c)) { CHECKF(0, "ctx: %s", peri_last_error()); continue; }
                double dp = decode1(c, ids, 100, false) == 0 ? 0 : INFINITY;
                for (int i = 100; i < 110 && dp < INFINITY; i++) {
                    if (decode1(c, ids + i, 1, false) != 0) { dp = INFINITY; break; }
                    double di = test_max_abs_diff(one + (size_t)i * V, peri_get_logits(c), (size_t)V);
                    dp = di > dp ? di : dp;
                }
                CHECKF(dp <= 1e-4, "decode steps with a tensor callback vs one call: %g", dp);
                peri_context_free(c);
            }
        }
        check_two_lengths(m, ids, V);
        struct peri_context_params bad = peri_context_default_params();
        bad.kv_type = 7;
        peri_context *c = NULL;
        CHECKF(peri_context_init(m, bad, &c) == PERI_E_ARG && !c, "kv_type 7 must be refused");
        CHECK(strstr(peri_last_error(), "kv_type") != NULL);
        free(one), free(one_s);
        peri_model_free(m);
        struct peri_model_params badm = peri_model_default_params();
        badm.sparse_down = 3;
        m = (peri_model *)1;
        CHECKF(peri_model_load(dir, badm, &m) == PERI_E_ARG && !m, "sparse_down 3 must be refused");
        CHECK(strstr(peri_last_error(), "sparse_down is 3") != NULL);
    }
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    rmdir(dir);
}

static void run_fixtures(const char *shared, bool quants);

int main(void) {
    // These checks compare with float64 references on dequantized weights (fixtures README, engine kind 1):
    // keep activations in float32 (exact mode); tests/test_kernels_plm.c checks the default integer path
    // against llama.cpp's logits instead.
    setenv("PERI_KERNELS_EXACT", "1", 1);
    const char *shared = test_shared_dir();
    if (!shared) return TEST_SKIP;
    g_verbose = getenv("PERI_TEST_VERBOSE") != NULL;
    if (getenv("PERI_TEST_THREADS")) g_threads = atoi(getenv("PERI_TEST_THREADS"));
    const char *qt = getenv("PERI_TEST_QUANTS");   // "0": skip the quantized GGUFs
    bool quants = !qt || strcmp(qt, "0") != 0;
    // Prefill on the latent cache has two forms (src/models/plm.c use_decompressed): every fixture in each.
    for (int form = 1; form <= 2; form++) {
        printf("# prefill form: %s\n", form == 1 ? "absorbed" : "decompressed");
        peri_plm_set_prefill_form(form);
        check_long_prompt();
        run_fixtures(shared, quants);
    }
    peri_plm_set_prefill_form(0);
    return TEST_END();
}

static void run_fixtures(const char *shared, bool quants) {
    // plm-tiny: f32 safetensors, bf16 safetensors, f32/f16/q8_0/q4_0 GGUF.
    if (open_fixture(shared, "plm-tiny") == 0) {
        struct expect st = {.prefill = {"hf_logits", "prefill_logits_f32"}, .prefill_tol = {1e-3, 1e-3},
                            .decode = {"hf_decode_logits", "decode_logits_f32"}, .decode_tol = {1e-3, 1e-3},
                            .greedy = "hf_greedy_ids", .greedy_tol = 1e-3, .argmax_vs_prefill0 = true,
                            .layer0 = true};
        run_model("model.safetensors", &st);
        struct expect bf = {.prefill = {"hf_bf16_logits"}, .prefill_tol = {1e-3},
                            .decode = {"hf_bf16_decode_logits"}, .decode_tol = {1e-3}};
        run_model("model-bf16.safetensors", &bf);
        struct expect f32 = {.prefill = {"prefill_logits_f32", "hf_logits"}, .prefill_tol = {1e-3, 1e-3},
                             .decode = {"decode_logits_f32", "hf_decode_logits"}, .decode_tol = {1e-3, 1e-3},
                             .greedy = "greedy_ids_f32", .margins = "greedy_margins_f32", .greedy_tol = 1e-3};
        run_model("model-f32.gguf", &f32);
        struct expect f16 = {.prefill = {"deq_ref_logits_f16", "prefill_logits_f16"}, .prefill_tol = {1e-3, 3e-2},
                             .decode = {"deq_ref_decode_logits_f16", "decode_logits_f16"}, .decode_tol = {1e-3, 3e-2},
                             .greedy = "greedy_ids_f16", .margins = "greedy_margins_f16", .greedy_tol = 3e-2,
                             .argmax_vs_prefill0 = true};
        run_model("model-f16.gguf", &f16);
        if (quants) {
            const char *types[] = {"q8_0", "q4_0"};
            for (int i = 0; i < 2; i++) {
                char pr[64], dc[64], file[64];
                snprintf(pr, sizeof pr, "deq_ref_logits_%s", types[i]);
                snprintf(dc, sizeof dc, "deq_ref_decode_logits_%s", types[i]);
                snprintf(file, sizeof file, "model-%s.gguf", types[i]);
                struct expect q = {.prefill = {pr}, .prefill_tol = {1e-3}, .decode = {dc}, .decode_tol = {1e-3},
                                   .argmax_vs_prefill0 = true, .no_f16 = true};
                run_model(file, &q);
            }
        }
        check_padded_batch();
        bad_config();
        peri_safetensors_close(&g_exp);
    }

    // plm-small-kq: f32 GGUF and every llama-quantize type (prefill references only).
    if (open_fixture(shared, "plm-small-kq") == 0) {
        struct expect f32 = {.prefill = {"prefill_logits_f32", "hf_logits"}, .prefill_tol = {1e-3, 1e-3},
                             .greedy = "greedy_ids_f32", .margins = "greedy_margins_f32", .greedy_tol = 1e-3,
                             .argmax_vs_prefill0 = true};
        run_model("model-f32.gguf", &f32);
        if (quants) {
            const char *types[] = {"q8_0", "q4_0", "q4_1", "q5_0", "q4_k_m", "q5_k_m", "q6_k"};
            for (int i = 0; i < 7; i++) {
                char pr[64], file[64];
                snprintf(pr, sizeof pr, "deq_ref_logits_%s", types[i]);
                snprintf(file, sizeof file, "model-%s.gguf", types[i]);
                struct expect q = {.prefill = {pr}, .prefill_tol = {1e-3}, .argmax_vs_prefill0 = true, .no_f16 = true};
                run_model(file, &q);
            }
        }
        peri_safetensors_close(&g_exp);
    }

    // plm-qwen-vocab: the real vocabulary; logits stored as the last row + a column subset.
    if (open_fixture(shared, "plm-qwen-vocab") == 0) {
        const char *files[] = {"model.safetensors", "model-f16.gguf"};
        int32_t ids[MAX_T], cols[4096], gref[MAX_T];
        int T = ref_ids("input_ids", ids, MAX_T);
        int nc = ref_ids("logit_cols", cols, 4096);
        for (int fi = 0; fi < 2; fi++) {
            char path[1200];
            snprintf(path, sizeof path, "%s/%s", g_fix, files[fi]);
            peri_model *m = NULL;
            int rc = peri_model_load(path, peri_model_default_params(), &m);
            CHECKF(rc == 0, "load %s: %s", path, peri_last_error());
            if (rc) continue;
            CHECK(peri_model_n_vocab(m) == 151936);
            CHECK(peri_model_eos(m) == 151643);
            const int V = peri_model_n_vocab(m);
            // bf16 weights: f32 compute matches the float64 reference; the f16 GGUF holds the same values
            // (but 13 below 2^-17), so the same reference applies; llama.cpp (f16 activations) within 3e-2.
            const char *last[] = {"hf_logits_last", "prefill_logits_last"};
            const char *colr[] = {"hf_logits_cols", "prefill_logits_cols"};
            for (int mode = 0; mode < 4; mode++) {
                // F32 cache: the fixture tolerances; the default F16 cache: the f16 tolerance throughout.
                const int full = mode & 1;
                const bool f16 = mode >= 2;
                const double tol[] = {f16 ? F16_TOL : 1e-3, 3e-2};
                g_kv_type = f16 ? PERI_KV_DEFAULT : PERI_KV_F32;
                struct capture cp = {.want = {"last_hidden"}};
                peri_context *c = new_ctx(m, full, capture_cb, &cp, 1);
                if (!c) continue;
                if (decode1(c, ids, T, true) == 0) {
                    const float *lg = peri_get_logits(c);
                    for (int k = 0; k < 2; k++) {
                        const float *rl = ref_f32(last[k], NULL), *rc2 = ref_f32(colr[k], NULL);
                        if (!rl || !rc2) continue;
                        double d = test_max_abs_diff(lg + (size_t)(T - 1) * V, rl, (size_t)V);
                        for (int t = 0; t < T; t++)
                            for (int j = 0; j < nc; j++) {
                                double dj = fabs((double)lg[(size_t)t * V + cols[j]] - rc2[t * nc + j]);
                                if (!(dj <= d)) d = dj;
                            }
                        REPORT("%s [%s %s]: vs %s/%s: %.3g", path, full ? "full" : "latent", f16 ? "f16" : "f32",
                               last[k], colr[k], d);
                        CHECKF(d <= tol[k], "%s [%s %s]: vs %s/%s: max abs %g > %g", path, full ? "full" : "latent",
                               f16 ? "f16" : "f32", last[k], colr[k], d, tol[k]);
                    }
                    const float *lh = ref_f32("last_hidden", NULL);
                    if (lh && cp.data[0] && cp.n[0] == (int64_t)T * peri_model_n_embd(m)) {
                        double d = test_max_abs_diff(cp.data[0], lh, (size_t)cp.n[0]);
                        CHECKF(d <= (f16 ? F16_TOL : 2e-4), "%s: last_hidden differs by %g", path, d);
                    } else {
                        CHECKF(0, "%s: last_hidden not emitted with %d x %d values", path, T, peri_model_n_embd(m));
                    }
                }
                free(cp.data[0]);
                // Greedy: both references agree (min margin 0.103).
                peri_seq_clear(c, 0);
                int G = ref_ids(fi == 0 ? "hf_greedy_ids" : "greedy_ids", gref, MAX_T);
                if (decode1(c, ids, T, false) == 0) {
                    for (int g = 0; g < G; g++) {
                        int32_t tok = argmax(peri_get_logits(c), V);
                        CHECKF(tok == gref[g], "%s: greedy step %d: %d vs %d", path, g, tok, gref[g]);
                        if (tok != gref[g] || decode1(c, &tok, 1, false)) break;
                    }
                }
                peri_context_free(c);
            }
            g_kv_type = PERI_KV_F32;
            peri_model_free(m);
        }
        peri_safetensors_close(&g_exp);
    }
}
