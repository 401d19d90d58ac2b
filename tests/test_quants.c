// Quantized types: round trips, the reference dot product, bit-exactness against ggml (golden hashes of
// ggml's own reference functions) and against the llama-quantize / gguf-py outputs in the PLM fixtures.
#include "peri.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "tensor/quants.h"
#include "test.h"

#include <stdint.h>

// The bit-exact comparisons below recompute sums in the test: keep them free of FMA contraction too.
PERI_QUANT_NO_CONTRACT

static const int k_types[] = {PERI_TYPE_Q4_0, PERI_TYPE_Q4_1, PERI_TYPE_Q5_0, PERI_TYPE_Q5_1,
                              PERI_TYPE_Q8_0, PERI_TYPE_Q8_1, PERI_TYPE_Q2_K, PERI_TYPE_Q3_K,
                              PERI_TYPE_Q4_K, PERI_TYPE_Q5_K, PERI_TYPE_Q6_K, PERI_TYPE_Q8_K};
#define N_TYPES (int)(sizeof k_types / sizeof k_types[0])

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

// ---- deterministic input ------------------------------------------------------------------------------
// Bit-reproducible without libm: xorshift64 uniforms with 24-bit mantissas summed in a fixed order (each
// IEEE single operation is correctly rounded, so every platform gets the same bits). Per 32-value group a
// power-of-two scale from 2^-6 to 2^6, an offset in some groups, exact zeros, one all-zero and one
// constant group, so that every branch of the quantizers runs. The golden table below was produced from
// this exact input.
#define GOLDEN_N 4096
static uint64_t golden_rng(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static float golden_uniform(uint64_t *s) { return (float)(golden_rng(s) >> 40) * (1.0f / 16777216.0f); }
static void golden_input(float *x) {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < GOLDEN_N; i++) {
        const int g = i / 32;
        const float a = golden_uniform(&s) + golden_uniform(&s) + golden_uniform(&s) + golden_uniform(&s) - 2.0f;
        const float scale = (float)(1 << (g % 13)) / 64.0f;
        float v = a * scale;
        if (g % 5 == 2) v += 0.75f * scale;     // shifted groups (mins matter)
        if (g % 11 == 3 && i % 3 == 0) v = 0;  // scattered exact zeros
        if (g == 17) v = 0;                    // an all-zero group
        if (g == 42) v = -0.375f;              // a constant group
        x[i] = v;
    }
}

// FNV-1a of the quantized bytes and of the dequantized float32 bits of golden_input(), computed by ggml's
// own quantize_row_*_ref / dequantize_row_* (ggml/src/ggml-quants.c of llama.cpp Si1w 4535b4cf, the
// revision that made the fixtures; built with gcc -O2, f16 via F16C, no FMA contraction). ggml has no
// to_float for Q8_1 (0: not checked). This covers Q2_K, Q3_K, Q8_K and Q8_1, which no fixture file holds.
static const struct { int type; uint64_t quant, dequant; } k_golden[] = {
    {PERI_TYPE_Q4_0, 0x887e3c0b3c6f1267ull, 0x47ab72836df18369ull},
    {PERI_TYPE_Q4_1, 0xc867a3ffc917e439ull, 0xc3ae19a2a3f3b5d6ull},
    {PERI_TYPE_Q5_0, 0x2ee14e94cc3091b5ull, 0xb9dffb86e0c65862ull},
    {PERI_TYPE_Q5_1, 0x2878143d30941195ull, 0x97746d8eeab91065ull},
    {PERI_TYPE_Q8_0, 0xbacde8563e6434d3ull, 0xdf6e619883c31668ull},
    {PERI_TYPE_Q8_1, 0x83b983a7ce18c304ull, 0x0000000000000000ull},
    {PERI_TYPE_Q2_K, 0x92e9b264bf0e62caull, 0x47a1ca0f40947240ull},
    {PERI_TYPE_Q3_K, 0x97f789c99812dd44ull, 0xea43c56af9889540ull},
    {PERI_TYPE_Q4_K, 0xea6f6f3eb0e9afa5ull, 0x4cd51a50172a4a58ull},
    {PERI_TYPE_Q5_K, 0x11fd889889b1ac18ull, 0x5ff9a77dd19216c0ull},
    {PERI_TYPE_Q6_K, 0x141b26b8d23c90dbull, 0x4f408e402be177fdull},
    {PERI_TYPE_Q8_K, 0xd552cfefdac8fcb3ull, 0xaef3c399e1b1ab91ull},
};

static void test_traits(void) {
    for (int i = 0; i < N_TYPES; i++) {
        const struct peri_type_traits *t = peri_type_traits(k_types[i]);
        CHECKF(t && t->supported && t->to_float && t->from_float && t->dot_f32, "type %d", k_types[i]);
    }
    const struct { int type; size_t size; } sizes[] = {
        {PERI_TYPE_Q4_0, sizeof(block_q4_0)}, {PERI_TYPE_Q4_1, sizeof(block_q4_1)},
        {PERI_TYPE_Q5_0, sizeof(block_q5_0)}, {PERI_TYPE_Q5_1, sizeof(block_q5_1)},
        {PERI_TYPE_Q8_0, sizeof(block_q8_0)}, {PERI_TYPE_Q8_1, sizeof(block_q8_1)},
        {PERI_TYPE_Q2_K, sizeof(block_q2_K)}, {PERI_TYPE_Q3_K, sizeof(block_q3_K)},
        {PERI_TYPE_Q4_K, sizeof(block_q4_K)}, {PERI_TYPE_Q5_K, sizeof(block_q5_K)},
        {PERI_TYPE_Q6_K, sizeof(block_q6_K)}, {PERI_TYPE_Q8_K, sizeof(block_q8_K)},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        CHECKF(peri_type_traits(sizes[i].type)->type_size == sizes[i].size, "%s", peri_type_name(sizes[i].type));
}

static void test_golden(void) {
    static float x[GOLDEN_N], y[GOLDEN_N];
    static unsigned char q[GOLDEN_N * 2];
    golden_input(x);
    for (size_t i = 0; i < sizeof k_golden / sizeof k_golden[0]; i++) {
        const struct peri_type_traits *t = peri_type_traits(k_golden[i].type);
        const size_t rs = peri_row_size(k_golden[i].type, GOLDEN_N);
        t->from_float(x, q, GOLDEN_N);
        CHECKF(fnv1a(q, rs) == k_golden[i].quant, "%s: quantized bytes differ from ggml's (hash %016llx)", t->name,
               (unsigned long long)fnv1a(q, rs));
        if (!k_golden[i].dequant) continue;
        t->to_float(q, y, GOLDEN_N);
        CHECKF(fnv1a(y, sizeof y) == k_golden[i].dequant, "%s: dequantized floats differ from ggml's", t->name);
    }
}

// ---- round trips (as ggml's test-quantize-fns, plus a relative RMSE on Gaussian-like data) --------------

static float gaussish(uint64_t *s) {
    // Irwin-Hall(12) - 6: mean 0, variance 1, and no libm needed.
    float a = 0;
    for (int k = 0; k < 12; k++) a += golden_uniform(s);
    return a - 6.0f;
}

static void test_round_trip(void) {
    enum { N = 32 * 128 };
    static float x[N], x2[N], y[N];
    static unsigned char q[N * 2];
    // ggml's thresholds on its synthetic data: 0.002 (0.0075 2-bit, 0.004 3-bit) for its sqrt(sum d^2)/n,
    // 0.02 (0.04 low-bit) for |dot - exact|/n.
    for (int i = 0; i < N; i++) {
        x[i] = 0.1f + 2 * cosf((float)i);
        x2[i] = 0.1f + 2 * cosf((float)i + 1.0f);
    }
    for (int i = 0; i < N_TYPES; i++) {
        const int type = k_types[i];
        const struct peri_type_traits *t = peri_type_traits(type);
        t->from_float(x, q, N);
        t->to_float(q, y, N);
        double s = 0;
        for (int j = 0; j < N; j++) s += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
        const double err = sqrt(s) / N;
        const double max_err = type == PERI_TYPE_Q2_K ? 0.0075 : type == PERI_TYPE_Q3_K ? 0.0040 : 0.002;
        CHECKF(err < max_err, "%s: ggml total quantization error %g >= %g", t->name, err, max_err);

        double exact = 0;
        for (int j = 0; j < N; j++) exact += (double)x[j] * x2[j];
        const double dot_err = fabs(t->dot_f32(q, x2, N) - exact) / N;
        const double max_dot = type == PERI_TYPE_Q2_K || type == PERI_TYPE_Q3_K ? 0.04 : 0.02;
        CHECKF(dot_err < max_dot, "%s: dot product error %g", t->name, dot_err);

        // The reference dot is by definition the f32 dot of the dequantized row, in index order.
        float ref = 0;
        for (int j = 0; j < N; j++) ref += y[j] * x2[j];
        const float d = t->dot_f32(q, x2, N);
        CHECKF(memcmp(&d, &ref, 4) == 0, "%s: dot_f32 %.9g != dot of to_float %.9g", t->name, d, ref);
    }

    // Relative RMSE on N(0,1)-like data. Each type's bound is about 1.3x its measured error; one bit less
    // roughly doubles the error, so a broken nibble order or scale lands far outside.
    const struct { int type; double max_rel; } bounds[] = {
        {PERI_TYPE_Q4_0, 0.11}, {PERI_TYPE_Q4_1, 0.10}, {PERI_TYPE_Q5_0, 0.056}, {PERI_TYPE_Q5_1, 0.050},
        {PERI_TYPE_Q8_0, 0.0070}, {PERI_TYPE_Q8_1, 0.0070}, {PERI_TYPE_Q2_K, 0.38}, {PERI_TYPE_Q3_K, 0.20},
        {PERI_TYPE_Q4_K, 0.092}, {PERI_TYPE_Q5_K, 0.048}, {PERI_TYPE_Q6_K, 0.024}, {PERI_TYPE_Q8_K, 0.0088},
    };
    uint64_t seed = 12345;
    for (int j = 0; j < N; j++) x[j] = gaussish(&seed);
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        const struct peri_type_traits *t = peri_type_traits(bounds[i].type);
        t->from_float(x, q, N);
        t->to_float(q, y, N);
        double se = 0, sx = 0;
        for (int j = 0; j < N; j++) {
            se += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
            sx += (double)x[j] * x[j];
        }
        const double rel = sqrt(se / sx);
        CHECKF(rel < bounds[i].max_rel, "%s: relative RMSE %.4f >= %.4f", t->name, rel, bounds[i].max_rel);
        CHECKF(rel > bounds[i].max_rel / 8, "%s: relative RMSE %.5f implausibly small", t->name, rel);
    }
}

// Zeros give zeros; non-finite input and arbitrary block bytes must not crash (UBSan checks the casts).
static void test_edge_cases(void) {
    enum { N = 512 };
    static float x[N], y[N];
    static unsigned char q[N * 2];
    for (int i = 0; i < N_TYPES; i++) {
        const struct peri_type_traits *t = peri_type_traits(k_types[i]);
        memset(x, 0, sizeof x);
        t->from_float(x, q, N);
        t->to_float(q, y, N);
        int nonzero = 0;
        for (int j = 0; j < N; j++) nonzero += y[j] != 0;
        CHECKF(nonzero == 0, "%s: zeros dequantize to %d non-zero values", t->name, nonzero);

        for (int j = 0; j < N; j++) x[j] = (float)(j % 17) - 8.0f;
        x[3] = NAN;
        x[300] = INFINITY;
        x[301] = -INFINITY;
        x[400] = 1e-40f;
        t->from_float(x, q, N);   // bytes unspecified: must only not crash
        t->to_float(q, y, N);

        uint64_t s = 777;
        for (size_t j = 0; j < peri_row_size(k_types[i], N); j++) q[j] = (unsigned char)golden_rng(&s);
        t->to_float(q, y, N);
        (void)t->dot_f32(q, x, N);
        CHECK(1);
    }
}

// ---- fixtures ------------------------------------------------------------------------------------------

// The alias an expected.safetensors lists for a dequantized tensor it did not store again.
static const peri_tensor *find_expected(const peri_safetensors *st, const char *name) {
    const peri_tensor *t = peri_safetensors_find(st, name);
    if (t) return t;
    for (int i = 0; i < st->n_meta; i++) {
        if (strcmp(st->meta_keys[i], "dequant_aliases") != 0) continue;
        char key[600];
        snprintf(key, sizeof key, "\"%.500s\": \"", name);
        const char *p = strstr(st->meta_values[i], key);
        if (!p) return NULL;
        p += strlen(key);
        const char *e = strchr(p, '"');
        if (!e || (size_t)(e - p) >= sizeof key) return NULL;
        char target[256];
        memcpy(target, p, (size_t)(e - p));
        target[e - p] = 0;
        return peri_safetensors_find(st, target);
    }
    return NULL;
}

// For every quantized tensor of <dir>/model-<variant>.gguf: our from_float of the f32 weights gives the
// file's bytes exactly, and our to_float gives expected.safetensors' gguf-py dequantization bit for bit.
// Returns how many dequantized tensors were compared.
static int check_variant(const char *dir, const peri_gguf *f32, const peri_safetensors *exp, const char *variant,
                         int *types_seen) {
    char path[1200];
    snprintf(path, sizeof path, "%.1100s/model-%.64s.gguf", dir, variant);
    peri_gguf g;
    int rc = peri_gguf_open(&g, path, true);
    CHECKF(rc == PERI_OK, "%s: %s", path, peri_last_error());
    if (rc) return 0;
    int n_deq = 0, n_quant = 0;
    for (int i = 0; i < g.n_tensors; i++) {
        const peri_tensor *t = &g.tensors[i];
        const struct peri_type_traits *tr = peri_type_traits(t->type);
        if (t->type == PERI_TYPE_F32 || t->type == PERI_TYPE_F16) continue;
        CHECKF(tr && tr->supported, "%s: %s has unsupported type %d", variant, t->name, t->type);
        if (!tr || !tr->supported) continue;
        types_seen[t->type] = 1;
        const peri_tensor *src = peri_gguf_find(f32, t->name);
        CHECKF(src && src->type == PERI_TYPE_F32, "%s missing in model-f32.gguf", t->name);
        if (!src || src->type != PERI_TYPE_F32) continue;
        const int64_t n = peri_tensor_nelem(t);
        CHECK(peri_tensor_nelem(src) == n && peri_row_size(t->type, n) == t->nbytes);
        if (peri_tensor_nelem(src) != n || peri_row_size(t->type, n) != t->nbytes) continue;

        // Quantize the f32 weights as llama-quantize does (rows are independent, so one call suffices).
        unsigned char *q = malloc(t->nbytes);
        float *y = malloc((size_t)n * sizeof(float));
        if (!q || !y) {
            free(q);
            free(y);
            CHECK(!"out of memory");
            continue;
        }
        tr->from_float(src->data, q, n);
        size_t diff = 0;
        while (diff < t->nbytes && q[diff] == ((const unsigned char *)t->data)[diff]) diff++;
        CHECKF(diff == t->nbytes, "%s %s (%s): quantized bytes differ from llama-quantize's at byte %zu of %zu",
               variant, t->name, tr->name, diff, t->nbytes);
        n_quant++;

        char ename[512];
        snprintf(ename, sizeof ename, "dequant_%.64s_%.400s", variant, t->name);
        const peri_tensor *e = find_expected(exp, ename);
        if (e) {
            tr->to_float(t->data, y, n);
            CHECKF(e->type == PERI_TYPE_F32 && peri_tensor_nelem(e) == n, "%s shape/type", ename);
            if (e->type == PERI_TYPE_F32 && peri_tensor_nelem(e) == n) {
                int64_t j = 0;
                while (j < n && memcmp(&y[j], (const float *)e->data + j, 4) == 0) j++;
                CHECKF(j == n, "%s (%s): dequantized value %lld is %.9g, gguf-py %.9g", ename, tr->name, (long long)j,
                       j < n ? y[j] : 0.0, j < n ? ((const float *)e->data)[j] : 0.0);
            }
            n_deq++;
        }
        free(q);
        free(y);
    }
    CHECKF(n_quant > 0, "%s: no quantized tensors", variant);
    printf("%s %s: %d tensors re-quantized and compared, %d dequantized and compared\n", dir, variant, n_quant, n_deq);
    peri_gguf_close(&g);
    return n_deq;
}

static int test_fixtures(const char *shared) {
    static const char *small_variants[] = {"q4_k_m", "q6_k", "q5_k_m", "q8_0", "q4_0", "q5_0", "q4_1"};
    static const char *tiny_variants[] = {"q8_0", "q4_0"};
    const struct {
        const char *dir;
        const char *const *variants;
        int n;
        int min_deq;   // dequantized tensors expected.safetensors holds for these variants
    } fixtures[] = {
        {"plm/plm-small-kq", small_variants, 7, 22},
        {"plm/plm-tiny", tiny_variants, 2, 0},
    };
    int types_seen[PERI_TYPE_COUNT] = {0};
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char dir[1024], path[1100];
        snprintf(dir, sizeof dir, "%s/fixtures/%s", shared, fixtures[f].dir);
        peri_gguf f32;
        peri_safetensors exp;
        snprintf(path, sizeof path, "%s/model-f32.gguf", dir);
        int rc = peri_gguf_open(&f32, path, true);
        CHECKF(rc == PERI_OK, "%s: %s", path, peri_last_error());
        if (rc) continue;
        snprintf(path, sizeof path, "%s/expected.safetensors", dir);
        rc = peri_safetensors_open(&exp, path, true);
        CHECKF(rc == PERI_OK, "%s: %s", path, peri_last_error());
        if (rc) {
            peri_gguf_close(&f32);
            continue;
        }
        int n_deq = 0;
        for (int v = 0; v < fixtures[f].n; v++) n_deq += check_variant(dir, &f32, &exp, fixtures[f].variants[v], types_seen);
        CHECKF(n_deq >= fixtures[f].min_deq, "%s: compared %d dequantized tensors, expected %d", fixtures[f].dir,
               n_deq, fixtures[f].min_deq);
        peri_safetensors_close(&exp);
        peri_gguf_close(&f32);
    }
    // The fixtures cover these; Q2_K, Q3_K, Q8_1 and Q8_K are covered by the golden hashes only.
    const int covered[] = {PERI_TYPE_Q4_0, PERI_TYPE_Q4_1, PERI_TYPE_Q5_0, PERI_TYPE_Q5_1, PERI_TYPE_Q8_0,
                           PERI_TYPE_Q4_K, PERI_TYPE_Q5_K, PERI_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof covered / sizeof covered[0]; i++)
        CHECKF(types_seen[covered[i]], "no fixture tensor of type %s", peri_type_name(covered[i]));
    return 0;
}

int main(void) {
    test_traits();
    test_golden();
    test_round_trip();
    test_edge_cases();
    const char *shared = test_shared_dir();
    if (shared) test_fixtures(shared);
    else printf("PERI_SHARED_DIR not set: fixture checks skipped\n");
    return TEST_END();
}
