// Every kernel at every level this CPU supports against its scalar reference, on odd shapes.
#include "core/error.h"
#include "kernels/kernels_impl.h"
#include "kernels/ops.h"
#include "peri.h"
#include "runtime/cpu.h"
#include "runtime/pool.h"
#include "tensor/repack.h"
#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float frand(void) { return (float)((double)rnd() / 4294967296.0 * 2.0 - 1.0) * 2.0f; }
static int irand(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }

// A random weight of `type` with M rows of K values; also returns its float32 values (as the reference
// sees them after conversion) for the error bound.
static void *make_weight(int type, int64_t M, int64_t K, float *wf) {
    const struct peri_type_traits *tt = peri_type_traits(type);
    size_t rs = peri_row_size(type, K);
    char *w = malloc(rs * (size_t)M + 1);
    float *tmp = malloc(sizeof(float) * (size_t)K);
    for (int64_t r = 0; r < M; r++) {
        for (int64_t k = 0; k < K; k++) {
            tmp[k] = frand();
            // a few tiny values: F16 subnormals, BF16 small exponents
            if (rnd() % 17 == 0) tmp[k] *= 1e-6f;
        }
        tt->from_float(tmp, w + (size_t)r * rs, K);
        tt->to_float(w + (size_t)r * rs, wf + r * K, K);
    }
    free(tmp);
    return w;
}

// The activation type the dispatcher will quantize x to for `type` (PERI_TYPE_F32: x stays float).
static int x_type_now(int type, int64_t n) {
    const struct peri_kernel_set *ks = peri_kernels_current();
    const struct peri_mm_kernel *e = &ks->mm[type];
    if (!e->fn || e->x_type == PERI_TYPE_F32 || peri_kernels_exact() || n < e->min_n) return PERI_TYPE_F32;
    if (e->f32_from_n && n >= e->f32_from_n && ks->mm_exact[type].fn) return PERI_TYPE_F32;
    return e->x_type;
}

// x quantized to xt and back (what the integer kernels multiply by); a copy of x for F32.
static void requantize(int xt, const float *x, float *xd, int64_t K) {
    if (xt == PERI_TYPE_F32) {
        memcpy(xd, x, sizeof(float) * (size_t)K);
        return;
    }
    const struct peri_type_traits *xtt = peri_type_traits(xt);
    char *q = malloc(peri_row_size(xt, K));
    xtt->from_float(x, q, K);
    xtt->to_float(q, xd, K);
    free(q);
}

// Allowed |y - y_ref| for one output (w row wr, x row x, its requantized xd):
// * two float summation orders of K products each lie within about K * 2^-24 * sum|w x| of the exact value;
// * integer-dot kernels multiply xd instead of x: sum |w| |x - xd| more, exactly the quantization error;
//   their block sums are scaled separately (K-quants: scale part and min part), so the rounding term uses
//   twice the block's largest |w| (a bound on each part) instead of |w|; Q8_1 carries sum(x) in fp16
//   (2^-11 relative), times the block min (again at most that bound);
// * half-precision sums (F16 x: avx512fp16.c) round each multiply-add to F16, at most 2^-11 of the running
//   partial sum, which is at most the sum of |w xd| of its block of 32 products: 32 * 2^-11 * sum|w xd| in all,
//   plus 2^-25 per product where the partial sum is below F16's normal range (and BF16 weights, rounded to F16,
//   2^-25 |xd| more per value below that range).
static double mm_tol(int type, int xt, const float *wr, const float *x, const float *xd, int64_t K) {
    double sabs = 0, qerr = 0, sblk = 0;
    int64_t bs = peri_type_traits(type)->blck_size;
    for (int64_t b0 = 0; b0 < K; b0 += bs) {
        double amax = 0;
        for (int64_t k = b0; k < b0 + bs && k < K; k++) amax = fmax(amax, fabs(wr[k]));
        for (int64_t k = b0; k < b0 + bs && k < K; k++) {
            sabs += fabs((double)wr[k] * x[k]);
            qerr += fabs((double)wr[k]) * fabs((double)x[k] - xd[k]);
            sblk += 2 * amax * fabs(xd[k]);
        }
    }
    double t = (double)(K + 8) * 1.2e-7 * sabs + 1e-30;
    if (xt != PERI_TYPE_F32) t += qerr * (1 + 1e-6) + (double)(K + 8) * 2.4e-7 * sblk;
    if (xt == PERI_TYPE_Q8_1) t += sblk * 0x1p-10;
    if (xt == PERI_TYPE_F16) {
        double sd = 0, sx = 0;
        for (int64_t k = 0; k < K; k++) sd += fabs((double)wr[k] * xd[k]), sx += fabs((double)xd[k]);
        t += 32 * 0x1p-11 * sd + (double)K * 0x1p-25;
        // BF16 weights are rounded to F16: exact in its normal range, to 2^-25 below it (8 significant bits fit in 11)
        if (type == PERI_TYPE_BF16) t += sx * 0x1p-25;
    }
    return t;
}

static int check_matmul(peri_pool *pool, int type, int64_t M, int64_t K, int64_t n, int use_ex, int use_bias) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    // With use_ex: a row range [row0, row0+Msub) of a bigger weight, x and y with padded strides.
    int64_t Mt = use_ex ? M + irand(0, 5) : M;
    int64_t row0 = use_ex ? irand(0, (int)(Mt - M)) : 0;
    int64_t ldx = use_ex ? K + irand(0, 7) : K, ldy = use_ex ? M + irand(0, 7) : M;
    float *wf = malloc(sizeof(float) * (size_t)(Mt * K));
    void *w = make_weight(type, Mt, K, wf);
    float *x = malloc(sizeof(float) * (size_t)(n * ldx));
    for (int64_t i = 0; i < n * ldx; i++) x[i] = frand();
    float *bias = NULL;
    if (use_bias) {
        bias = malloc(sizeof(float) * (size_t)M);
        for (int64_t j = 0; j < M; j++) bias[j] = frand();
    }
    float *y = malloc(sizeof(float) * (size_t)(n * ldy)), *yr = malloc(sizeof(float) * (size_t)(n * ldy));
    for (int64_t i = 0; i < n * ldy; i++) y[i] = yr[i] = 12345.0f; // padding must stay untouched
    peri_tensor W = {.name = "w", .type = type, .n_dims = 2, .shape = {Mt, K}, .data = w,
                     .nbytes = peri_row_size(type, K) * (size_t)Mt};
    if (use_ex) {
        peri_matmul_ex(pool, y, ldy, x, ldx, &W, row0, M, bias, n);
        peri_matmul_ex_ref(NULL, yr, ldy, x, ldx, &W, row0, M, bias, n);
    } else {
        peri_matmul(pool, y, x, &W, bias, n);
        peri_matmul_ref(NULL, yr, x, &W, bias, n);
    }
    int bad = 0;
    int xt = x_type_now(type, n);
    float *xd = malloc(sizeof(float) * (size_t)K);
    for (int64_t i = 0; i < n && !bad; i++) {
        requantize(xt, x + i * ldx, xd, K);
        for (int64_t j = 0; j < ldy && !bad; j++) {
            double d = fabs((double)y[i * ldy + j] - (double)yr[i * ldy + j]);
            // plus one rounding of the output itself (the bias add), which mm_tol's sum bound leaves out
            double tol = j < M ? mm_tol(type, xt, wf + (row0 + j) * K, x + i * ldx, xd, K) + 1.2e-7 * fabs(yr[i * ldy + j]) : 0;
            if (!(d <= tol)) {
                fprintf(stderr, "matmul %s %s M=%lld K=%lld n=%lld ex=%d bias=%d pool=%d: y[%lld][%lld] = %.9g, ref %.9g (tol %.3g)\n",
                        lvl, peri_type_name(type), (long long)M, (long long)K, (long long)n, use_ex, use_bias,
                        peri_pool_size(pool), (long long)i, (long long)j, y[i * ldy + j], yr[i * ldy + j], tol);
                bad = 1;
            }
        }
    }
    free(wf), free(w), free(x), free(xd), free(bias), free(y), free(yr);
    return !bad;
}

// peri_get_row (the level's dequantizer where it has one) against the type's reference to_float, bit for bit, on
// blocks quantized from values of very different sizes (and zeros) and on blocks of random bytes with finite scales.
static void test_get_row_level(void) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    for (int type = 0; type < PERI_TYPE_COUNT; type++) {
        const struct peri_type_traits *tt = peri_type_traits(type);
        if (!tt || !tt->supported || !tt->to_float || !tt->from_float) continue;
        // odd for the vector tails; 3 blocks of the 512-value load-time layouts, 6 of the K-quants
        const int64_t K = tt->blck_size > 1 ? 3 * 512 : 3 * 256 + 5, M = 4;
        const size_t rs = peri_row_size(type, K);
        float *src = malloc(sizeof(float) * (size_t)(M * K)), *a = malloc(sizeof(float) * (size_t)K),
              *b = malloc(sizeof(float) * (size_t)K);
        char *w = malloc(rs * (size_t)M);
        static const float mags[] = {1.0f, 1e-4f, 3e3f, 0.0f};
        for (int64_t r = 0; r < M; r++) {
            for (int64_t k = 0; k < K; k++) src[r * K + k] = frand() * mags[r];
            tt->from_float(src + r * K, w + (size_t)r * rs, K);
        }
        int bad = 0;
        for (int pass = 0; pass < 2 && !bad; pass++) {
            // Pass 1: bits 0 and 4 of every byte flipped at random (codes, scales and mins alike), which reaches
            // code patterns quantization never writes.
            if (pass == 1 && tt->blck_size > 1)
                for (size_t i = 0; i < rs * (size_t)M; i++) w[i] = (char)(w[i] ^ (char)(rnd() & 0x11));
            peri_tensor W = {.name = "w", .type = type, .n_dims = 2, .shape = {M, K}, .data = w, .nbytes = rs * (size_t)M};
            for (int64_t r = 0; r < M && !bad; r++) {
                peri_get_row(&W, r, a);
                peri_get_row_ref(&W, r, b);
                for (int64_t k = 0; k < K && !bad; k++)
                    if (memcmp(&a[k], &b[k], sizeof(float)) != 0 && !(isnan(a[k]) && isnan(b[k]))) {
                        fprintf(stderr, "get_row %s %s pass %d row %lld [%lld]: %.9g, reference %.9g\n", lvl, tt->name,
                                pass, (long long)r, (long long)k, a[k], b[k]);
                        bad = 1;
                    }
            }
        }
        CHECKF(!bad, "get_row %s at level %s", tt->name, lvl);
#if defined(__x86_64__)
        // the x86 levels' own dequantizers, so the comparison above is not the reference against itself
        static const int simd_types[] = {PERI_TYPE_F16, PERI_TYPE_BF16, PERI_TYPE_Q8_0, PERI_TYPE_Q4_0, PERI_TYPE_Q2_K,
                                         PERI_TYPE_Q3_K, PERI_TYPE_Q4_K, PERI_TYPE_Q5_K, PERI_TYPE_Q6_K};
        for (size_t i = 0; i < sizeof simd_types / sizeof simd_types[0]; i++)
            if (type == simd_types[i] && peri_kernels_level() != PERI_KERNELS_REF)
                CHECKF(peri_kernels_current()->to_float[type] != NULL, "%s at %s: no SIMD to_float", tt->name, lvl);
        if (type == PERI_TYPE_Q4_0_X16 && peri_kernels_has_mm(type)) // where the layout is made
            CHECKF(peri_kernels_current()->to_float[type] != NULL, "%s at %s: no SIMD to_float", tt->name, lvl);
#elif defined(__aarch64__)
        static const int simd_types[] = {PERI_TYPE_F16,  PERI_TYPE_BF16, PERI_TYPE_Q8_0, PERI_TYPE_Q4_0,
                                         PERI_TYPE_Q4_1, PERI_TYPE_Q5_0, PERI_TYPE_Q5_1, PERI_TYPE_Q2_K,
                                         PERI_TYPE_Q3_K, PERI_TYPE_Q4_K, PERI_TYPE_Q5_K, PERI_TYPE_Q6_K};
        for (size_t i = 0; i < sizeof simd_types / sizeof simd_types[0]; i++)
            if (type == simd_types[i] && peri_kernels_level() != PERI_KERNELS_REF)
                CHECKF(peri_kernels_current()->to_float[type] != NULL, "%s at %s: no SIMD to_float", tt->name, lvl);
#endif
        free(src), free(a), free(b), free(w);
    }
}

// y[n x m] (rows ldy apart, padding up to ldy holding 12345) against the float64 sum of x (rows ldx apart) times
// cf (K rows of ldc floats); 1 if every value is within 4e-6 of the sum of magnitudes and the padding is untouched.
static int nn_matches(const char *what, int type, const float *y, int64_t ldy, const float *x, int64_t ldx,
                      const float *cf, int64_t ldc, int64_t K, int64_t m, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < ldy; j++) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < K && j < m; k++) {
                ref += (double)x[i * ldx + k] * cf[k * ldc + j];
                mag += fabs((double)x[i * ldx + k] * cf[k * ldc + j]);
            }
            double got = y[i * ldy + j], tol = j < m ? 1e-6 * (mag + 1e-30) * 4 : 0;
            if (j >= m) ref = 12345.0;
            if (!(fabs(got - ref) <= tol)) {
                fprintf(stderr, "%s %s %s K=%lld m=%lld n=%lld: y[%lld][%lld] = %.9g, reference %.9g\n", what,
                        peri_kernels_level_name(peri_kernels_level()), peri_type_name(type), (long long)K, (long long)m,
                        (long long)n, (long long)i, (long long)j, got, ref);
                return 0;
            }
        }
    return 1;
}

// peri_attn_scores against float64 sums, F32 and F16 keys in padded rows: 1 to 40 queries (groups of 16 and a rest),
// key counts around the tiles (16 keys a tile with AVX-512, 6 with AVX2 and NEON; AMX: steps of 32, a partial last one,
// the next step split during the current one), D around the vector widths and past the kernels' chunk of 640 values
// (1100: two chunks, the second adding to the first); the padding of s stays untouched.
static void test_attn_scores_level(void) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    const int64_t Ds[] = {1, 20, 63, 64, 65, 100, 576, 1100}, nks[] = {1, 5, 6, 7, 16, 17, 33, 64, 97},
                  nqs[] = {1, 2, 15, 16, 17, 40};
    int bad = 0;
    for (int ti = 0; ti < 2 && !bad; ti++) {
        const int kt = ti ? PERI_TYPE_F16 : PERI_TYPE_F32;
        const size_t esz = ti ? 2 : 4;
        for (size_t a = 0; a < sizeof Ds / sizeof Ds[0] && !bad; a++)
            for (size_t b = 0; b < sizeof nks / sizeof nks[0] && !bad; b++)
                for (size_t c = 0; c < sizeof nqs / sizeof nqs[0] && !bad; c++) {
                    const int64_t D = Ds[a], nk = nks[b], nq = nqs[c], ldq = D + 5, lds = nk + 3;
                    if (D > 600 && nq != 16 && nq != 17) continue;
                    const size_t krs = (size_t)(D + 3) * esz;
                    float *q = malloc(sizeof(float) * (size_t)(nq * ldq)), *kf = malloc(sizeof(float) * (size_t)(nk * D));
                    float *sc = malloc(sizeof(float) * (size_t)(nq * lds));
                    char *k = malloc(krs * (size_t)nk);
                    for (int64_t i = 0; i < nq * ldq; i++) q[i] = frand();
                    for (int64_t j = 0; j < nk; j++)
                        for (int64_t d = 0; d < D; d++) {
                            float v = frand();
                            if (ti) {
                                uint16_t h = peri_f32_to_f16(v);
                                memcpy(k + (size_t)j * krs + 2 * (size_t)d, &h, 2);
                                v = peri_f16_to_f32(h);
                            } else {
                                memcpy(k + (size_t)j * krs + 4 * (size_t)d, &v, 4);
                            }
                            kf[j * D + d] = v;
                        }
                    for (int64_t i = 0; i < nq * lds; i++) sc[i] = 12345.0f;
                    peri_attn_scores(sc, lds, q, ldq, nq, kt, k, krs, nk, D);
                    for (int64_t i = 0; i < nq && !bad; i++)
                        for (int64_t j = 0; j < lds && !bad; j++) {
                            double ref = 12345.0, mag = 0, tol = 0;
                            if (j < nk) {
                                ref = 0;
                                for (int64_t d = 0; d < D; d++) {
                                    ref += (double)q[i * ldq + d] * kf[j * D + d];
                                    mag += fabs((double)q[i * ldq + d] * kf[j * D + d]);
                                }
                                tol = 1e-5 * mag;
                            }
                            if (!(fabs(sc[i * lds + j] - ref) <= tol)) {
                                fprintf(stderr, "attn_scores %s %s D=%lld nk=%lld nq=%lld: s[%lld][%lld] = %.9g, ref %.9g\n",
                                        lvl, peri_type_name(kt), (long long)D, (long long)nk, (long long)nq, (long long)i,
                                        (long long)j, sc[i * lds + j], ref);
                                bad = 1;
                            }
                        }
                    free(q), free(kf), free(sc), free(k);
                }
    }
    CHECKF(!bad, "attn_scores at level %s", lvl);
    float s0[2] = {7, 7}, q0 = 1, k0 = 1;   // D = 0: empty sums
    peri_attn_scores(s0, 2, &q0, 1, 1, PERI_TYPE_F32, &k0, 4, 2, 0);
    CHECK(s0[0] == 0.0f && s0[1] == 0.0f);
    float s1 = 0, q1 = 1, k1 = 1;
    peri_attn_scores(&s1, 1, &q1, 1, 1, PERI_TYPE_Q8_0, &k1, 4, 1, 1);   // keys of another type: NaN and an error
    CHECK(isnan(s1));
}

// peri_matmul_nn with C rows of a block type (m a multiple of the block size, rows longer than m), against a float64
// sum over the reference dequantizer's values, and against peri_matmul_nn_ref; y's padding must stay untouched.
static void test_matmul_nn_blocks(int type) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    const struct peri_type_traits *tt = peri_type_traits(type);
    const int64_t B = tt->blck_size;
    static const int64_t shapes[][4] = {{1, 1, 1, 1}, {128, 16, 1, 16}, {128, 16, 3, 17}, {7, 1, 4, 3}, {33, 9, 2, 9},
                                        {5, 40, 1, 48}}; // K, m and the row length in units of 32 values, n
    int bad = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0] && !bad; si++) {
        const int64_t K = shapes[si][0], n = shapes[si][2];
        int64_t m = shapes[si][1] * 32, cw = shapes[si][3] * 32;
        m = (m + B - 1) / B * B, cw = (cw + B - 1) / B * B;
        if (cw < m) cw = m;
        const int64_t ldx = K + irand(0, 5), ldy = m + irand(0, 5);
        const size_t cs = peri_row_size(type, cw);
        char *c = malloc(cs * (size_t)K);
        float *row = malloc(sizeof(float) * (size_t)cw), *cf = malloc(sizeof(float) * (size_t)(K * cw));
        float *x = malloc(sizeof(float) * (size_t)(n * ldx)), *y = malloc(sizeof(float) * (size_t)(n * ldy));
        float *yr = malloc(sizeof(float) * (size_t)(n * ldy));
        for (int64_t k = 0; k < K; k++) {
            for (int64_t j = 0; j < cw; j++) row[j] = frand();
            tt->from_float(row, c + (size_t)k * cs, cw);
            tt->to_float(c + (size_t)k * cs, cf + k * cw, cw);
        }
        for (int64_t i = 0; i < n * ldx; i++) x[i] = frand();
        for (int64_t i = 0; i < n * ldy; i++) y[i] = yr[i] = 12345.0f;
        peri_matmul_nn(y, ldy, x, ldx, type, c, cs, K, m, n);
        peri_matmul_nn_ref(yr, ldy, x, ldx, type, c, cs, K, m, n);
        bad = !nn_matches("matmul_nn", type, y, ldy, x, ldx, cf, cw, K, m, n) ||
              !nn_matches("matmul_nn_ref", type, yr, ldy, x, ldx, cf, cw, K, m, n);
        free(c), free(row), free(cf), free(x), free(y), free(yr);
    }
    CHECKF(!bad, "matmul_nn %s at level %s", tt->name, lvl);
}

// peri_matmul_nn (y = x C, C as stored rows) against a float64 sum, per type, with strided rows and shapes that
// cross the GEMM's tiles (12, 6 or 8 rows), 32-, 16- or 12-column panels, 288-, 48- or 128-row blocks (AVX-512,
// AVX2, NEON) and 512-long K chunks.
static void test_matmul_nn_level(void) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    static const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {64, 512, 8}, {100, 33, 13}, {1100, 40, 2},
                                        {300, 17, 100}, {2100, 70, 25}, {5, 512, 16}, {64, 40, 300},
                                        {130, 300, 3}, {9, 512, 1},    // few rows: several strips, one partial
                                        // up to 4 x rows on a C beyond 1 MB (PLM's sparse down projection,
                                        // gp_nn_sparse): 90%, 50%, all or no x values zero (zeros[] below), batches
                                        // of 512 rows
                                        {1100, 1000, 1}, {1300, 1001, 1}, {600, 2000, 1}, {700, 1500, 1},
                                        {1100, 1000, 3}, {1030, 1001, 4}, {600, 2000, 2}};
    static const int zeros[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 90, 50, 100, 0, 90, 50, 100};   // % of x set to 0
    _Static_assert(sizeof zeros / sizeof zeros[0] == sizeof shapes / sizeof shapes[0], "a zero share per shape");
    // block types: their own kernel (Q8_0, Q4_0; Q4_0_X16, Q4_K, Q5_K at avx2) or the generic path (dequantize + axpy)
    const int types[] = {PERI_TYPE_F32, PERI_TYPE_F16, PERI_TYPE_BF16, PERI_TYPE_Q8_0, PERI_TYPE_Q4_0, PERI_TYPE_Q4_0_X16,
                         PERI_TYPE_Q4_K, PERI_TYPE_Q5_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int type = types[ti];
        const struct peri_type_traits *tt = peri_type_traits(type);
        if (tt->blck_size > 1) {
            test_matmul_nn_blocks(type);
            continue;
        }
        const size_t esz = type == PERI_TYPE_F32 ? 4 : 2;
#if defined(__x86_64__) || defined(__aarch64__)
        // every SIMD level has the GEMM's entry (a missing one would silently test the reference against itself)
        if (peri_kernels_level() != PERI_KERNELS_REF)
            CHECKF(peri_kernels_current()->mm_nn[type] != NULL, "%s at %s: no mm_nn", peri_type_name(type), lvl);
#endif
        int bad = 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0] && !bad; si++) {
            const int64_t K = shapes[si][0], m = shapes[si][1], n = shapes[si][2];
            const int64_t ldx = K + irand(0, 5), ldy = m + irand(0, 5), cw = m + irand(0, 9);   // C rows: cw values
            const size_t cs = (size_t)cw * esz;
            char *c = malloc(cs * (size_t)K);
            float *cf = malloc(sizeof(float) * (size_t)(K * m)), *x = malloc(sizeof(float) * (size_t)(n * ldx));
            float *y = malloc(sizeof(float) * (size_t)(n * ldy));
            for (int64_t k = 0; k < K; k++)
                for (int64_t j = 0; j < cw; j++) {
                    float v = frand();
                    if (type == PERI_TYPE_F32) ((float *)(c + (size_t)k * cs))[j] = v;
                    else if (type == PERI_TYPE_F16) ((uint16_t *)(c + (size_t)k * cs))[j] = peri_f32_to_f16(v);
                    else ((uint16_t *)(c + (size_t)k * cs))[j] = peri_f32_to_bf16(v);
                    if (j < m)
                        cf[k * m + j] = type == PERI_TYPE_F32 ? v
                                      : type == PERI_TYPE_F16 ? peri_f16_to_f32(((uint16_t *)(c + (size_t)k * cs))[j])
                                                              : peri_bf16_to_f32(((uint16_t *)(c + (size_t)k * cs))[j]);
                }
            for (int64_t i = 0; i < n * ldx; i++) x[i] = irand(0, 99) < zeros[si] ? 0.0f : frand();
            for (int64_t i = 0; i < n * ldy; i++) y[i] = 12345.0f;   // the padding must stay untouched
            peri_matmul_nn(y, ldy, x, ldx, type, c, cs, K, m, n);
            bad = !nn_matches("matmul_nn", type, y, ldy, x, ldx, cf, m, K, m, n);
            free(c), free(cf), free(x), free(y);
        }
        CHECKF(!bad, "matmul_nn %s at level %s", peri_type_name(type), lvl);
    }
}

// peri_matmul_by_inputs (a K x m float weight stored by its inputs: PLM's transposed down projection) against the
// float64 sum: up to 4 x rows with the inputs split over the threads (partials from the pool's scratch) or, without
// scratch, on the caller; more rows with the outputs split; fewer inputs than threads; 90%, 50% or no x zero.
static void test_by_inputs_level(peri_pool *pool) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    static const int64_t shapes[][4] = {{1, 1, 1, 0},       {7, 5, 3, 0},   {1100, 1000, 1, 90}, {1030, 1001, 4, 50},
                                        {600, 200, 5, 0},   {2, 70, 2, 0},  {300, 130, 13, 90},  {2048, 64, 2, 100}};
    const int types[] = {PERI_TYPE_F32, PERI_TYPE_F16, PERI_TYPE_BF16};
    peri_pool *bare = peri_pool_new(3);   // no scratch reserved
    CHECK(bare != NULL);
    int bad = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0] && !bad; ti++) {
        const int type = types[ti];
        const size_t esz = type == PERI_TYPE_F32 ? 4 : 2;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0] && !bad; si++) {
            const int64_t K = shapes[si][0], m = shapes[si][1], n = shapes[si][2];
            char *c = malloc(esz * (size_t)(K * m));
            float *cf = malloc(sizeof(float) * (size_t)(K * m)), *x = malloc(sizeof(float) * (size_t)(n * K));
            float *y = malloc(sizeof(float) * (size_t)(n * m));
            for (int64_t e = 0; e < K * m; e++) {
                const float v = frand();
                if (type == PERI_TYPE_F32) ((float *)c)[e] = cf[e] = v;
                else if (type == PERI_TYPE_F16) cf[e] = peri_f16_to_f32(((uint16_t *)c)[e] = peri_f32_to_f16(v));
                else cf[e] = peri_bf16_to_f32(((uint16_t *)c)[e] = peri_f32_to_bf16(v));
            }
            for (int64_t i = 0; i < n * K; i++) x[i] = irand(0, 99) < shapes[si][3] ? 0.0f : frand();
            const peri_tensor C = {.name = "c", .type = type, .n_dims = 2, .shape = {K, m}, .data = c,
                                   .nbytes = esz * (size_t)(K * m)};
            CHECK(peri_matmul_reserve(pool, K > m ? K : m, n, peri_by_inputs_bit(type)) == PERI_OK);
            peri_pool *pools[] = {pool, bare, NULL};
            for (int pi = 0; pi < 3 && !bad; pi++) {
                for (int64_t i = 0; i < n * m; i++) y[i] = 777.0f;   // overwritten, not added to
                peri_matmul_by_inputs(pools[pi], y, x, &C, n);
                bad = !nn_matches("matmul_by_inputs", type, y, m, x, K, cf, m, K, m, n);
            }
            free(c), free(cf), free(x), free(y);
        }
    }
    CHECKF(!bad, "matmul_by_inputs at level %s", lvl);
    peri_pool_free(bare);
    // not a float matrix: NaN out, an error set
    float x1[4] = {1, 2, 3, 4}, y1[2] = {0, 0};
    const peri_tensor q = {.name = "q", .type = PERI_TYPE_Q8_0, .n_dims = 2, .shape = {4, 2}, .data = x1, .nbytes = 16};
    peri_clear_error();
    peri_matmul_by_inputs(pool, y1, x1, &q, 1);
    CHECK(isnan(y1[0]) && isnan(y1[1]));
    CHECKF(strstr(peri_last_error(), "'q' is not a K x m float matrix (type q8_0") != NULL, "by_inputs error: %s",
           peri_last_error());
}

// peri_matmul_t (an m x K Q8_0, Q4_K or Q6_K weight in its T layout: PLM's down projection) against the float64 sum
// over the weight's values: up to 64 x rows through the sparse kernel (90%, 50%, all or no x values zero; passes with
// tails; weights wider than the kernel's column chunk), more rows through the level's GEMM from the layout (Q8_0_T)
// or panels of the base type's rows and its kernel, each through the pool and on the caller alone (no scratch: the
// sparse kernel 4 rows at a time); x rounded (Q8_0, Q8_K) wherever the level's kernel for the base type and n rows
// would quantize it. The layout's conversion must round-trip byte for byte.
static void test_t_level(peri_pool *pool) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    static const int64_t q8_shapes[][4] = {   // m, K, n, % of x zero
        {1, 32, 1, 0},      {7, 64, 2, 50},    {64, 256, 1, -1},    {64, 96, 1, 90},  {100, 320, 3, 90}, {1001, 2400, 1, 90},
        {250, 4160, 4, 50}, {67, 2112, 2, 100}, {129, 160, 1, 0}, {33, 64, 4, 0},   {45, 96, 5, 50},
        {100, 256, 13, 0},  {70, 320, 70, 90}, {300, 2112, 9, 90}, {40, 1088, 66, 50},   // K chunks
        {100, 320, 40, 90}, {0, 0, 0, 0}};   // the partial sums of 16 rows at a time
    static const int64_t k_shapes[][4] = {
        {64, 256, 1, 0},    {128, 512, 2, 50},  {64, 768, 3, 90},   {192, 2560, 4, 90}, {256, 1024, 1, 100},
        {64, 256, 5, 50},   {128, 512, 13, 0},  {2112, 512, 1, 90}, {2112, 256, 3, 50},   // column chunks
        {64, 256, 70, 90},  {192, 512, 66, 50}, {128, 768, 40, 90}, {64, 512, 2, -1},
        {128, 512, 22, 90}, {128, 512, 29, 90}, {1600, 256, 70, 50}, {0, 0, 0, 0}};   // 22: the sparse kernel, two
    // passes of partial sums; 29: Q4_K_T sparse, Q6_K_T chunks; 1600 rows: chunks of 256 and a rest
    const int types[] = {PERI_TYPE_Q8_0_T, PERI_TYPE_Q4_K_T, PERI_TYPE_Q6_K_T};
    int bad = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0] && !bad; ti++) {
        const int tt = types[ti], base = peri_t_base(tt);
#if defined(__x86_64__) || defined(__aarch64__)
        if (peri_kernels_level() != PERI_KERNELS_REF)
        {
            CHECKF(peri_kernels_current()->t_nn[peri_t_kind(tt)] != NULL, "t_nn %s at %s: missing", peri_type_name(tt),
                   lvl);
            CHECKF(tt == PERI_TYPE_Q8_0_T || peri_kernels_current()->t_nn_q8k[peri_t_kind(tt)] != NULL,
                   "t_nn_q8k %s at %s: missing", peri_type_name(tt), lvl);
        }
#endif
        const int64_t(*shapes)[4] = tt == PERI_TYPE_Q8_0_T ? q8_shapes : k_shapes;
        for (size_t si = 0; shapes[si][0] && !bad; si++) {
            const int64_t m = shapes[si][0], K = shapes[si][1], n = shapes[si][2];
            CHECKF(peri_t_layout(base, m, K) == tt, "peri_t_layout(%s, %lld, %lld)", peri_type_name(base), (long long)m,
                   (long long)K);
            // the geometry (codes offset + inputs x code stride) is the file's bytes, no more, no less
            CHECKF(peri_t_group_bytes(tt, m) * (size_t)(K / peri_t_group(tt)) ==
                       (size_t)m * peri_row_size(base, K),
                   "%s: %zu bytes a group for %lld rows", peri_type_name(tt), peri_t_group_bytes(tt, m), (long long)m);
            float *wf = malloc(sizeof(float) * (size_t)(m * K)), *x = malloc(sizeof(float) * (size_t)(n * K));
            char *w = make_weight(base, m, K, wf);
            if (shapes[si][3] < 0) {   // sums at the edge of 16 bits: codes at their top, x at 127
                float *row = malloc(sizeof(float) * (size_t)K);
                for (int64_t r = 0; r < m; r++) {
                    // Q6_K maps the largest magnitude of 16 values to code 0 and the others of opposite sign up to 63
                    for (int64_t k = 0; k < K; k++)
                        row[k] = base == PERI_TYPE_Q6_K ? (k % 16 == r % 16 ? -1.0f : 0.97f) : k % 32 == r % 32 ? 0.0f : 1.0f;
                    peri_type_traits(base)->from_float(row, w + (size_t)r * peri_row_size(base, K), K);
                    peri_type_traits(base)->to_float(w + (size_t)r * peri_row_size(base, K), wf + r * K, K);
                }
                free(row);
            }
            const size_t rs = peri_row_size(base, K), bytes = (size_t)m * rs;
            char *wt = malloc(bytes), *back = malloc(bytes);
            peri_t_from(tt, wt, w, m, K);
            const int64_t P = peri_t_panel(tt);
            for (int64_t j0 = 0; j0 < m; j0 += P) peri_t_rows(tt, back + (size_t)j0 * rs, wt, m, K, j0, m - j0 < P ? m - j0 : P);
            CHECKF(memcmp(back, w, bytes) == 0, "%s round trip m=%lld K=%lld", peri_type_name(tt), (long long)m,
                   (long long)K);
            for (int64_t i = 0; i < n * K; i++) x[i] = shapes[si][3] < 0 ? 1.0f : irand(0, 99) < shapes[si][3] ? 0.0f : frand();
            const peri_tensor W = {.name = "t", .type = tt, .n_dims = 2, .shape = {m, K}, .data = wt, .nbytes = bytes};
            float *y = malloc(sizeof(float) * (size_t)(n * m)), *xd = malloc(sizeof(float) * (size_t)K);
            CHECK(peri_matmul_reserve(pool, K, n, peri_by_inputs_bit(tt)) == PERI_OK);
            for (int pass = 0; pass < 2 && !bad; pass++) {
                peri_pool *pl = pass ? pool : NULL;
                for (int64_t i = 0; i < n * m; i++) y[i] = 12345.0f;
                peri_matmul_t(pl, y, x, &W, n);
                // x as the base type's kernel for n rows would take it: rounded or float
                const int xt = x_type_now(base, n);
                for (int64_t i = 0; i < n && !bad; i++) {
                    requantize(xt, x + i * K, xd, K);
                    for (int64_t j = 0; j < m && !bad; j++) {
                        double ref = 0;
                        for (int64_t k = 0; k < K; k++) ref += (double)xd[k] * wf[j * K + k];
                        // against xd itself: the kernel must round x exactly as the reference would (no quantization
                        // error allowed beyond the sums' rounding)
                        const double tol = mm_tol(base, xt, wf + j * K, xd, xd, K) + 1.2e-7 * fabs(ref);
                        if (!(fabs(y[i * m + j] - ref) <= tol)) {
                            fprintf(stderr, "matmul_t %s %s m=%lld K=%lld n=%lld pool=%d: y[%lld][%lld] = %.9g, ref %.9g "
                                    "(tol %.3g)\n", peri_type_name(tt), lvl, (long long)m, (long long)K, (long long)n,
                                    peri_pool_size(pl), (long long)i, (long long)j, y[i * m + j], ref, tol);
                            bad = 1;
                        }
                    }
                }
            }
            if (n <= 4 && !bad) {   // peri_t_nn on a range of the weight rows (c0 ..; column tails), float x
                const int64_t c0 = tt == PERI_TYPE_Q8_0_T ? m / 3 : m / 3 / 64 * 64, mc = m - c0 > 3 ? m - c0 - 3 : m - c0;
                for (int64_t i = 0; i < n * m; i++) y[i] = 12345.0f;
                peri_t_nn(tt, y, m, x, K, wt, m, c0, mc, K / peri_t_group(tt), n, PERI_TYPE_F32);
                for (int64_t i = 0; i < n && !bad; i++)
                    for (int64_t j = 0; j < m && !bad; j++) {
                        double ref = 0;
                        for (int64_t k = 0; j < mc && k < K; k++) ref += (double)x[i * K + k] * wf[(c0 + j) * K + k];
                        const double tol = j < mc ? mm_tol(base, PERI_TYPE_F32, wf + (c0 + j) * K, x + i * K,
                                                           x + i * K, K) + 1.2e-7 * fabs(ref) : 0;
                        if (j >= mc) ref = 12345.0;   // past the range: untouched
                        if (!(fabs(y[i * m + j] - ref) <= tol)) {
                            fprintf(stderr, "t_nn %s %s m=%lld K=%lld n=%lld c0=%lld: y[%lld][%lld] = %.9g, ref %.9g\n",
                                    peri_type_name(tt), lvl, (long long)m, (long long)K, (long long)n, (long long)c0,
                                    (long long)i, (long long)j, y[i * m + j], ref);
                            bad = 1;
                        }
                    }
            }
            free(wf), free(x), free(w), free(wt), free(back), free(y), free(xd);
        }
        CHECKF(!bad, "matmul_t %s at level %s", peri_type_name(tt), lvl);
    }
    // shapes the layouts cannot take keep the file's layout
    CHECK(peri_t_layout(PERI_TYPE_Q4_K, 48, 256) == -1 && peri_t_layout(PERI_TYPE_Q6_K, 96, 256) == -1 &&
          peri_t_layout(PERI_TYPE_Q8_0, 8, 48) == -1 && peri_t_layout(PERI_TYPE_Q4_0, 64, 256) == -1);
}

static void test_matmul_level(peri_pool *pool) {
    static const int64_t Ks[] = {1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 63, 100, 129, 300};
    static const int64_t Kblocks[] = {1, 2, 3, 5, 7}; // block types: K is a number of blocks
    for (int type = 0; type < PERI_TYPE_COUNT; type++) {
        const struct peri_type_traits *tt = peri_type_traits(type);
        if (!tt || !tt->supported || !tt->dot_f32 || !tt->from_float || !tt->to_float) continue;
        int ok = 1, cases = 0;
        // Types without a kernel at this level take the generic path (the same at every level, and their
        // quantization is slow): fewer cases.
        int fast = peri_kernels_current()->mm[type].fn != NULL;
        if (!fast && !pool) continue;
        // Fixed corners first: M = 1, n = 1..9, K not a multiple of the vector width.
        for (int64_t n = 1; n <= 9; n += fast ? 1 : 4) {
            for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki += 3) {
                int64_t K = tt->blck_size > 1 ? Kblocks[ki % 5] * tt->blck_size : Ks[ki];
                ok &= check_matmul(pool, type, 1, K, n, 0, 0);
                ok &= check_matmul(pool, type, 1 + (n * 7) % 30, K, n, n & 1, n & 2);
                cases += 2;
            }
        }
        for (int t = 0; t < (fast ? 40 : 4); t++) {
            int64_t K = tt->blck_size > 1 ? Kblocks[rnd() % 5] * tt->blck_size : Ks[rnd() % (sizeof Ks / sizeof Ks[0])];
            int64_t M = irand(1, 70), n = t % 4 == 0 ? irand(10, 40) : irand(1, 9);
            ok &= check_matmul(pool, type, M, K, n, irand(0, 1), irand(0, 1));
            cases++;
        }
        // Big enough to go through the pool (the small ones run on the caller).
        ok &= check_matmul(pool, type, 131, tt->blck_size > 1 ? 3 * tt->blck_size : 515, 1, 0, 1);
        ok &= check_matmul(pool, type, 77, tt->blck_size > 1 ? 3 * tt->blck_size : 256, 35, 1, 1);
        // The float prefill GEMM (gemm_outer.inc): both drivers (weight panels for many x rows on a small weight,
        // x panels otherwise), 32-row panels with a partial one, 12-row tiles with a remainder, and K over several
        // chunks of up to 512 (x blocks of 288 rows on AVX-512, 258 on AVX2, 128 on NEON; NEON tiles are 8 rows by 12
        // columns); x panels two at a time with a partial block of one short panel (300 x 1000, 70 rows). {M, K, n}
        // avx512fp16 (F16, BF16): blocks of 96 x rows and 512 weight rows, K chunks with an odd last one (1025), and
        // 600 x 130 x 14 for a partial block of weight rows (without a pool: one call for all 600).
        static const int64_t gg[][3] = {{70, 2100, 45}, {20, 2100, 77}, {33, 1025, 12}, {100, 64, 300}, {13, 1030, 8},
                                        {170, 64, 90}, {64, 170, 90}, {300, 1000, 70}, {600, 130, 14}};
        for (size_t g = 0; tt->blck_size == 1 && g < sizeof gg / sizeof gg[0]; g++)
            ok &= check_matmul(pool, type, gg[g][0], gg[g][1], gg[g][2], (int)(g & 1), (int)(g % 3 != 2));
        // Many x rows on block types with a kernel: the integer GEMMs, and where a level routes them to the float GEMM
        // (f32_from_n, AVX2's Q8_0) its K chunks of whole vectors that start inside a block (35 blocks of 32: 376, 376,
        // 368) and, there only (slow under qemu), x blocks (AVX2: 258 rows) with a partial one.
        if (fast && tt->blck_size > 1) {
            ok &= check_matmul(pool, type, 70, 35 * (int64_t)tt->blck_size, 70, 0, 1);
            if (peri_kernels_current()->mm[type].f32_from_n)
                ok &= check_matmul(pool, type, 37, 5 * (int64_t)tt->blck_size, 300, 1, 1);
        }
        CHECKF(ok, "matmul %s at level %s, %d cases", tt->name, peri_kernels_level_name(peri_kernels_level()), cases);
    }
}

// The integer-dot kernel of each type against its scalar integer reference (peri_qdot_ref: same integer block
// sums, so only the float additions differ), called directly on quantized x rows; and the integer reference
// itself against the float reference with the quantization-error bound of mm_tol.
static void test_qdot_level(void) {
    const struct peri_kernel_set *ks = peri_kernels_current();
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    for (int type = 0; type < PERI_TYPE_COUNT; type++) {
        const struct peri_qdot *qr = peri_qdot_ref(type);
        if (!qr) continue;
        const struct peri_type_traits *tt = peri_type_traits(type), *xtt = peri_type_traits(qr->x_type);
        const struct peri_mm_kernel *e = &ks->mm[type];
        int simd = e->fn && e->x_type != PERI_TYPE_F32;
#if defined(__x86_64__)
        // every type with an integer reference has an x86 kernel (a missing table entry would pass unnoticed); the
        // load-time layouts exist only where their kernel does (peri_repack_type's caller checks)
        if (peri_kernels_level() != PERI_KERNELS_REF && (type != PERI_TYPE_Q4_0_X16 || peri_kernels_level() == PERI_KERNELS_AVX512VNNI ||
                                                        peri_kernels_level() == PERI_KERNELS_AVX2))
            CHECKF(simd, "%s at %s: no integer kernel", tt->name, lvl);
#endif
        if (simd) CHECKF(e->x_type == qr->x_type, "%s at %s: x type %d, reference %d", tt->name, lvl, e->x_type, qr->x_type);
        int ok_simd = 1, ok_ref = 1;
        // Decode kernels take 8 blocks at a time and prepare x in chunks of 256 blocks (K-quants: 32 super-blocks):
        // n == 1 with K from 8 to 600 blocks (also not multiples of 8, and over a chunk boundary), M not a multiple
        // of their row count (520: several chunks with M = 7, a 4-row pass and single rows).
        static const int64_t nb1[] = {8, 9, 16, 17, 31, 40, 256, 263, 600, 520};
        const int n1 = (int)(sizeof nb1 / sizeof nb1[0]);
        // Prefill GEMMs (qgemm_vnni.inc) pack 32 weight rows over chunks of 256 values and keep the block sums of
        // 512 x rows at a time: n from 8, several chunks and a partial one, M across 16- and 32-row edges,
        // n beyond 512. {blocks of K (32-value units; K-quants: super-blocks), M, n}
        static const int64_t gm[][3] = {{29, 70, 13}, {9, 33, 8}, {3, 17, 517}, {16, 40, 37}, {8, 16, 9}, {1, 47, 11}};
        const int ng = (int)(sizeof gm / sizeof gm[0]);
        for (int t = 0; t < 12 + n1 + ng; t++) {
            int64_t K = (int64_t)(1 + t % 5) * (tt->blck_size > 32 ? tt->blck_size : 64), M = 1 + t % 11, n = 1 + t % 6;
            if (t >= 12 && t < 12 + n1)
                K = (tt->blck_size > 32 ? (nb1[t - 12] / 8) : nb1[t - 12]) * tt->blck_size, M = 1 + (t * 5) % 11, n = 1;
            if (t >= 12 + n1) {
                const int64_t *g = gm[t - 12 - n1];
                K = (tt->blck_size > 32 ? g[0] / 4 + 1 : g[0]) * tt->blck_size, M = g[1], n = g[2];
            }
            size_t rs = peri_row_size(type, K), xrs = peri_row_size(qr->x_type, K);
            float *wf = malloc(sizeof(float) * (size_t)(M * K)), *x = malloc(sizeof(float) * (size_t)(n * K));
            float *xd = malloc(sizeof(float) * (size_t)(n * K)), *y = malloc(sizeof(float) * (size_t)(n * M));
            char *w = make_weight(type, M, K, wf), *xq = malloc(xrs * (size_t)n);
            for (int64_t i = 0; i < n * K; i++) x[i] = frand() * (t == 3 ? 1e-3f : 1.0f);
            for (int64_t i = 0; i < n; i++) {
                xtt->from_float(x + i * K, xq + (size_t)i * xrs, K);
                xtt->to_float(xq + (size_t)i * xrs, xd + i * K, K);
            }
            if (simd) e->fn(y, M, xq, xrs, w, rs, K, M, n, NULL);
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < M; j++) {
                    const float *wr = wf + j * K;
                    double r = qr->fn(w + (size_t)j * rs, xq + (size_t)i * xrs, K);
                    double f = tt->dot_f32(w + (size_t)j * rs, x + i * K, K);
                    double tq = mm_tol(type, qr->x_type, wr, x + i * K, xd + i * K, K);
                    double ti = mm_tol(type, qr->x_type, wr, xd + i * K, xd + i * K, K); // rounding part only
                    // K-quant decode: both sides add one float term per super-block (the scale and min parts each
                    // within 2 max|w| * Σ|x| of it), so the bound grows with the super-blocks, not with K (mm_tol's
                    // K-fold slack would hide a whole chunk of x gone missing at K = 16640)
                    if (n == 1 && tt->blck_size == 256) {
                        double sb = 0;
                        for (int64_t b0 = 0; b0 < K; b0 += 256) {
                            double amax = 0, xa = 0;
                            for (int64_t k = b0; k < b0 + 256; k++) amax = fmax(amax, fabs(wr[k])), xa += fabs(xd[i * K + k]);
                            sb += 4 * amax * xa;
                        }
                        ti = fmin(ti, (double)(K / 256 + 16) * 2.4e-7 * sb);
                    }
                    if (!(fabs(r - f) <= tq)) {
                        if (ok_ref) fprintf(stderr, "qdot_ref %s K=%lld: %.9g, float ref %.9g (tol %.3g)\n", tt->name, (long long)K, r, f, tq);
                        ok_ref = 0;
                    }
                    if (simd && !(fabs(y[i * M + j] - r) <= ti)) {
                        if (ok_simd) fprintf(stderr, "qmm %s %s K=%lld M=%lld n=%lld [%lld][%lld]: %.9g, integer ref %.9g (tol %.3g)\n",
                                             lvl, tt->name, (long long)K, (long long)M, (long long)n, (long long)i, (long long)j, y[i * M + j], r, ti);
                        ok_simd = 0;
                    }
                }
            free(wf), free(x), free(xd), free(y), free(w), free(xq);
        }
        CHECKF(ok_ref, "integer reference %s vs float reference", tt->name);
        if (simd) CHECKF(ok_simd, "integer kernel %s at level %s vs its integer reference", tt->name, lvl);
    }
}

#if PERI_HAVE_AMX
// The AMX GEMM (avx512amx.c) scales its exact integer tile sums in the float order of the vpdpbusd GEMM, so the two
// must agree to the bit: x passes of 16 rows with a short one (a zero-padded copy), x blocks of 512 rows with a partial
// one, passes over 1024 values with a partial one, panels of 32 weight rows with a partial one and one of 16 or fewer,
// chunks of 256 values with a partial last one (Q4_0_X16: whole groups of 512). The AMX path starts at 8 x rows for
// Q8_0, 16 for Q4_0 and 32 for the K-quants.
static void test_amx_level(peri_pool *pool) {
    if (peri_kernels_level() != PERI_KERNELS_AVX512AMX) return;
    // where the CPU has AMX-BF16, the level's scores and F16 y = x C are the tile kernels (avx512amx_bf16.c), which
    // test_attn_scores_level and test_matmul_nn_level hold to the float32 tolerances of the others
    const struct peri_cpu *cpu = peri_cpu();
    if (cpu->amx_bf16 && cpu->avx512bf16 && cpu->avx512vbmi)
        CHECK(peri_kernels_current()->attn_scores == peri_amx_attn_scores &&
              peri_kernels_current()->mm_nn[PERI_TYPE_F16] == peri_amx_mm_f16_nn);
    static const int types[] = {PERI_TYPE_Q8_0, PERI_TYPE_Q4_0, PERI_TYPE_Q4_0_X16, PERI_TYPE_Q4_K, PERI_TYPE_Q6_K};
    static const int64_t shapes[][3] = {{9, 45, 16}, {3, 31, 33}, {40, 64, 47}, {17, 1, 64}, {5, 70, 530}, {1, 33, 75}, {2, 20, 9}};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int type = types[ti];
        const struct peri_qdot *qr = peri_qdot_ref(type);
        const struct peri_type_traits *xtt = peri_type_traits(qr->x_type);
        int ok = 1;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            // K in 32-value blocks (K-quants: a quarter as many super-blocks, at least one; Q4_0_X16: groups of 16)
            int64_t K = shapes[si][0] * 32, M = shapes[si][1], n = shapes[si][2];
            if (type == PERI_TYPE_Q4_0_X16) K = (shapes[si][0] / 4 + 1) * 512;
            if (type == PERI_TYPE_Q4_K || type == PERI_TYPE_Q6_K) K = (shapes[si][0] / 4 + 1) * 256;
            size_t rs = peri_row_size(type, K), xrs = peri_row_size(qr->x_type, K);
            float *wf = malloc(sizeof(float) * (size_t)(M * K)), *x = malloc(sizeof(float) * (size_t)(n * K));
            float *y = malloc(sizeof(float) * (size_t)(n * M)), *yv = malloc(sizeof(float) * (size_t)(n * M));
            char *w = make_weight(type, M, K, wf), *xq = malloc(xrs * (size_t)n);
            for (int64_t i = 0; i < n * K; i++) x[i] = frand();
            for (int64_t i = 0; i < n; i++) xtt->from_float(x + i * K, xq + (size_t)i * xrs, K);
            const float *bias = si & 1 ? wf : NULL;
            peri_kernels_current()->mm[type].fn(y, M, xq, xrs, w, rs, K, M, n, bias);
            peri_qmm_avx512vnni[type].fn(yv, M, xq, xrs, w, rs, K, M, n, bias);
            for (int64_t i = 0; i < n * M && ok; i++)
                if (!(y[i] == yv[i])) {
                    fprintf(stderr, "amx %s K=%lld M=%lld n=%lld [%lld][%lld]: %.9g, vpdpbusd GEMM %.9g\n",
                            peri_type_traits(type)->name, (long long)K, (long long)M, (long long)n, (long long)(i / M),
                            (long long)(i % M), y[i], yv[i]);
                    ok = 0;
                }
            free(wf), free(x), free(y), free(yv), free(w), free(xq);
        }
        CHECKF(ok, "AMX GEMM %s against the vpdpbusd GEMM", peri_type_traits(type)->name);
    }
    // Q8_0_T prefill (n > PERI_T_SPARSE_ROWS, with the pool's scratch for x) packs the layout's code rows straight into
    // the panels (q8t_qmm): the same bytes, so the same bits as the Q8_0 rows' GEMM; m with partial panels and split
    // over the threads, passes over 1024 values with a partial one.
    static const int64_t tshapes[][3] = {{100, 1280, 70}, {64, 2112, 530}, {250, 320, 90}};
    int okt = 1;
    for (size_t si = 0; si < sizeof tshapes / sizeof tshapes[0]; si++) {
        const int64_t m = tshapes[si][0], K = tshapes[si][1], n = tshapes[si][2];
        const size_t bytes = (size_t)m * peri_row_size(PERI_TYPE_Q8_0, K);
        float *wf = malloc(sizeof(float) * (size_t)(m * K)), *x = malloc(sizeof(float) * (size_t)(n * K));
        float *y = malloc(sizeof(float) * (size_t)(n * m)), *yr = malloc(sizeof(float) * (size_t)(n * m));
        char *w = make_weight(PERI_TYPE_Q8_0, m, K, wf), *wt = malloc(bytes);
        peri_t_from(PERI_TYPE_Q8_0_T, wt, w, m, K);
        for (int64_t i = 0; i < n * K; i++) x[i] = irand(0, 99) < 50 ? 0.0f : frand();
        const peri_tensor W = {.name = "w", .type = PERI_TYPE_Q8_0, .n_dims = 2, .shape = {m, K}, .data = w, .nbytes = bytes};
        const peri_tensor T = {.name = "t", .type = PERI_TYPE_Q8_0_T, .n_dims = 2, .shape = {m, K}, .data = wt, .nbytes = bytes};
        CHECK(peri_matmul_reserve(pool, K, n, peri_by_inputs_bit(PERI_TYPE_Q8_0_T)) == PERI_OK);
        peri_matmul(pool, yr, x, &W, NULL, n);
        peri_matmul_t(pool, y, x, &T, n);
        for (int64_t i = 0; i < n * m && okt; i++)
            if (!(y[i] == yr[i])) {
                fprintf(stderr, "amx matmul_t q8_0_t m=%lld K=%lld n=%lld [%lld][%lld]: %.9g, rows %.9g\n", (long long)m,
                        (long long)K, (long long)n, (long long)(i / m), (long long)(i % m), y[i], yr[i]);
                okt = 0;
            }
        free(wf), free(x), free(y), free(yr), free(w), free(wt);
    }
    CHECKF(okt, "AMX GEMM from Q8_0_T against the Q8_0 rows");
}
#endif

// SIMD activation quantizers must give the reference's bytes exactly (the integer kernels and their references
// then see the same codes): random rows at several magnitudes (down to fp16 subnormal scales), exact halves (roundf
// ties), +a and -a as the largest magnitude in either order (Q8_K keeps the first one's sign), all-zero blocks.
static void test_quantize_level(void) {
    const struct peri_kernel_set *ks = peri_kernels_current();
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    for (int xt = 0; xt < PERI_TYPE_COUNT; xt++) {
        if (!ks->quantize_x[xt]) continue;
        const struct peri_type_traits *tt = peri_type_traits(xt);
        int ok = 1;
        // Q8_0: 37 blocks, two batches of 16 (avx512.c) and 5 alone
        const int64_t K = 4 * 256 + (xt == PERI_TYPE_Q8_0 ? 5 * 32 : 0);
        size_t rs = peri_row_size(xt, K);
        float *x = malloc(sizeof(float) * K);
        char *a = malloc(rs), *b = malloc(rs);
        for (int t = 0; t < 400 && ok; t++) {
            static const float mags[] = {1.0f, 1e-3f, 3e-5f, 1e-7f, 1e-30f, 1e4f, 70000.0f * 127.0f, 1e30f};
            float mag = mags[t % 8];
            for (int64_t k = 0; k < K; k++) {
                x[k] = frand() * mag;
                if (t % 5 == 1) x[k] = (float)irand(-254, 254) * 0.5f; // halves: amax 127 gives d = 1, exact ties
                if (t % 5 == 2 && rnd() % 3 == 0) x[k] = 0.0f;
            }
            if (t % 5 == 1)
                for (int64_t k = 0; k < K; k += 32) x[k + irand(0, 31)] = irand(0, 1) ? 127.0f : -127.0f;
            if (t % 5 == 3) // equal magnitudes of opposite signs as the largest, in random order
                for (int64_t k = 0; k < K; k += 32) {
                    int i = irand(0, 31), j = irand(0, 31);
                    x[k + i] = 3.0f * mag, x[k + j] = -3.0f * mag;
                }
            if (t % 5 == 4) memset(x + 256, 0, sizeof(float) * 256); // a whole zero super-block
            memset(a, 0x5a, rs), memset(b, 0xa5, rs);
            ks->quantize_x[xt](x, a, K);
            tt->from_float(x, b, K);
            if (memcmp(a, b, rs)) {
                size_t o = 0;
                while (a[o] == b[o]) o++;
                fprintf(stderr, "quantize %s at %s, case %d: byte %zu is %d, reference %d\n", tt->name, lvl, t, o,
                        (unsigned char)a[o], (unsigned char)b[o]);
                ok = 0;
            }
        }
        CHECKF(ok, "SIMD quantizer %s at %s matches the reference byte for byte", tt->name, lvl);
        free(x), free(a), free(b);
    }
    // peri_f32_to_f16_row (PLM's F16 cache rows): the level's converter, or the reference where it has none.
    {
        float x[37];
        uint16_t a[37], b[37];
        for (int k = 0; k < 37; k++) x[k] = frand() * (k % 5 ? 1.0f : 1e-6f) * (k % 7 ? 1.0f : 1e5f);
        peri_f32_to_f16_row(a, x, 37);
        peri_type_traits(PERI_TYPE_F16)->from_float(x, b, 37);
        CHECKF(!memcmp(a, b, sizeof a), "peri_f32_to_f16_row at %s matches the reference", lvl);
    }
    // F16 rows (a value at a time, so any length): random float bits (NaNs with payloads, infinities, subnormals,
    // values that overflow) and exact ties halfway between two halves, at lengths around the vector width.
    if (ks->quantize_x[PERI_TYPE_F16]) {
        const struct peri_type_traits *tt = peri_type_traits(PERI_TYPE_F16);
        int ok = 1;
        for (int64_t len = 1; len <= 70 && ok; len++) {
            float x[70];
            uint16_t a[71], b[71];
            for (int rep = 0; rep < 20 && ok; rep++) {
                for (int64_t k = 0; k < len; k++) {
                    uint32_t bits = (uint32_t)rnd() * 2654435761u ^ (uint32_t)rnd() << 7;
                    if (rep % 2) { // halfway between half h and h + 1 (both finite)
                        uint16_t h = (uint16_t)(bits % 0x7bff), h1 = (uint16_t)(h + 1), hs[2] = {h, h1};
                        float f[2];
                        tt->to_float(hs, f, 2);
                        x[k] = (f[0] + f[1]) / 2 * (bits & 0x80000000u ? -1.0f : 1.0f);
                    } else {
                        memcpy(&x[k], &bits, sizeof bits);
                    }
                }
                a[len] = b[len] = 0x5a5a;
                ks->quantize_x[PERI_TYPE_F16](x, a, len);
                tt->from_float(x, b, len);
                for (int64_t k = 0; k <= len && ok; k++)
                    if (a[k] != b[k]) {
                        uint32_t xb = 0;
                        if (k < len) memcpy(&xb, &x[k], sizeof xb);
                        fprintf(stderr, "f16 row at %s, length %lld: value %lld (bits 0x%08x) gives 0x%04x, reference 0x%04x\n",
                                lvl, (long long)len, (long long)k, xb, a[k], b[k]);
                        ok = 0;
                    }
            }
        }
        CHECKF(ok, "SIMD f16 rows at %s match the reference byte for byte", lvl);
    }
}

// Half-precision partial sums that leave F16's range (avx512fp16.c): x values within F16 (60000 and 1000, exact in
// F16) whose products add up past 65504 must come out finite, as the float sums of the same operands; and BF16
// weights beyond F16's range (up to 3e6: inf once rounded to F16) with ordinary x.
static void check_f16_overflow(peri_pool *pool, int type, float xmag, float wmag) {
    const int64_t M = 37, K = 70, n = 20;
    const struct peri_type_traits *tt = peri_type_traits(type);
    const size_t rs = peri_row_size(type, K);
    float *wf = malloc(sizeof(float) * (size_t)(M * K)), *x = malloc(sizeof(float) * (size_t)(n * K));
    char *w = malloc(rs * (size_t)M);
    for (int64_t r = 0; r < M; r++) {
        for (int64_t k = 0; k < K; k++) wf[r * K + k] = frand() * wmag;
        tt->from_float(wf + r * K, w + (size_t)r * rs, K);
        tt->to_float(w + (size_t)r * rs, wf + r * K, K);
    }
    for (int64_t i = 0; i < n * K; i++) x[i] = (xmag > 1 && i % 3 ? 1000.0f : xmag) * (rnd() % 4 ? 1.0f : -1.0f);
    float *y = malloc(sizeof(float) * (size_t)(n * M)), *yr = malloc(sizeof(float) * (size_t)(n * M));
    peri_tensor W = {.name = "w", .type = type, .n_dims = 2, .shape = {M, K}, .data = w, .nbytes = rs * (size_t)M};
    peri_matmul(pool, y, x, &W, NULL, n);
    peri_matmul_ref(NULL, yr, x, &W, NULL, n);
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++)
        for (int64_t j = 0; j < M && ok; j++) {
            double sabs = 0;
            for (int64_t k = 0; k < K; k++) sabs += fabs((double)wf[j * K + k] * x[i * K + k]);
            double tol = (double)(K + 8) * 1.2e-7 * sabs; // x (+-1, +-1000, +-60000) is exact in F16
            double d = fabs((double)y[i * M + j] - yr[i * M + j]);
            if (!(d <= tol)) {
                fprintf(stderr, "%s overflow at %s: y[%lld][%lld] = %g, reference %g\n", tt->name,
                        peri_kernels_level_name(peri_kernels_level()), (long long)i, (long long)j, y[i * M + j],
                        yr[i * M + j]);
                ok = 0;
            }
        }
    CHECKF(ok, "%s weights with partial sums beyond F16's range at %s", tt->name,
           peri_kernels_level_name(peri_kernels_level()));
    free(wf), free(w), free(x), free(y), free(yr);
}

static void test_f16_overflow_level(peri_pool *pool) {
    check_f16_overflow(pool, PERI_TYPE_F16, 60000.0f, 1.0f);
    check_f16_overflow(pool, PERI_TYPE_BF16, 60000.0f, 1.0f);
    check_f16_overflow(pool, PERI_TYPE_BF16, 1.0f, 3e6f);
}

// Run-time operands (PERI_TENSOR_FLOAT_SUMS: PLM's F16 latent cache rows as the scores' weight) keep float32 x and sums
// at every level: the float32 bound, which the half-precision sums of avx512fp16 exceed (about 1e-4 of sum |w x| at
// K = 64, against 8.6e-6).
static void test_runtime_operand_level(peri_pool *pool) {
    const int64_t M = 40, K = 64, n = 24;
    float *wf = malloc(sizeof(float) * (size_t)(M * K)), *x = malloc(sizeof(float) * (size_t)(n * K));
    void *w = make_weight(PERI_TYPE_F16, M, K, wf);
    for (int64_t i = 0; i < n * K; i++) x[i] = frand();
    float *y = malloc(sizeof(float) * (size_t)(n * M)), *yr = malloc(sizeof(float) * (size_t)(n * M));
    peri_tensor W = {.name = "cache", .type = PERI_TYPE_F16, .n_dims = 2, .shape = {M, K}, .data = w,
                     .nbytes = peri_row_size(PERI_TYPE_F16, K) * (size_t)M, .flags = PERI_TENSOR_FLOAT_SUMS};
    peri_matmul_ex(pool, y, M, x, K, &W, 0, M, NULL, n);
    peri_matmul_ex_ref(NULL, yr, M, x, K, &W, 0, M, NULL, n);
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++)
        for (int64_t j = 0; j < M && ok; j++) {
            double tol = mm_tol(PERI_TYPE_F16, PERI_TYPE_F32, wf + j * K, x + i * K, x + i * K, K);
            if (!(fabs((double)y[i * M + j] - yr[i * M + j]) <= tol)) {
                fprintf(stderr, "run-time F16 operand at %s: y[%lld][%lld] = %.9g, reference %.9g (tol %.3g)\n",
                        peri_kernels_level_name(peri_kernels_level()), (long long)i, (long long)j, y[i * M + j],
                        yr[i * M + j], tol);
                ok = 0;
            }
        }
    CHECKF(ok, "run-time F16 operand keeps float32 sums at %s", peri_kernels_level_name(peri_kernels_level()));
    free(wf), free(w), free(x), free(y), free(yr);
}

// Exact mode (float activations), the pool's scratch against the stack chunks (n over several chunks), and
// rows too long for the stack buffer (float activations then).
static void test_modes_level(peri_pool *pool) {
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    const int types[] = {PERI_TYPE_Q8_0, PERI_TYPE_Q4_0, PERI_TYPE_Q4_K, PERI_TYPE_Q6_K, PERI_TYPE_Q5_1, PERI_TYPE_Q2_K,
                         PERI_TYPE_Q3_K};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        int bs = (int)peri_type_traits(types[t])->blck_size;
        peri_kernels_set_exact(true);
        CHECKF(check_matmul(pool, types[t], 19, 3 * bs, 5, 1, 1), "exact mode %s at %s", peri_type_name(types[t]), lvl);
        peri_kernels_set_exact(false);
        CHECKF(check_matmul(pool, types[t], 21, 2048, 37, 0, 1), "stack chunks %s at %s", peri_type_name(types[t]), lvl);
        CHECKF(check_matmul(pool, types[t], 3, 16384 * 2, 2, 0, 0), "long rows %s at %s", peri_type_name(types[t]), lvl);
    }
    peri_pool *p2 = peri_pool_new(2);
    CHECK(peri_matmul_reserve(p2, 2048, 40, 0) == PERI_OK);
    size_t sz = peri_pool_scratch_size(p2);
    CHECK(sz >= 40 * 2336);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        CHECKF(check_matmul(p2, types[t], 45, 2048, 37, 1, 1), "scratch %s at %s", peri_type_name(types[t]), lvl);
    // The generic path (dequantized rows in the scratch) with a type that has no kernel: Q8_1 weights.
    CHECKF(check_matmul(p2, PERI_TYPE_Q8_1, 45, 256, 20, 1, 1), "generic path with scratch at %s", lvl);
    CHECK(peri_pool_scratch_size(p2) == sz); // matmuls never grow it
    // The T layouts' prefill scratch (256-row chunks of the base type per thread) only when asked for.
    peri_pool *p3 = peri_pool_new(2);
    const size_t chunks = (size_t)2 * 256 * peri_row_size(PERI_TYPE_Q4_K, 8192);
    CHECK(peri_matmul_reserve(p3, 8192, 2, peri_by_inputs_bit(PERI_TYPE_F16)) == PERI_OK);
    CHECK(peri_pool_scratch_size(p3) < chunks);
    CHECK(peri_matmul_reserve(p3, 8192, 2, peri_by_inputs_bit(PERI_TYPE_Q4_K_T)) == PERI_OK);
    CHECK(peri_pool_scratch_size(p3) >= chunks);
    CHECK(peri_by_inputs_bit(PERI_TYPE_Q4_K_T) != peri_by_inputs_bit(PERI_TYPE_Q6_K_T) &&
          peri_by_inputs_bit(PERI_TYPE_F16) == peri_by_inputs_bit(PERI_TYPE_F32));
    peri_pool_free(p3);
    peri_pool_free(p2);
}

static int close_rel(double a, double b, double rel, double abs_tol) {
    double d = fabs(a - b);
    return d <= abs_tol + rel * fabs(b) || (isnan(a) && isnan(b));
}

// Half -> float rows: exact, so bit-identical to the reference, on every half that is not a NaN (all 63488 of them,
// subnormals and infinities included) at odd lengths.
static void test_f16_row_level(void) {
    const int64_t n = 65536;
    uint16_t *h = malloc(sizeof(uint16_t) * n);
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    int64_t m = 0;
    for (uint32_t v = 0; v < 65536; v++)
        if ((v & 0x7c00) != 0x7c00 || (v & 0x3ff) == 0) h[m++] = (uint16_t)v;
    int ok = 1;
    for (int64_t len = m; len > 0 && ok; len = len > 40 ? len / 3 : len - 1) {
        int64_t off = len % 7;
        if (off + len > m) off = 0;
        peri_f16_to_f32_row(a, h + off, len);
        peri_f16_to_f32_row_ref(b, h + off, len);
        ok = memcmp(a, b, sizeof(float) * (size_t)len) == 0;
    }
    CHECKF(ok, "f16 row conversion at %s differs from the reference", peri_kernels_level_name(peri_kernels_level()));
    free(h), free(a), free(b);
}

static void test_rows_level(void) {
    test_f16_row_level();
    const char *lvl = peri_kernels_level_name(peri_kernels_level());
    static const int64_t Ns[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1000, 4099};
    int ok_dot = 1, ok_axpy = 1, ok_norm = 1, ok_sm = 1, ok_silu = 1;
    for (size_t t = 0; t < sizeof Ns / sizeof Ns[0]; t++) {
        int64_t n = Ns[t];
        float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
        float *w = malloc(sizeof(float) * (size_t)n), *c = malloc(sizeof(float) * (size_t)n);
        float *y1 = malloc(sizeof(float) * (size_t)n), *y2 = malloc(sizeof(float) * (size_t)n);
        double sabs = 0;
        for (int64_t i = 0; i < n; i++) {
            a[i] = frand() * 3.0f + 0.5f;
            b[i] = frand();
            w[i] = frand();
            c[i] = frand();
            sabs += fabs((double)a[i] * b[i]);
        }
        double dtol = (double)(n + 8) * 1.2e-7 * sabs;
        ok_dot &= fabs((double)peri_dot(a, b, n) - peri_dot_ref(a, b, n)) <= dtol;

        memcpy(y1, c, sizeof(float) * (size_t)n);
        memcpy(y2, c, sizeof(float) * (size_t)n);
        peri_axpy(y1, 0.37f, a, n);
        peri_axpy_ref(y2, 0.37f, a, n);
        for (int64_t i = 0; i < n; i++) ok_axpy &= close_rel(y1[i], y2[i], 2.4e-7, 2.4e-7 * fabs(0.37 * a[i]));

        // Norms: outputs are O(|w|+|b|); sums of n terms change order, so the error grows with n.
        double ntol = 1e-6 + (double)n * 2e-8;
        for (int variant = 0; variant < 4; variant++) {
            const float *wp = variant & 1 ? w : NULL, *bp = variant & 2 ? c : NULL;
            peri_rmsnorm(y1, a, wp, n, 1e-6f);
            peri_rmsnorm_ref(y2, a, wp, n, 1e-6f);
            for (int64_t i = 0; i < n; i++) ok_norm &= close_rel(y1[i], y2[i], ntol, ntol);
            peri_layernorm(y1, a, wp, bp, n, 1e-5f);
            peri_layernorm_ref(y2, a, wp, bp, n, 1e-5f);
            for (int64_t i = 0; i < n; i++) ok_norm &= close_rel(y1[i], y2[i], ntol * 4, ntol * 4);
        }
        // in place, as the models use them
        memcpy(y1, a, sizeof(float) * (size_t)n);
        peri_rmsnorm(y1, y1, w, n, 1e-6f);
        peri_rmsnorm_ref(y2, a, w, n, 1e-6f);
        for (int64_t i = 0; i < n; i++) ok_norm &= close_rel(y1[i], y2[i], ntol, ntol);

        // Softmax over logits with a wide range, including -inf (masked positions).
        for (int64_t i = 0; i < n; i++) y1[i] = y2[i] = a[i] * 20.0f;
        if (n > 3) y1[1] = y2[1] = -INFINITY;
        peri_softmax(y1, n);
        peri_softmax_ref(y2, n);
        for (int64_t i = 0; i < n; i++) ok_sm &= close_rel(y1[i], y2[i], 1e-5, 1e-9);

        for (int64_t i = 0; i < n; i++) y2[i] = a[i] * 30.0f;
        if (n > 4) y2[2] = -100.0f, y2[3] = 100.0f;
        peri_silu_row(y1, y2, n);
        peri_silu_row_ref(y2, y2, n); // in place
        for (int64_t i = 0; i < n; i++) ok_silu &= close_rel(y1[i], y2[i], 1e-6, 1e-30);
        // swiglu, also in place over either input
        for (int64_t i = 0; i < n; i++) y2[i] = a[i] * 30.0f;
        peri_swiglu(y1, y2, b, n);
        memcpy(c, y2, sizeof(float) * (size_t)n);
        peri_swiglu_ref(c, c, b, n);
        for (int64_t i = 0; i < n; i++) ok_silu &= close_rel(y1[i], c[i], 1e-6, 1e-30);
        memcpy(c, b, sizeof(float) * (size_t)n);
        peri_swiglu(c, y2, c, n);
        for (int64_t i = 0; i < n; i++) ok_silu &= close_rel(c[i], y1[i], 1e-6, 1e-30);
        free(a), free(b), free(w), free(c), free(y1), free(y2);
    }
    // The bandwidth probe's reader.
    {
        int64_t len = 16 * 37, stride = len + 16;
        float *p = malloc(sizeof(float) * (size_t)(8 * stride));
        double sabs = 0;
        for (int64_t i = 0; i < 8 * stride; i++) p[i] = frand();
        for (int r = 0; r < 8; r++)
            for (int64_t i = 0; i < len; i++) sabs += fabs(p[r * stride + i]);
        const struct peri_kernel_set *ks = peri_kernels_current();
        CHECKF(fabs((double)ks->sum8(p, len, stride) - peri_sum8_ref(p, len, stride)) <= 8 * len * 1.2e-7 * sabs,
               "sum8 at level %s", lvl);
        free(p);
    }
    // Edge values of silu: large magnitudes, zero, nan.
    float e[] = {0.0f, -0.0f, 88.0f, -88.0f, 89.0f, -89.0f, -104.0f, 1000.0f, -1000.0f, 1e-30f, NAN, 3.0f, -3.0f,
                 0.5f, -0.5f, 20.0f, -20.0f};
    float ey[17], er[17];
    peri_silu_row(ey, e, 17);
    peri_silu_row_ref(er, e, 17);
    for (int i = 0; i < 17; i++) ok_silu &= close_rel(ey[i], er[i], 1e-6, 1e-30);
    CHECKF(ok_dot, "dot at level %s", lvl);
    CHECKF(ok_axpy, "axpy at level %s", lvl);
    CHECKF(ok_norm, "rmsnorm/layernorm at level %s", lvl);
    CHECKF(ok_sm, "softmax at level %s", lvl);
    CHECKF(ok_silu, "silu/swiglu at level %s", lvl);
}

// PERI_KERNELS is read at the first use: check it in a child process.
static void test_env(const char *self) {
    for (int l = 0; l < PERI_KERNELS_LEVELS; l++) {
        char cmd[4200];
        // (cross builds run their tests under an emulator, which the child needs too)
        const char *emu = getenv("PERI_TEST_EMULATOR");
        snprintf(cmd, sizeof cmd, "PERI_KERNELS=%s %s '%s' --print-level", peri_kernels_level_name(l), emu ? emu : "", self);
        FILE *f = popen(cmd, "r");
        if (!f) continue;
        char out[64] = {0};
        if (!fgets(out, sizeof out, f)) out[0] = 0;
        pclose(f);
        out[strcspn(out, "\n")] = 0;
        if (peri_kernels_supported(l))
            CHECKF(!strcmp(out, peri_kernels_level_name(l)), "PERI_KERNELS=%s gave '%s'", peri_kernels_level_name(l), out);
        else
            CHECKF(strcmp(out, peri_kernels_level_name(l)) != 0 && out[0], "unsupported PERI_KERNELS=%s gave '%s'",
                   peri_kernels_level_name(l), out);
    }
}

// Micro-benchmark (not a test): test_kernels --bench TYPE K M N THREADS REPS [MB].
// Decode-like: enough M x K weights of TYPE to cover MB megabytes (default 512, beyond the caches) are multiplied
// by N x rows each, one after the other, best of REPS passes; prints the weight bytes read per second next to the
// bandwidth probe over the same number of bytes, measured right before and after (the machine is shared).
static double now_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: %s --bench TYPE K M N THREADS REPS [MB]\n", argv[0]);
        return 2;
    }
    int type = -1;
    for (int t = 0; t < PERI_TYPE_COUNT; t++)
        if (peri_type_traits(t) && peri_type_traits(t)->name && !strcmp(peri_type_traits(t)->name, argv[2])) type = t;
    int64_t K = atoll(argv[3]), M = atoll(argv[4]), n = atoll(argv[5]);
    int th = atoi(argv[6]), reps = atoi(argv[7]);
    double mb = argc > 8 ? atof(argv[8]) : 512;
    if (type < 0 || K <= 0 || M <= 0 || n <= 0 || th <= 0 || reps <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    size_t rs = peri_row_size(type, K), wb = rs * (size_t)M;
    int nmat = (int)(mb * 1e6 / (double)wb) + 1;
    peri_pool *pool = peri_pool_new(th);
    peri_matmul_reserve(pool, K, n, 0);
    char *w = malloc(wb * (size_t)nmat);
    float *x = malloc(sizeof(float) * (size_t)(n * K)), *y = malloc(sizeof(float) * (size_t)(n * M));
    float *row = malloc(sizeof(float) * (size_t)K);
    for (int64_t r = 0; r < M; r++) { // one matrix of random rows, copied: the bytes are what matters
        for (int64_t k = 0; k < K; k++) row[k] = frand();
        peri_type_traits(type)->from_float(row, w + (size_t)r * rs, K);
    }
    for (int i = 1; i < nmat; i++) memcpy(w + (size_t)i * wb, w, wb);
    for (int64_t i = 0; i < n * K; i++) x[i] = frand();
    double bw0 = peri_measure_read_bandwidth(pool, wb * (size_t)nmat), best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
        for (int i = 0; i < nmat; i++) {
            peri_tensor W = {.name = "w", .type = type, .n_dims = 2, .shape = {M, K}, .data = w + (size_t)i * wb, .nbytes = wb};
            peri_matmul(pool, y, x, &W, NULL, n);
        }
        double t = (now_s(CLOCK_MONOTONIC) - t0) / nmat, c = (now_s(CLOCK_PROCESS_CPUTIME_ID) - c0) / nmat / th;
        if (t < best) best = t;
        if (c < best_cpu) best_cpu = c;
    }
    double bw1 = peri_measure_read_bandwidth(pool, wb * (size_t)nmat);
    printf("%s %s K=%lld M=%lld n=%lld t=%d: %.3f ms per matmul, %.1f GB/s of weights, %.1f GFLOPS (CPU time: %.1f GB/s, %.1f GFLOPS per thread); probe %.1f / %.1f GB/s (%.0f%% of the better)\n",
           peri_kernels_level_name(peri_kernels_level()), argv[2], (long long)K, (long long)M, (long long)n, th, best * 1e3,
           (double)wb / best / 1e9, 2.0 * (double)K * (double)M * (double)n / best / 1e9, (double)wb / best_cpu / 1e9,
           2.0 * (double)K * (double)M * (double)n / best_cpu / th / 1e9, bw0, bw1,
           100.0 * (double)wb / best / 1e9 / (bw0 > bw1 ? bw0 : bw1));
    free(w), free(x), free(y), free(row);
    peri_pool_free(pool);
    return 0;
}

// peri_transpose_elems: 2- and 4-byte elements, shapes off its 32 x 32 tiles, source rows wider than the columns
// taken, unaligned addresses (a file's tensor need not be aligned).
static void test_transpose(void) {
    static const int64_t shapes[][3] = {{1, 1, 1}, {5, 3, 3}, {33, 70, 70}, {64, 32, 40}, {97, 45, 131}, {0, 0, 0}};
    for (size_t si = 0; shapes[si][0]; si++)
        for (size_t esz = 2; esz <= 4; esz += 2) {
            const int64_t rows = shapes[si][0], cols = shapes[si][1], ld = shapes[si][2];
            unsigned char *src = malloc(esz * (size_t)(rows * ld) + 1), *dst = malloc(esz * (size_t)(rows * cols) + 1);
            for (size_t b = 0; b < esz * (size_t)(rows * ld) + 1; b++) src[b] = (unsigned char)(b * 131 + b / 7);
            memset(dst, 0xEE, esz * (size_t)(rows * cols) + 1);
            peri_transpose_elems(dst + 1, src + 1, rows, cols, ld, esz);
            int bad = 0;
            for (int64_t r = 0; r < rows && !bad; r++)
                for (int64_t c = 0; c < cols && !bad; c++)
                    bad = memcmp(dst + 1 + esz * (size_t)(c * rows + r), src + 1 + esz * (size_t)(r * ld + c), esz) != 0;
            CHECKF(!bad, "transpose %lld x %lld (ld %lld) of %zu-byte elements", (long long)rows, (long long)cols,
                   (long long)ld, esz);
            free(src);
            free(dst);
        }
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--bench")) return bench(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "--print-level")) {
        printf("%s\n", peri_kernels_level_name(peri_kernels_level()));
        return 0;
    }
    printf("kernels: %s\n", peri_kernels_info());
    int best = peri_kernels_level();
    CHECK(peri_kernels_supported(PERI_KERNELS_REF));
    CHECK(peri_kernels_set_level(PERI_KERNELS_LEVELS) < 0);
    CHECK(peri_kernels_set_level(-1) < 0);
    peri_pool *pool = peri_pool_new(3);
    CHECK(pool != NULL);
    int levels = 0;
    for (int l = 0; l < PERI_KERNELS_LEVELS; l++) {
        if (!peri_kernels_supported(l)) {
            CHECK(peri_kernels_set_level(l) < 0);
            continue;
        }
        CHECK(peri_kernels_set_level(l) == PERI_OK);
        CHECK(peri_kernels_level() == l);
        levels++;
        printf("level %s\n", peri_kernels_level_name(l));
        test_matmul_level(NULL);
        test_matmul_level(pool);
        test_rows_level();
        test_get_row_level();
        test_matmul_nn_level();
        test_attn_scores_level();
        test_t_level(pool);
        test_by_inputs_level(pool);
        test_qdot_level();
#if PERI_HAVE_AMX
        test_amx_level(pool);
#endif
        test_quantize_level();
        test_modes_level(pool);
        test_f16_overflow_level(pool);
        test_runtime_operand_level(pool);
    }
    CHECK(levels >= 1);
    peri_kernels_set_level(best);
    test_transpose();

    // Unsupported weight types must not be read: the output becomes NaN and an error is set.
    float x[4] = {1, 2, 3, 4}, y[2] = {0, 0};
    peri_tensor bad = {.name = "bad", .type = PERI_TYPE_I32, .n_dims = 2, .shape = {2, 4}, .data = x, .nbytes = 16};
    peri_matmul(pool, y, x, &bad, NULL, 1);
    CHECK(isnan(y[0]) && isnan(y[1]));

    double bw = peri_measure_read_bandwidth(pool, (size_t)4 << 20);
    CHECKF(bw > 0.1, "bandwidth %.3f GB/s", bw);
    printf("read bandwidth (4 MB, %d threads): %.1f GB/s\n", peri_pool_size(pool), bw);

    if (argc > 0) test_env(argv[0]);
    peri_pool_free(pool);
    return TEST_END();
}
