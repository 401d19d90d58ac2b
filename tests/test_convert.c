// peri_convert_hf: PLM files byte-identical with llama.cpp's converter (and llama-quantize for mixes); PLM and
// PLDR-LLM GGUFs give the same logits (and tokens) as their Hugging Face source.
#include "test.h"

#include "convert/convert.h"
#include "peri.h"

#include <unistd.h>

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) { free(p); p = NULL; }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

static void tmp_name(char *out, size_t size, const char *tag) {
    snprintf(out, size, "/tmp/peri_test_convert_%d_%s.gguf", (int)getpid(), tag);
}

static void check_bytes(const char *shared, const char *fixture, const char *type, const char *want_file) {
    char dir[1024], want[1024], out[256];
    snprintf(dir, sizeof dir, "%s/fixtures/plm/%s", shared, fixture);
    snprintf(want, sizeof want, "%s/%s", dir, want_file);
    tmp_name(out, sizeof out, type);
    struct peri_convert_params p = {.type = type};
    int rc = peri_convert_hf(dir, out, &p);
    CHECKF(rc == 0, "%s %s: %s", fixture, type, peri_last_error());
    size_t na = 0, nb = 0;
    unsigned char *a = slurp(out, &na), *b = slurp(want, &nb);
    CHECKF(a && b && na == nb, "%s %s: %zu bytes, llama.cpp's file %zu", fixture, type, na, nb);
    if (a && b && na == nb) {
        size_t first = na;
        for (size_t i = 0; i < na && first == na; i++)
            if (a[i] != b[i]) first = i;
        CHECKF(first == na, "%s %s: first differing byte at %zu", fixture, type, first);
    }
    free(a);
    free(b);
    remove(out);
}

// Logits of every row of ids from a model file/folder (malloc'd), NULL on failure.
static float *logits_of(const char *path, const peri_token *ids, int n, int *V, peri_model **keep) {
    peri_model *m;
    if (peri_model_load(path, peri_model_default_params(), &m)) {
        fprintf(stderr, "%s: %s\n", path, peri_last_error());
        return NULL;
    }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = 32;
    cp.n_threads = 2;
    cp.logits_all = true;
    peri_context *c;
    float *out = NULL;
    if (!peri_context_init(m, cp, &c)) {
        int32_t seq = 0;
        struct peri_batch b = {.n_seq = 1, .n_tokens = n, .seq_ids = &seq, .tokens = ids, .logits_all = true};
        *V = peri_model_n_vocab(m);
        if (!peri_decode(c, &b) && (out = malloc(sizeof *out * (size_t)n * (size_t)*V)))
            memcpy(out, peri_get_logits(c), sizeof *out * (size_t)n * (size_t)*V);
        peri_context_free(c);
    }
    if (keep) *keep = m;
    else peri_model_free(m);
    return out;
}

static void check_logits(const char *dir, const char *type, double tol, bool tokenizer) {
    char out[256];
    tmp_name(out, sizeof out, "logits");
    struct peri_convert_params p = {.type = type};
    CHECKF(peri_convert_hf(dir, out, &p) == 0, "%s %s: %s", dir, type, peri_last_error());
    const peri_token ids[7] = {5, 17, 42, 9, 100, 3, 77};
    int Va = 0, Vb = 0;
    peri_model *ma = NULL, *mb = NULL;
    float *a = logits_of(dir, ids, 7, &Va, &ma), *b = logits_of(out, ids, 7, &Vb, &mb);
    CHECKF(a && b && Va == Vb, "%s %s: logits", dir, type);
    if (a && b && Va == Vb) {
        double d = test_max_abs_diff(a, b, (size_t)7 * Va);
        CHECKF(d <= tol, "%s %s: GGUF vs safetensors logits differ by %g (tolerance %g)", dir, type, d, tol);
    }
    if (tokenizer && ma && mb) {
        const peri_tokenizer *ta = peri_model_tokenizer(ma), *tb = peri_model_tokenizer(mb);
        CHECKF(ta && tb, "%s: tokenizer missing in the GGUF", dir);
        const char *text = "Hello world! Once upon a time, 123 caf\xc3\xa9s   spaced.\nNew line";
        peri_token x[128], y[128];
        int64_t nx = ta ? peri_tokenize(ta, text, strlen(text), x, 128, false) : -1;
        int64_t ny = tb ? peri_tokenize(tb, text, strlen(text), y, 128, false) : -2;
        CHECKF(nx > 0 && nx == ny && !memcmp(x, y, sizeof *x * (size_t)nx), "%s: GGUF tokenizer differs (%lld vs %lld ids)",
               dir, (long long)nx, (long long)ny);
        CHECK(peri_model_bos(ma) == peri_model_bos(mb) && peri_model_eos(ma) == peri_model_eos(mb));
    }
    CHECK(!mb || !strcmp(peri_model_arch(mb), peri_model_arch(ma ? ma : mb)));
    free(a);
    free(b);
    peri_model_free(ma);
    peri_model_free(mb);
    remove(out);
}

int main(void) {
    struct peri_convert_params bad = {.type = "q9"};
    CHECK(peri_convert_hf("/nonexistent", "/tmp/x.gguf", &bad) < 0);
    const char *shared = test_shared_dir();
    if (!shared) {
        (void)TEST_END();
        return TEST_SKIP;
    }
    check_bytes(shared, "plm-tiny", "f32", "model-f32.gguf");
    check_bytes(shared, "plm-tiny", "f16", "model-f16.gguf");
    check_bytes(shared, "plm-tiny", "q4_0", "model-q4_0.gguf");
    check_bytes(shared, "plm-qwen-vocab", "f16", "model-f16.gguf");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/plm/plm-tiny", shared);
    check_logits(dir, "f32", 0, true);
    // The tiny PLDR fixtures carry no tokenizer, and a GGUF without one does not load yet (runtime/model.c).
    snprintf(dir, sizeof dir, "%s/fixtures/pldr/pldr-small-vocab32k", shared);
    check_logits(dir, "f32", 0, true);
    check_logits(dir, "f16", 5e-2, true);
    return TEST_END();
}
