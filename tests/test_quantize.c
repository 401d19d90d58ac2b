// peri_quantize_gguf against llama-quantize: every fixture file re-made from model-f32.gguf byte for byte.
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
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

static void check_same(const char *shared, const char *fixture, const char *type) {
    char in[1024], want[1024], out[256];
    snprintf(in, sizeof in, "%s/fixtures/plm/%s/model-f32.gguf", shared, fixture);
    snprintf(want, sizeof want, "%s/fixtures/plm/%s/model-%s.gguf", shared, fixture, type);
    snprintf(out, sizeof out, "/tmp/peri_test_quantize_%d_%s.gguf", (int)getpid(), type);
    int rc = peri_quantize_gguf(in, out, type, NULL, NULL);
    CHECKF(rc == 0, "%s %s: %s", fixture, type, peri_last_error());
    size_t na = 0, nb = 0;
    unsigned char *a = slurp(out, &na), *b = slurp(want, &nb);
    CHECKF(a && b && na == nb, "%s %s: %zu bytes written, fixture has %zu", fixture, type, na, nb);
    if (a && b && na == nb) {
        size_t first = na;
        for (size_t i = 0; i < na; i++)
            if (a[i] != b[i]) { first = i; break; }
        CHECKF(first == na, "%s %s: first differing byte at offset %zu", fixture, type, first);
    }
    free(a);
    free(b);
    remove(out);
}

int main(void) {
    // Type names and errors.
    CHECK(peri_ftype_lookup("Q4_K_M") != NULL);
    CHECK(peri_ftype_lookup("q4_k_m")->ftype == 15);
    CHECK(peri_ftype_lookup("q9_9") == NULL && strstr(peri_last_error(), "q4_k_m") != NULL);
    CHECK(peri_quantize_gguf("/nonexistent.gguf", "/tmp/x.gguf", "q8_0", NULL, NULL) < 0);

    const char *shared = test_shared_dir();
    if (!shared) {
        printf("PERI_SHARED_DIR not set: fixture comparisons skipped\n");
        (void)TEST_END();
        return TEST_SKIP;
    }
    const char *kq[] = {"q4_0", "q4_1", "q5_0", "q8_0", "q4_k_m", "q5_k_m", "q6_k"};
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++) check_same(shared, "plm-small-kq", kq[i]);
    check_same(shared, "plm-tiny", "q8_0");
    check_same(shared, "plm-tiny", "q4_0");
    return TEST_END();
}
