// AVX2 + FMA + F16C kernels; compiled for x86-64 only and chosen at run time by kernels/dispatch.c.
#if defined(__x86_64__)
#include "kernels/kernels_impl.h"
#include "tensor/quants.h"
#include "tensor/repack.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

// Register tiles (16 ymm): prefill 4 x rows by 3 weight rows = 12 accumulators (decode: hv_rows).
#define TR 4
#define TC 3

// 8 bytes from p as int32 lanes.
PERI_INLINE __m256i u8x8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

// The codes of Q8_0 and Q4_0 blocks as float, 8 values at a time (ld_w, the dequantizers and the y = x C kernels):
// Q8_0's 8 signed bytes at q; Q4_0's q - 8 for the low nibbles of the 8 bytes at q (values 0..15 of the block lie
// in the low nibbles of its 16 code bytes) or, with high set, their high nibbles (values 16..31).
PERI_INLINE __m256 q8_0_vals8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}
PERI_INLINE __m256 q4_0_vals8(const uint8_t *q, int high) {
    const __m256i v = high ? _mm256_srli_epi32(u8x8(q), 4) : _mm256_and_si256(u8x8(q), _mm256_set1_epi32(15));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(8)));
}

PERI_INLINE __m256 ld_w(int wt, const char *w, int64_t k) {
    if (wt == PERI_TYPE_F32) return _mm256_loadu_ps((const float *)w + k);
    // Block types: K is a multiple of 32, so k is 8-aligned and 8 values never straddle a block. The
    // products q * d round exactly as the reference dequantization does.
    if (wt == PERI_TYPE_Q8_0) {
        const block_q8_0 *b = (const block_q8_0 *)w + (k >> 5);
        return _mm256_mul_ps(q8_0_vals8(b->qs + (k & 24)), _mm256_set1_ps(_cvtsh_ss(b->d)));
    }
    if (wt == PERI_TYPE_Q4_0) {
        const block_q4_0 *b = (const block_q4_0 *)w + (k >> 5);
        return _mm256_mul_ps(q4_0_vals8(b->qs + (k & 8), (int)(k & 16)), _mm256_set1_ps(_cvtsh_ss(b->d)));
    }
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (wt == PERI_TYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// The last K % 8 values of a row, zero-padded to a full vector (AVX2 has no masked 16-bit loads).
PERI_INLINE __m256 ld_w_tail(int wt, const char *w, int64_t k, int64_t left) {
    if (wt == PERI_TYPE_Q8_0 || wt == PERI_TYPE_Q4_0) return ld_w(wt, w, k); // never partial
    size_t esz = wt == PERI_TYPE_F32 ? 4 : 2;
    _Alignas(32) char buf[32] = {0};
    memcpy(buf, w + (size_t)k * esz, (size_t)left * esz);
    return ld_w(wt, buf, 0);
}

PERI_INLINE __m256 ld_x_tail(const float *x, int64_t left) {
    _Alignas(32) float buf[8] = {0};
    memcpy(buf, x, (size_t)left * sizeof(float));
    return _mm256_load_ps(buf);
}

PERI_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Over k in [k0, k1): accumulators start at zero (first) or from sc[r*C + c], and end reduced into y
// (when k1 == K) or back in sc, so that long rows can be cut into chunks whose weights stay in L1.
PERI_INLINE void tile(int wt, int R, int C, float *y, int64_t ldy, const float *x, int64_t ldx, const char *w,
                      size_t ws, int64_t k0, int64_t k1, int64_t K, const float *bias, __m256 *sc, int first) {
    __m256 acc[TR][TC];
    PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
        acc[r][c] = first ? _mm256_setzero_ps() : _mm256_load_ps((const float *)&sc[r * C + c]);
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) {
        __m256 xv[TR];
        PERI_UNROLL for (int r = 0; r < R; r++) xv[r] = _mm256_loadu_ps(x + r * ldx + k);
        PERI_UNROLL for (int c = 0; c < C; c++) {
            __m256 wv = ld_w(wt, w + (size_t)c * ws, k);
            PERI_UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (k < k1) {
        __m256 xv[TR];
        PERI_UNROLL for (int r = 0; r < R; r++) xv[r] = ld_x_tail(x + r * ldx + k, k1 - k);
        PERI_UNROLL for (int c = 0; c < C; c++) {
            __m256 wv = ld_w_tail(wt, w + (size_t)c * ws, k, k1 - k);
            PERI_UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (k1 < K) {
        PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
            _mm256_store_ps((float *)&sc[r * C + c], acc[r][c]);
        return;
    }
    PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
        y[r * ldy + c] = hsum(acc[r][c]) + (bias ? bias[c] : 0.0f);
}

// Decode (n == 1) of float weights (and of Q8_0 / Q4_0 in exact mode): R rows (ws bytes apart) against x, 16 values
// per step in two accumulators per row (8 FMA chains for 4 rows hide the FMA latency); writes the dots to
// out[r * os]. The rows come from 4 streams far apart (PERI_DECODE_PASSES, docs/kernels.md "4 streams"); wn, the
// rows after next, is not prefetched: on Zen 3 the hardware prefetchers alone read as fast (software prefetch into
// L2 measured 0.95 of the probe against 1.0 without).
#define HV_ROWS 4
PERI_INLINE void hv_rows(int wt, int R, const char *w, size_t ws, const float *x, int64_t K, float *out,
                         const char *wn, int64_t os) {
    __m256 a0[HV_ROWS], a1[HV_ROWS];
    PERI_UNROLL for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    (void)wn;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        PERI_UNROLL for (int r = 0; r < R; r++) {
            a0[r] = _mm256_fmadd_ps(x0, ld_w(wt, w + (size_t)r * ws, k), a0[r]);
            a1[r] = _mm256_fmadd_ps(x1, ld_w(wt, w + (size_t)r * ws, k + 8), a1[r]);
        }
    }
    for (; k < K; k += 8) {
        const int64_t left = K - k < 8 ? K - k : 8;
        const __m256 x0 = left == 8 ? _mm256_loadu_ps(x + k) : ld_x_tail(x + k, left);
        PERI_UNROLL for (int r = 0; r < R; r++)
            a0[r] = _mm256_fmadd_ps(x0, left == 8 ? ld_w(wt, w + (size_t)r * ws, k) : ld_w_tail(wt, w + (size_t)r * ws, k, left), a0[r]);
    }
    PERI_UNROLL for (int r = 0; r < R; r++) out[r * os] = hsum(_mm256_add_ps(a0[r], a1[r]));
}

#define XBLOCK 32
#define KC 256 // floats of K per chunk: TC weight rows of it fit in L1

PERI_INLINE void mm_body(int wt, float *y, int64_t ldy, const void *xv, size_t xstride, const void *wv,
                         size_t ws, int64_t K, int64_t m, int64_t n, const float *bias) {
    const float *x = xv;
    const char *w = wv;
    int64_t ldx = (int64_t)(xstride / sizeof(float));
#define B(j) (bias ? bias + (j) : NULL)
    if (n == 1) {
#define HV_PASS(r, w0, st, out, wn, os) hv_rows(wt, r, w0, st, x, K, out, wn, os)
        PERI_DECODE_PASSES(HV_ROWS, 2, m, w, ws, y, HV_PASS);
#undef HV_PASS
        if (bias)
            for (int64_t j = 0; j < m; j++) y[j] += bias[j];
        return;
    }
    // Prefill: for a block of x rows (kept in L2) and a tile of TC weight rows, walk K in chunks of KC so
    // the weight chunk stays in L1 while every x tile of the block passes over it; partial sums wait in sc.
    __m256 sc[XBLOCK * TC];
    for (int64_t i0 = 0; i0 < n; i0 += XBLOCK) {
        int64_t i1 = i0 + XBLOCK < n ? i0 + XBLOCK : n;
        for (int64_t j = 0; j < m;) {
            int full = j + TC <= m;
            // The next group of TC weight rows asked for ahead (and the first group before it): a few weight rows
            // against many x rows (PLM's attention scores, 16 heads against a chunk of the latent cache) are read
            // in K chunks, jumping between rows, which the hardware prefetchers follow badly from memory (scores of
            // 2048 keys x 576 F16, 1 thread, after the caches were flushed: 0.70-0.92 ms without, 0.64-0.72 with;
            // 0.45-0.63 ms from L3; a distance of 2 to 8 groups, or 2 MB pages for the cache, measured the same).
            for (int64_t r = j == 0 ? 0 : j + TC; r < j + 2 * TC; r++) peri_nn_prefetch_row(w, ws, r, m);
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                int64_t k1 = K - k0 > KC ? k0 + KC : K;
                int64_t i = i0;
                if (full) {
                    for (; i + TR <= i1; i += TR)
                        tile(wt, TR, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0);
                    // Leftover x rows in one tile, so each weight vector still serves all of them.
                    if (i1 - i == 3)
                        tile(wt, 3, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0);
                    else if (i1 - i == 2)
                        tile(wt, 2, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0);
                    else if (i1 - i == 1)
                        tile(wt, 1, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0);
                } else {
                    for (; i + TR <= i1; i += TR)
                        tile(wt, TR, 1, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0), k0 == 0);
                    for (; i < i1; i++)
                        tile(wt, 1, 1, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0), k0 == 0);
                }
            }
            j += full ? TC : 1;
        }
    }
#undef B
}

// Lanes below n set: the mask of AVX2's masked loads and stores.
PERI_INLINE __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#define GP_VEC __m256
#define GP_VL 8
#define GP_NV 2
#define GP_MR 6
// Below these many x rows the dot-product tiles (mm_body) beat the GEMM, whose packing converts and transposes 16-bit
// weights for few rows (Zen 3, 1 thread, GFLOPS of tiles / GEMM: F16 K 2048 n 16 58 / 43, n 32 61 / 58, n 48 59 /
// 75; K 576 n 16 86 / 66 (PLM's attention at depth: 16 heads against the latent cache); BF16 n 16 59 / 43, n 32
// 59 / 62; F32, packed by gp_xt without conversion, n 16 43 / 57).
#define GP_MIN_N_OF(wt) ((wt) == PERI_TYPE_F16 ? 40 : (wt) == PERI_TYPE_BF16 ? 24 : 8)
// x rows per block: 192 rows x 2 KB (0.75 MB, beyond a Zen 3 core's 512 KB L2) measured faster than 48 (which fits):
// fewer repackings of the weight panel (F16 2048 x 2048 x 512, 2 threads: 146 -> 162 GFLOPS; 96-288 all between).
// 258 holds a whole PLM micro-batch (256 rows), which 192 split into 192 + 64 with a full repacking for the 64: PLM-1.8B
// F16 pp512 38.4 -> 40.2 tokens/s (means of 7 alternated runs, 6 of 7 faster).
#define GP_IB (43 * GP_MR)
#define GP_ZERO() _mm256_setzero_ps()
#define GP_LOAD(p) _mm256_load_ps(p)
#define GP_SET1(v) _mm256_set1_ps(v)
#define GP_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define GP_STORE(p, v) _mm256_store_ps(p, v)
#define GP_ADD(a, b) _mm256_add_ps(a, b)
// Full vectors by plain loads and stores: vmaskmovps stores are slow on AMD (microcoded on Zen 3).
PERI_INLINE __m256 gp_loadu_n(const float *p, int n) {
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes_below(n));
}
PERI_INLINE void gp_storeu_n(float *p, int n, __m256 v) {
    if (n == 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, lanes_below(n), v);
}
#define GP_LOADU_N(p, n) gp_loadu_n(p, n)
#define GP_STOREU_N(p, n, v) gp_storeu_n(p, n, v)
// 8 x 8 floats transposed in place: pairs, quads, then the 128-bit halves.
PERI_INLINE void transpose8(__m256 r[8]) {
    __m256 t[8];
    PERI_UNROLL for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    PERI_UNROLL for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    PERI_UNROLL for (int i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    PERI_UNROLL for (int i = 0; i < 8; i++) r[i] = t[i];
}
#define GP_TRANSPOSE(t) transpose8(t)
#define GP_LOADW_N(wt, row, k, n) ((n) == 8 ? ld_w(wt, row, k) : ld_w_tail(wt, row, k, n))
#define GP_LOADQ8(p) q8_0_vals8(p)
// 8 bytes at p, each (byte >> sh) & mask, as float (the T layouts' packed codes and scales)
PERI_INLINE __m256 bits8(const uint8_t *p, int sh, int mask) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(sh)), _mm256_set1_epi32(mask)));
}
#define GP_BITS(p, sh, mask) bits8(p, sh, mask)
#include "kernels/gemm_outer.inc"

static void mm_q8_0(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                    int64_t n, const float *bias) {
    if (n >= GP_MIN_N_OF(PERI_TYPE_Q8_0))
        gp_gemm(PERI_TYPE_Q8_0, y, ldy, x, (int64_t)(xs / sizeof(float)), w, ws, K, m, n, bias);
    else mm_body(PERI_TYPE_Q8_0, y, ldy, x, xs, w, ws, K, m, n, bias);
}
static void mm_q4_0(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                    int64_t n, const float *bias) {
    mm_body(PERI_TYPE_Q4_0, y, ldy, x, xs, w, ws, K, m, n, bias);
}

// ---- row helpers ------------------------------------------------------------------------------------------

static float dot(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static float sum(const float *x, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + i + 24));
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += x[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int64_t n) {
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static void rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    float rs = 1.0f / sqrtf(dot(x, x, n) / (float)n + eps);
    __m256 rv = _mm256_set1_ps(rs);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), rv);
        if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++) y[i] = x[i] * rs * (w ? w[i] : 1.0f);
}

static void layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    float mean = sum(x, n) / (float)n;
    __m256 mv = _mm256_set1_ps(mean), s = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), mv);
        s = _mm256_fmadd_ps(d, d, s);
    }
    float var = hsum(s);
    for (; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (float)n;
    float rs = 1.0f / sqrtf(var + eps);
    __m256 rv = _mm256_set1_ps(rs);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), rv);
        if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++) y[i] = (x[i] - mean) * rs * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

// exp(x) for float32 within ~2 ulp (Cephes polynomial); inputs below -87.3 give 0, above 88.72 give inf.
PERI_INLINE __m256 exp_ps(__m256 x) {
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.72f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(126)), 23);
    __m256 res = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
    res = _mm256_blendv_ps(res, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ));
    res = _mm256_blendv_ps(res, _mm256_set1_ps(INFINITY),
                           _mm256_cmp_ps(x, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ));
    return _mm256_blendv_ps(res, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

static void softmax(float *x, int64_t n) {
    if (n <= 0) return;
    float mx = -INFINITY;
    int64_t i = 0;
    if (n >= 8) {
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        _Alignas(32) float t[8];
        _mm256_store_ps(t, m);
        for (int k = 0; k < 8; k++) mx = t[k] > mx ? t[k] : mx;
    }
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    __m256 mv = _mm256_set1_ps(mx), s = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        s = _mm256_add_ps(s, e);
        _mm256_storeu_ps(x + i, e);
    }
    float tot = hsum(s);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        tot += x[i];
    }
    float inv = 1.0f / tot;
    __m256 iv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), iv));
    for (; i < n; i++) x[i] *= inv;
}

static void silu_row(float *y, const float *x, int64_t n) {
    __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), v));
        _mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    for (; i < n; i++) y[i] = peri_silu(x[i]);
}

static void swiglu(float *y, const float *a, const float *b, int64_t n) {
    __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(a + i);
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), v));
        __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) y[i] = peri_silu(a[i]) * b[i];
}

static float sum8(const float *p, int64_t len, int64_t stride) {
    __m256 a[8];
    PERI_UNROLL for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
    for (int64_t o = 0; o + 8 <= len; o += 8)
        PERI_UNROLL for (int r = 0; r < 8; r++) a[r] = _mm256_add_ps(a[r], _mm256_loadu_ps(p + r * stride + o));
    PERI_UNROLL for (int r = 1; r < 8; r++) a[0] = _mm256_add_ps(a[0], a[r]);
    return hsum(a[0]);
}

#define QMM_VNNI 0
#include "kernels/arch/x86/qmm_x86.inc"
#include "kernels/arch/x86/qgemm_avx2.inc"
#include "kernels/arch/x86/qgemv_avx2.inc"

// Q8_0, Q4_0 and Q5_0 against a Q8_0 x row, Q4_1 and Q5_1 against a Q8_1 one: decode (n == 1) through
// qgemv_avx2.inc, n > 1 through the row kernels (Q8_0 and Q4_0 from GA_MIN_N x rows through qgemm_avx2.inc).
QV_MM(qv_q8_0, PERI_TYPE_Q8_0, ga_q8_0)
QV_MM(qv_q4_0, PERI_TYPE_Q4_0, ga_q4_0)
QV_MM(qv_q4_0_x16, PERI_TYPE_Q4_0_X16, ga_q4_0_x16)
QV_MM(qv_q4_1, PERI_TYPE_Q4_1, qmm_q4_1)
QV_MM(qv_q5_0, PERI_TYPE_Q5_0, qmm_q5_0)
QV_MM(qv_q5_1, PERI_TYPE_Q5_1, qmm_q5_1)
#undef QV_MM
#include "kernels/arch/x86/qkgemv_avx2.inc"
#include "kernels/arch/x86/tgemv_avx2.inc"

// Q2_K to Q6_K against a Q8_K x row: decode (n == 1) through qkgemv_avx2.inc, n > 1 through the row kernels
// (Q4_K and Q6_K from GA_MIN_N x rows through qgemm_avx2.inc).
KV_MM(kv_q2_K, PERI_TYPE_Q2_K, qmm_q2_K)
KV_MM(kv_q3_K, PERI_TYPE_Q3_K, qmm_q3_K)
KV_MM(kv_q4_K, PERI_TYPE_Q4_K, ga_q4_K)
KV_MM(kv_q5_K, PERI_TYPE_Q5_K, qmm_q5_K)
KV_MM(kv_q6_K, PERI_TYPE_Q6_K, ga_q6_K)
#undef KV_MM

// ---- weight rows as float32 (peri_get_row, peri_f16_to_f32_row, the generic matmul path) ------------------------
// The same operations as the references in tensor/quants*.c, in the same order, so the values are bit for bit the
// reference's. F16 and BF16 conversions are exact. In Q2_K's, Q4_K's and Q5_K's `(d * scale) * q - dmin * min` the
// products are exact (an fp16 d has 11 significant bits, scale and q together at most 11 more), so only the
// subtraction rounds: a compiler that fused it with the product into an FMA would still give the reference's bits.


static void deq_f16(const void *src, float *y, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

static void deq_bf16(const void *src, float *y, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i))), 16)));
    for (; i < n; i++) {
        uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&y[i], &u, 4);
    }
}

static void deq_q8_0(const void *src, float *y, int64_t n) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(x[i].d));
        PERI_UNROLL for (int h = 0; h < 4; h++)
            _mm256_storeu_ps(y + 8 * h, _mm256_mul_ps(q8_0_vals8(x[i].qs + 8 * h), d));
    }
}

// One Q4_0 block's 16 code bytes at qs and its scale d: 32 floats.
PERI_INLINE void deq_q4_0_block(const uint8_t *qs, float d0, float *y) {
    const __m256 d = _mm256_set1_ps(d0);
    PERI_UNROLL for (int h = 0; h < 2; h++) { // values 8h.. in the low nibbles, 16 + 8h.. in the high ones
        _mm256_storeu_ps(y + 8 * h, _mm256_mul_ps(q4_0_vals8(qs + 8 * h, 0), d));
        _mm256_storeu_ps(y + 16 + 8 * h, _mm256_mul_ps(q4_0_vals8(qs + 8 * h, 1), d));
    }
}

#include "kernels/arch/x86/deq_q4_0.inc"

// Q2_K: per 16 values (d * scale) * q - dmin * min; 2-bit codes as in qmm_x86.inc's q_row_k.
static void deq_q2_K(const void *src, float *y, int64_t n) {
    const block_q2_K *x = src;
    const __m256i m3 = _mm256_set1_epi32(3);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = _cvtsh_ss(x[i].d), mn = _cvtsh_ss(x[i].dmin);
        PERI_UNROLL for (int h = 0; h < 2; h++) {
            const uint8_t *q = x[i].qs + 32 * h;
            PERI_UNROLL for (int s = 0; s < 4; s++) {
                PERI_UNROLL for (int k = 0; k < 2; k++, y += 16) {
                    const uint8_t sc = x[i].scales[8 * h + 2 * s + k];
                    const __m256 dl = _mm256_set1_ps(d * (sc & 0xF)), ml = _mm256_set1_ps(mn * (sc >> 4));
                    PERI_UNROLL for (int u = 0; u < 2; u++) {
                        __m256i v = _mm256_and_si256(_mm256_srli_epi32(u8x8(q + 16 * k + 8 * u), 2 * s), m3);
                        _mm256_storeu_ps(y + 8 * u, _mm256_sub_ps(_mm256_mul_ps(dl, _mm256_cvtepi32_ps(v)), ml));
                    }
                }
            }
        }
    }
}

// Q3_K: (d * scale) * (q - 4 unless the hmask bit is set).
static void deq_q3_K(const void *src, float *y, int64_t n) {
    const block_q3_K *x = src;
    const __m256i m3 = _mm256_set1_epi32(3), c4 = _mm256_set1_epi32(4);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = _cvtsh_ss(x[i].d);
        _Alignas(16) uint8_t s8[16];
        q_k3_scales(x[i].scales, s8);
        PERI_UNROLL for (int h = 0; h < 2; h++) {
            const uint8_t *q = x[i].qs + 32 * h;
            PERI_UNROLL for (int s = 0; s < 4; s++) {
                const __m256i bit = _mm256_set1_epi32(1 << (4 * h + s));
                PERI_UNROLL for (int k = 0; k < 2; k++, y += 16) {
                    const __m256 dl = _mm256_set1_ps(d * (s8[8 * h + 2 * s + k] - 32));
                    PERI_UNROLL for (int u = 0; u < 2; u++) {
                        __m256i v = _mm256_and_si256(_mm256_srli_epi32(u8x8(q + 16 * k + 8 * u), 2 * s), m3);
                        __m256i clear = _mm256_cmpeq_epi32(_mm256_and_si256(u8x8(x[i].hmask + 16 * k + 8 * u), bit),
                                                           _mm256_setzero_si256());
                        v = _mm256_sub_epi32(v, _mm256_and_si256(clear, c4));
                        _mm256_storeu_ps(y + 8 * u, _mm256_mul_ps(dl, _mm256_cvtepi32_ps(v)));
                    }
                }
            }
        }
    }
}

// Q4_K and Q5_K: per 32 values (d * scale) * q - dmin * min; Q5_K's qh bit 2p (2p+1) adds 16 to the low (high)
// nibbles of qs[32p..].
// add = 0: y = the super-block's 256 values; add = 1: y += a * values (peri_matmul_nn's y = x C, row by row).
PERI_INLINE void deq_k45(int q5, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, float d, float mn,
                         float *y, int add, float a) {
    const __m256 av = _mm256_set1_ps(a);
#define K45_PUT(p, v) _mm256_storeu_ps(p, add ? _mm256_fmadd_ps(av, v, _mm256_loadu_ps(p)) : (v))
    const __m256i m4 = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
    _Alignas(16) uint8_t sm[16];
    q_k4_scales(scales, sm); // scales of sub-blocks 0..7, then their mins
    PERI_UNROLL for (int p = 0; p < 4; p++) {
        const __m256 d1 = _mm256_set1_ps(d * sm[2 * p]), m1 = _mm256_set1_ps(mn * sm[8 + 2 * p]);
        const __m256 d2 = _mm256_set1_ps(d * sm[2 * p + 1]), m2 = _mm256_set1_ps(mn * sm[8 + 2 * p + 1]);
        PERI_UNROLL for (int h = 0; h < 4; h++) {
            __m256i v = u8x8(qs + 32 * p + 8 * h);
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_srli_epi32(v, 4);
            if (q5) {
                __m256i hb = u8x8(qh + 8 * h);
                lo = _mm256_or_si256(lo, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 2 * p), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 2 * p + 1), one), 4));
            }
            K45_PUT(y + 64 * p + 8 * h, _mm256_sub_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(lo)), m1));
            K45_PUT(y + 64 * p + 32 + 8 * h, _mm256_sub_ps(_mm256_mul_ps(d2, _mm256_cvtepi32_ps(hi)), m2));
        }
    }
#undef K45_PUT
}

static void deq_q4_K(const void *src, float *y, int64_t n) {
    const block_q4_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        deq_k45(0, x[i].scales, x[i].qs, NULL, _cvtsh_ss(x[i].d), _cvtsh_ss(x[i].dmin), y, 0, 0.0f);
}

static void deq_q5_K(const void *src, float *y, int64_t n) {
    const block_q5_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        deq_k45(1, x[i].scales, x[i].qs, x[i].qh, _cvtsh_ss(x[i].d), _cvtsh_ss(x[i].dmin), y, 0, 0.0f);
}

// y = x C for C rows of Q8_0, Q4_0, Q4_0_X16, Q4_K or Q5_K (PLM's absorbed query on a quantized W_kb: 128 rows of
// 512 per head, one x row): C's rows in order, each block's values multiplied by x_k and added into y (in L1)
// straight from the codes, with no dequantized copy. The generic path (each row dequantized into a buffer, then
// axpy) took 4.9% of a Q4_0 PLM-1.8B decode on Zen 3 (perf samples), this 3.7-3.9%; Q4_K_M 6.4% -> 4.8%. Holding a
// strip of y in registers while the rows pass (fewer loads and stores of y) measured the same, as the rows' bytes
// come from memory.

// yb[0..31] += a * block b of a Q8_0 / Q4_0 / Q4_0_X16 row, as (a d) * q (Q8_0) or (a d) * (q - 8).
PERI_INLINE void qnn_add_block(int wt, const char *row, int64_t b, float a, float *yb) {
    __m256 v[4];
    if (wt == PERI_TYPE_Q8_0) {
        const block_q8_0 *bl = (const block_q8_0 *)row + b;
        PERI_UNROLL for (int t = 0; t < 4; t++) v[t] = q8_0_vals8(bl->qs + 8 * t);
        a *= _cvtsh_ss(bl->d);
    } else {
        const uint8_t *q;
        peri_half d;
        if (wt == PERI_TYPE_Q4_0) {
            const block_q4_0 *bl = (const block_q4_0 *)row + b;
            q = bl->qs, d = bl->d;
        } else {
            const block_q4_0_x16 *g = (const block_q4_0_x16 *)row + (b >> 4);
            q = g->qs + 16 * (b & 15), d = g->d[b & 15];
        }
        PERI_UNROLL for (int t = 0; t < 4; t++) v[t] = q4_0_vals8(q + 8 * (t & 1), t >> 1);
        a *= _cvtsh_ss(d);
    }
    const __m256 f = _mm256_set1_ps(a);
    PERI_UNROLL for (int t = 0; t < 4; t++) _mm256_storeu_ps(yb + 8 * t, _mm256_fmadd_ps(f, v[t], _mm256_loadu_ps(yb + 8 * t)));
}

PERI_INLINE void qnn_rows(int wt, float *y, int64_t ldy, const float *x, int64_t ldx, const char *c, size_t cs,
                          int64_t K, int64_t m, int64_t n) {
    const int kq = wt == PERI_TYPE_Q4_K || wt == PERI_TYPE_Q5_K;
    const int64_t bs = kq ? QK_K : 32;   // values per block (K-quants: super-blocks, as deq_k45 makes them)
    for (int64_t i = 0; i < n; i++) {
        float *yr = y + i * ldy;
        memset(yr, 0, sizeof(float) * (size_t)m);
        for (int64_t s = 0; s < K; s++) {
            const int64_t k = peri_nn_row(s, K);
            const char *row = c + (size_t)k * cs;
            const float a = x[i * ldx + k];
            for (int64_t b = 0; b < m / bs; b++) {
                if (wt == PERI_TYPE_Q5_K) {
                    const block_q5_K *bl = (const block_q5_K *)row + b;
                    deq_k45(1, bl->scales, bl->qs, bl->qh, _cvtsh_ss(bl->d), _cvtsh_ss(bl->dmin), yr + bs * b, 1, a);
                } else if (wt == PERI_TYPE_Q4_K) {
                    const block_q4_K *bl = (const block_q4_K *)row + b;
                    deq_k45(0, bl->scales, bl->qs, NULL, _cvtsh_ss(bl->d), _cvtsh_ss(bl->dmin), yr + bs * b, 1, a);
                } else {
                    qnn_add_block(wt, row, b, a, yr + bs * b);
                }
            }
        }
    }
}
#define QNN(name, wt)                                                                                               \
    static void name(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs, int64_t K,      \
                     int64_t m, int64_t n) {                                                                        \
        qnn_rows(wt, y, ldy, x, ldx, (const char *)c, cs, K, m, n);                                                 \
    }
QNN(mm_q8_0_nn, PERI_TYPE_Q8_0)
QNN(mm_q4_0_nn, PERI_TYPE_Q4_0)
QNN(mm_q4_0_x16_nn, PERI_TYPE_Q4_0_X16)
QNN(mm_q4_K_nn, PERI_TYPE_Q4_K)
QNN(mm_q5_K_nn, PERI_TYPE_Q5_K)
#undef QNN

static void deq_q6_K(const void *src, float *y, int64_t n) {
    const block_q6_K *x = src;
    const __m256i m4 = _mm256_set1_epi32(15), m3 = _mm256_set1_epi32(3), c32 = _mm256_set1_epi32(32);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = _cvtsh_ss(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            PERI_UNROLL for (int h = 0; h < 4; h++) { // values l = 8h .. 8h+7 of each quarter, scale sc[h/2 + ...]
                __m256i a = u8x8(ql + 8 * h), b = u8x8(ql + 32 + 8 * h), c = u8x8(qh + 8 * h);
                __m256i q[4] = {
                    _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi32(_mm256_and_si256(c, m3), 4)),
                    _mm256_or_si256(_mm256_and_si256(b, m4),
                                    _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(c, 2), m3), 4)),
                    _mm256_or_si256(_mm256_srli_epi32(a, 4),
                                    _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(c, 4), m3), 4)),
                    _mm256_or_si256(_mm256_srli_epi32(b, 4), _mm256_slli_epi32(_mm256_srli_epi32(c, 6), 4)),
                };
                PERI_UNROLL for (int j = 0; j < 4; j++) {
                    const __m256 ds = _mm256_set1_ps(d * sc[h / 2 + 2 * j]); // (d * scale) * q, in that order
                    _mm256_storeu_ps(y + 32 * j + 8 * h,
                                     _mm256_mul_ps(ds, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[j], c32))));
                }
            }
        }
    }
}

// ---- activation quantizers -----------------------------------------------------------------------------------
// Byte for byte the reference ones (peri_quantize_row_q8_0_ref / _q8_K_ref), as the AVX-512 level's: the same float
// operations per value; only the max is taken in another order, which is exact.

// roundf (half away from zero): trunc plus a step where the remainder (exact) reaches one half.
PERI_INLINE __m256 q8_round_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
    return _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one));
}

PERI_INLINE float q8_hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// 32 int32 values (4 vectors, in order) as 32 int8 with signed saturation.
PERI_INLINE void q8_store32(int8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d)); // lanes interleaved
    _mm256_storeu_si256((__m256i *)dst, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

static void quantize_q8_0(const float *x, void *dst, int64_t n) {
    block_q8_0 *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        __m256 v[4];
        PERI_UNROLL for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                       _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        const float d = q8_hmax(m) / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        PERI_UNROLL for (int k = 0; k < 4; k++) q[k] = _mm256_cvttps_epi32(q8_round_away(_mm256_mul_ps(v[k], vid)));
        q8_store32(y[i].qs, q[0], q[1], q[2], q[3]);
    }
}

static void quantize_q8_K(const float *x, void *dst, int64_t n) {
    block_q8_K *y = dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
        const float amax = q8_hmax(m);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float max = 0; // the first value of largest magnitude, with its sign (as the reference's scan)
        for (int j = 0; j < QK_K; j += 8) {
            const __m256 e = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), _mm256_set1_ps(amax), _CMP_EQ_OQ);
            const int bits = _mm256_movemask_ps(e);
            if (bits) {
                max = x[j + __builtin_ctz((unsigned)bits)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            PERI_UNROLL for (int k = 0; k < 4; k++) // nearest, ties to even (the default rounding)
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k))),
                                        _mm256_set1_epi32(127));
            q8_store32(y[i].qs + j, q[0], q[1], q[2], q[3]);
            PERI_UNROLL for (int h = 0; h < 2; h++) {
                __m256i s = _mm256_add_epi32(q[2 * h], q[2 * h + 1]);
                __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
                y[i].bsums[j / 16 + h] = (int16_t)_mm_cvtsi128_si32(t);
            }
        }
        y[i].d = 1 / iscale;
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const struct peri_kernel_set peri_kset_avx2 = {
    .name = "avx2",
    .level = PERI_KERNELS_AVX2,
    .row_align = 8,
    .mm = {
        [PERI_TYPE_F32] = {mm_f32, PERI_TYPE_F32},
        [PERI_TYPE_F16] = {mm_f16, PERI_TYPE_F32},
        [PERI_TYPE_BF16] = {mm_bf16, PERI_TYPE_F32},
        // Q8_0 from 64 x rows through the float GEMM (mm_exact's mm_q8_0): without VNNI the sign trick's integer
        // products are no cheaper than FMAs, and the GEMM's tiles reuse more (PLM-1.8B pp512 32 -> 38 tok/s on Zen 3)
        [PERI_TYPE_Q8_0] = {qv_q8_0, PERI_TYPE_Q8_0, .f32_from_n = 64}, [PERI_TYPE_Q4_0] = {qv_q4_0, PERI_TYPE_Q8_0},
        [PERI_TYPE_Q4_0_X16] = {qv_q4_0_x16, PERI_TYPE_Q8_0}, // Q4_0 repacked at load (tensor/repack.h)
        // the 256-bit row kernels, with Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q2_K-Q6_K at n == 1 through qgemv_avx2.inc and
        // qkgemv_avx2.inc
        [PERI_TYPE_Q4_1] = {qv_q4_1, PERI_TYPE_Q8_1}, [PERI_TYPE_Q5_0] = {qv_q5_0, PERI_TYPE_Q8_0},
        [PERI_TYPE_Q5_1] = {qv_q5_1, PERI_TYPE_Q8_1}, [PERI_TYPE_Q4_K] = {kv_q4_K, PERI_TYPE_Q8_K},
        [PERI_TYPE_Q5_K] = {kv_q5_K, PERI_TYPE_Q8_K}, [PERI_TYPE_Q6_K] = {kv_q6_K, PERI_TYPE_Q8_K},
        [PERI_TYPE_Q2_K] = {kv_q2_K, PERI_TYPE_Q8_K}, [PERI_TYPE_Q3_K] = {kv_q3_K, PERI_TYPE_Q8_K},
    },
    // Float activations, for exact mode (peri_kernels_set_exact): weights expanded to float in registers.
    .mm_exact = {
        [PERI_TYPE_Q8_0] = {mm_q8_0, PERI_TYPE_F32},
        [PERI_TYPE_Q4_0] = {mm_q4_0, PERI_TYPE_F32},
    },
    .dot = dot,
    .axpy = axpy,
    .layernorm = layernorm,
    .rmsnorm = rmsnorm,
    .softmax = softmax,
    .silu_row = silu_row,
    .swiglu = swiglu,
    .sum8 = sum8,
    .attn_scores = gp_attn_scores,
    .to_float = {[PERI_TYPE_F16] = deq_f16, [PERI_TYPE_BF16] = deq_bf16, [PERI_TYPE_Q8_0] = deq_q8_0,
                 [PERI_TYPE_Q4_0] = deq_q4_0, [PERI_TYPE_Q4_0_X16] = deq_q4_0_x16, [PERI_TYPE_Q2_K] = deq_q2_K, [PERI_TYPE_Q3_K] = deq_q3_K,
                 [PERI_TYPE_Q4_K] = deq_q4_K, [PERI_TYPE_Q5_K] = deq_q5_K, [PERI_TYPE_Q6_K] = deq_q6_K},
    .mm_nn = {[PERI_TYPE_F32] = mm_f32_nn, [PERI_TYPE_F16] = mm_f16_nn, [PERI_TYPE_BF16] = mm_bf16_nn,
              [PERI_TYPE_Q8_0] = mm_q8_0_nn, [PERI_TYPE_Q4_0] = mm_q4_0_nn, [PERI_TYPE_Q4_0_X16] = mm_q4_0_x16_nn,
              [PERI_TYPE_Q4_K] = mm_q4_K_nn, [PERI_TYPE_Q5_K] = mm_q5_K_nn},
    .t_nn = {mm_q8t_nn, mm_q4kt_nn, mm_q6kt_nn},
    .t_nn_q8k = {NULL, peri_avx2_q4kt_q8k, peri_avx2_q6kt_q8k},
    .q8t_mm = mm_q8t_gemm,
    .quantize_x = {[PERI_TYPE_Q8_0] = quantize_q8_0, [PERI_TYPE_Q8_K] = quantize_q8_K},
};

#else
typedef int peri_avx2_unused; // ISO C wants a non-empty translation unit
#endif
