// AVX-512 (F/BW/VL/DQ) kernels; compiled for x86-64 only and chosen at run time by kernels/dispatch.c.
#if defined(__x86_64__)
#include "kernels/kernels_impl.h"
#include "tensor/quants.h"
#include "tensor/repack.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif

// Register tiles: prefill keeps R x C accumulators (4 x rows by 6 weight rows = 24 zmm, plus 4 x vectors
// and one weight vector); decode streams 8 weight rows at once with one x vector.
#define TR 4
#define TC 6
#define GEMV_ROWS 8

// 16 weights of row w starting at k, as float32 (masked: missing lanes read as 0).
PERI_INLINE __m512 ld_w(int wt, const char *w, int64_t k) {
    if (wt == PERI_TYPE_F32) return _mm512_loadu_ps((const float *)w + k);
    // Block types: K is a multiple of 32, so k is 16-aligned and 16 values never straddle a block. The
    // products q * d round exactly as the reference dequantization does.
    if (wt == PERI_TYPE_Q8_0) {
        const block_q8_0 *b = (const block_q8_0 *)w + (k >> 5);
        __m128i q = _mm_loadu_si128((const __m128i *)(b->qs + (k & 16)));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(_cvtsh_ss(b->d)));
    }
    if (wt == PERI_TYPE_Q4_0) { // values 0..15 in the low nibbles, 16..31 in the high ones
        const block_q4_0 *b = (const block_q4_0 *)w + (k >> 5);
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
        v = (k & 16) ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(15));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(8))),
                             _mm512_set1_ps(_cvtsh_ss(b->d)));
    }
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (wt == PERI_TYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

PERI_INLINE __m512 ld_w_mask(int wt, const char *w, int64_t k, __mmask16 m) {
    if (wt == PERI_TYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + k);
    if (wt == PERI_TYPE_Q8_0 || wt == PERI_TYPE_Q4_0) return ld_w(wt, w, k); // never partial
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k);
    if (wt == PERI_TYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// y[r*ldy + c] = sum_k x[r][k] * w[c][k] + bias[c] for r < R, c < C.
// Over k in [k0, k1): accumulators start at zero (first) or from sc[r*C + c], and end reduced into y
// (when k1 == K) or back in sc, so that long rows can be cut into chunks whose weights stay in L1.
// (tile_ys: output c at y[c * ycs], for decode's rows taken from several streams.)
PERI_INLINE void tile_ys(int wt, int R, int C, float *y, int64_t ldy, const float *x, int64_t ldx, const char *w,
                         size_t ws, int64_t k0, int64_t k1, int64_t K, const float *bias, __m512 *sc, int first,
                         const char *pf, int64_t ycs) {
    __m512 acc[TR][GEMV_ROWS];
    PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
        acc[r][c] = first ? _mm512_setzero_ps() : _mm512_load_ps((const float *)&sc[r * C + c]);
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
        // Decode of float weights: the next group of rows, one cache line per row whenever k reaches one (the
        // hardware prefetchers alone leave bandwidth unused).
        if (pf && ((size_t)k * (wt == PERI_TYPE_F32 ? 4 : 2)) % 64 == 0)
            PERI_UNROLL for (int c = 0; c < C; c++)
                _mm_prefetch(pf + (size_t)c * ws + (size_t)k * (wt == PERI_TYPE_F32 ? 4 : 2), _MM_HINT_T1);
        __m512 xv[TR];
        PERI_UNROLL for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_ps(x + r * ldx + k);
        PERI_UNROLL for (int c = 0; c < C; c++) {
            __m512 wv = ld_w(wt, w + (size_t)c * ws, k);
            PERI_UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (k < k1) {
        __mmask16 m = (__mmask16)((1u << (k1 - k)) - 1);
        __m512 xv[TR];
        PERI_UNROLL for (int r = 0; r < R; r++) xv[r] = _mm512_maskz_loadu_ps(m, x + r * ldx + k);
        PERI_UNROLL for (int c = 0; c < C; c++) {
            __m512 wv = ld_w_mask(wt, w + (size_t)c * ws, k, m);
            PERI_UNROLL for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (k1 < K) {
        PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
            _mm512_store_ps((float *)&sc[r * C + c], acc[r][c]);
        return;
    }
    PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
        y[r * ldy + c * ycs] = _mm512_reduce_add_ps(acc[r][c]) + (bias ? bias[c * ycs] : 0.0f);
}

PERI_INLINE void tile(int wt, int R, int C, float *y, int64_t ldy, const float *x, int64_t ldx, const char *w,
                      size_t ws, int64_t k0, int64_t k1, int64_t K, const float *bias, __m512 *sc, int first,
                      const char *pf) {
    tile_ys(wt, R, C, y, ldy, x, ldx, w, ws, k0, k1, K, bias, sc, first, pf, 1);
}

// x rows per block of the prefill loop: 32 rows of up to ~16k floats stay in L2 while this thread's weight
// tiles pass over them.
#define XBLOCK 32
#define KC 256 // floats of K per chunk: TC weight rows of it fit in L1

PERI_INLINE void mm_body(int wt, float *y, int64_t ldy, const void *xv, size_t xstride, const void *wv,
                         size_t ws, int64_t K, int64_t m, int64_t n, const float *bias) {
    const float *x = xv;
    const char *w = wv;
    int64_t ldx = (int64_t)(xstride / sizeof(float));
#define B(j) (bias ? bias + (j) : NULL)
    const int pf_ok = wt == PERI_TYPE_F32 || wt == PERI_TYPE_F16 || wt == PERI_TYPE_BF16;
    if (n == 1) {
        // (output and bias entry of row i at i * os; the next pass's rows prefetched, float weights only)
#define MB_PASS(r, w0, st, out, wn, os)                                                                      \
    tile_ys(wt, 1, r, out, ldy, x, ldx, w0, st, 0, K, K, bias ? bias + ((out) - y) : NULL, NULL, 1, pf_ok ? (wn) : NULL, os)
        PERI_DECODE_PASSES(GEMV_ROWS, 1, m, w, ws, y, MB_PASS);
#undef MB_PASS
        return;
    }
    // Prefill: for a block of x rows (kept in L2) and a tile of TC weight rows, walk K in chunks of KC so
    // the weight chunk stays in L1 while every x tile of the block passes over it; partial sums wait in sc.
    __m512 sc[XBLOCK * TC];
    for (int64_t i0 = 0; i0 < n; i0 += XBLOCK) {
        int64_t i1 = i0 + XBLOCK < n ? i0 + XBLOCK : n;
        for (int64_t j = 0; j < m;) {
            int full = j + TC <= m;
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                int64_t k1 = K - k0 > KC ? k0 + KC : K;
                int64_t i = i0;
                if (full) {
                    for (; i + TR <= i1; i += TR)
                        tile(wt, TR, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0, NULL);
                    // Leftover x rows in one tile, so each weight vector still serves all of them.
                    if (i1 - i == 3)
                        tile(wt, 3, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0, NULL);
                    else if (i1 - i == 2)
                        tile(wt, 2, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0, NULL);
                    else if (i1 - i == 1)
                        tile(wt, 1, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0) * TC, k0 == 0, NULL);
                } else {
                    for (; i + TR <= i1; i += TR)
                        tile(wt, TR, 1, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0), k0 == 0, NULL);
                    for (; i < i1; i++)
                        tile(wt, 1, 1, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, k0, k1, K, B(j),
                             sc + (i - i0), k0 == 0, NULL);
                }
            }
            j += full ? TC : 1;
        }
    }
#undef B
}

#define GP_VEC __m512
#define GP_VL 16
#define GP_NV 2
#define GP_MR 12
#define GP_ZERO() _mm512_setzero_ps()
#define GP_LOAD(p) _mm512_load_ps(p)
#define GP_SET1(v) _mm512_set1_ps(v)
#define GP_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define GP_STORE(p, v) _mm512_store_ps(p, v)
#define GP_ADD(a, b) _mm512_add_ps(a, b)
#define GP_LOADU_N(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), p)
#define GP_STOREU_N(p, n, v) _mm512_mask_storeu_ps(p, (__mmask16)((1u << (n)) - 1), v)
#include "kernels/arch/x86/transpose16.inc"
#define GP_TRANSPOSE(t) transpose16(t)
// Below 12 x rows (the 8 heads a thread scores in PLM's short-context decode attention, short prompts) the
// dot-product tiles of mm_body beat the outer product, whose packing (a 16 x 16 transpose per 256 weights) is then
// shared by too few rows: 0.025-0.030 against 0.031-0.037 ms at 8 rows, even at 12, behind at 16
// (test_kernels --bench f16 576 256 N 1 2000 0.5).
#define GP_MIN_N 12
#define GP_NN_VECS 16   // gp_nn_rows: 256 columns of sums in 16 of the 32 registers
#define GP_IB (24 * GP_MR) // 288 rows x 2 KB: about 0.6 MB of the 2 MB L2 of the AVX-512 cores we know
#define GP_LOADW_N(wt, row, k, n) ((n) == 16 ? ld_w(wt, row, k) : ld_w_mask(wt, row, k, (__mmask16)((1u << (n)) - 1)))
// 16 signed bytes at p as float (peri_matmul_t's Q8_0_T codes)
#define GP_LOADQ8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
// 16 bytes at p, each (byte >> sh) & mask, as float (the T layouts' packed codes and scales)
PERI_INLINE __m512 bits16(const uint8_t *p, int sh, int mask) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(sh)), _mm512_set1_epi32(mask)));
}
#define GP_BITS(p, sh, mask) bits16(p, sh, mask)
#include "kernels/gemm_outer.inc"

static void mm_q8_0(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                    int64_t n, const float *bias) {
    mm_body(PERI_TYPE_Q8_0, y, ldy, x, xs, w, ws, K, m, n, bias);
}
static void mm_q4_0(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                    int64_t n, const float *bias) {
    mm_body(PERI_TYPE_Q4_0, y, ldy, x, xs, w, ws, K, m, n, bias);
}

// ---- row helpers ------------------------------------------------------------------------------------------

PERI_INLINE __mmask16 tail_mask(int64_t left) { return (__mmask16)((1u << left) - 1); }

static float dot(const float *a, const float *b, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static float sum(const float *x, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(x + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(x + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(x + i + 48));
    }
    for (; i < n; i += 16) s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(i + 16 <= n ? 0xffff : tail_mask(n - i), x + i));
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static void axpy(float *y, float a, const float *x, int64_t n) {
    __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static void rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    float ss = dot(x, x, n);
    __m512 rs = _mm512_set1_ps(1.0f / sqrtf(ss / (float)n + eps));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), rs);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

static void layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    float mean = sum(x, n) / (float)n;
    __m512 mv = _mm512_set1_ps(mean), s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), mv);
        s = _mm512_fmadd_ps(d, d, s);
    }
    float var = _mm512_reduce_add_ps(s) / (float)n;
    __m512 rs = _mm512_set1_ps(1.0f / sqrtf(var + eps));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv), rs);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
        if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

// exp(x) for float32 within ~2 ulp (Cephes polynomial); inputs below -87.3 give 0, above 88.72 give inf.
PERI_INLINE __m512 exp_ps(__m512 x) {
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.72f));
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    // 2^fx as 2^(fx-1) * 2 so that fx = 128 (x near 88.7) does not overflow the exponent field.
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(126)), 23);
    __m512 res = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_castsi512_ps(e)), _mm512_set1_ps(2.0f));
    res = _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ), _mm512_setzero_ps());
    res = _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.72283935546875f), _CMP_GT_OQ),
                             _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

static void softmax(float *x, int64_t n) {
    if (n <= 0) return;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, x + i));
    }
    __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv));
        e = _mm512_maskz_mov_ps(m, e);
        s = _mm512_add_ps(s, e);
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(s));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

static void silu_row(float *y, const float *x, int64_t n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_mask_storeu_ps(y + i, m, _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
}

static void swiglu(float *y, const float *a, const float *b, int64_t n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = i + 16 <= n ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, a + i);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), v));
        __m512 s = _mm512_div_ps(v, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, b + i)));
    }
}

static float sum8(const float *p, int64_t len, int64_t stride) {
    __m512 a[8];
    PERI_UNROLL for (int r = 0; r < 8; r++) a[r] = _mm512_setzero_ps();
    for (int64_t o = 0; o + 16 <= len; o += 16)
        PERI_UNROLL for (int r = 0; r < 8; r++) a[r] = _mm512_add_ps(a[r], _mm512_loadu_ps(p + r * stride + o));
    PERI_UNROLL for (int r = 1; r < 8; r++) a[0] = _mm512_add_ps(a[0], a[r]);
    return _mm512_reduce_add_ps(a[0]);
}

// Activation quantizers, byte for byte the reference ones (peri_quantize_row_q8_0_ref / _q8_K_ref): the same
// float operations in the same order per value; only max and sums are taken in another order, and those are exact.
// roundf (half away from zero) is trunc plus a step where the remainder reaches one half; the remainder is exact.
PERI_INLINE __m512 round_away(__m512 v) {
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));
    return _mm512_mask_add_ps(t, _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ), t, one);
}

// Float rows to F16 (the activations of the avx512fp16 level's GEMM), byte for byte peri_f32_to_f16: vcvtps2ph
// rounds to nearest even as it does (subnormals, overflow to inf included); a NaN keeps its payload there, where
// the reference makes every NaN sign | 0x7e00.
static void f16_row(const float *x, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i < 16 ? (__mmask16)((1u << (n - i)) - 1) : (__mmask16)0xffff;
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        h = _mm256_mask_blend_epi16(nan, h, _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16((short)0x8000)),
                                                            _mm256_set1_epi16(0x7e00)));
        _mm256_mask_storeu_epi16(d + i, m, h);
    }
}

// One block's codes from its 1 / d.
PERI_INLINE void q8_0_codes(const float *x, block_q8_0 *y, float id) {
    const __m512 vid = _mm512_set1_ps(id);
    __m512i qa = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(_mm512_loadu_ps(x), vid)));
    __m512i qb = _mm512_cvttps_epi32(round_away(_mm512_mul_ps(_mm512_loadu_ps(x + 16), vid)));
    _mm_storeu_si128((__m128i *)y->qs, _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128((__m128i *)(y->qs + 16), _mm512_cvtsepi32_epi8(qb));
}

// 16 blocks at a time: their largest magnitudes reduced together by a transposing tree (45 shuffles and maxes where
// 16 horizontal reductions take 128) and their scales divided as one vector (two vdivps for 32 scalar divisions); the
// last blocks one at a time. The same bytes as the reference: max is exact, and d = amax / 127 and 1 / d are the same
// IEEE divisions in any width (prefill quantizes every activation row before its matmul: 5% of a Q4_0 pp512 on the
// AMX machine, before this).
static void quantize_q8_0(const float *x, void *dst, int64_t n) {
    block_q8_0 *y = dst;
    const int64_t nb = n / QK8_0;
    int64_t i = 0;
    for (; i + 16 <= nb; i += 16) {
        const float *xb = x + i * QK8_0;
        __m512 m[16], w[8], u[4];
        PERI_UNROLL for (int b = 0; b < 16; b++)
            m[b] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + 32 * b)),
                                 _mm512_abs_ps(_mm512_loadu_ps(xb + 32 * b + 16)));
        // in each 128-bit lane: w[k] = [A02, B02, A13, B13] of A = m[2k], B = m[2k + 1] (A02: the max of A's elements 0
        // and 2 there); u[k] = the lane's maxima of m[4k .. 4k + 3]
        PERI_UNROLL for (int k = 0; k < 8; k++)
            w[k] = _mm512_max_ps(_mm512_unpacklo_ps(m[2 * k], m[2 * k + 1]), _mm512_unpackhi_ps(m[2 * k], m[2 * k + 1]));
        PERI_UNROLL for (int k = 0; k < 4; k++)
            u[k] = _mm512_max_ps(_mm512_shuffle_ps(w[2 * k], w[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(w[2 * k], w[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        // across the four lanes: t0 = [u0 lanes 0|1, u0 2|3, u1 0|1, u1 2|3], t1 the same of u2, u3; then lane j of
        // amax holds u[j] whole: element b is block b's largest magnitude
        const __m512 t0 = _mm512_max_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
        const __m512 t1 = _mm512_max_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
        const __m512 amax = _mm512_max_ps(_mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                                          _mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
        const __m512 d = _mm512_div_ps(amax, _mm512_set1_ps((float)((1 << 7) - 1)));
        const __mmask16 nz = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        _Alignas(64) float id[16];
        _Alignas(32) uint16_t dh[16];
        _mm512_store_ps(id, _mm512_maskz_div_ps(nz, _mm512_set1_ps(1.0f), d));
        _mm256_store_si256((__m256i *)dh, _mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        for (int b = 0; b < 16; b++) {
            y[i + b].d = dh[b];
            q8_0_codes(xb + 32 * b, &y[i + b], id[b]);
        }
    }
    for (; i < nb; i++) {
        const float *xb = x + i * QK8_0;
        const float amax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), _mm512_abs_ps(_mm512_loadu_ps(xb + 16))));
        const float d = amax / ((1 << 7) - 1);
        y[i].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q8_0_codes(xb, &y[i], d ? 1.0f / d : 0.0f);
    }
}

static void quantize_q8_K(const float *x, void *dst, int64_t n) {
    block_q8_K *y = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < QK_K; j += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
        const float amax = _mm512_reduce_max_ps(m);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float max = 0; // the first value of largest magnitude, with its sign (as the reference's scan)
        for (int j = 0; j < QK_K; j += 16) {
            __mmask16 e = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + j)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (e) {
                max = x[j + __builtin_ctz(e)];
                break;
            }
        }
        const float iscale = -127.f / max;
        __m512 vs = _mm512_set1_ps(iscale);
        for (int j = 0; j < QK_K; j += 16) {
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(x + j))); // nearest, ties to even
            q = _mm512_min_epi32(q, _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(y[i].qs + j), _mm512_cvtsepi32_epi8(q));
            y[i].bsums[j / 16] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y[i].d = 1 / iscale;
    }
}

#define QMM_VNNI 0
#include "kernels/arch/x86/qmm_x86.inc"
#include "kernels/arch/x86/qgemm_vnni.inc"
#define QV_MASK_BITS // Q5 high bits by masked byte adds (AVX-512 BW/VL)
#define QV_GATHER_SCALES // measured on Intel's AVX-512 cores with the gather (AVX2 machines: scalar loads)
#define QV_SW_PREFETCH   // and with software prefetch (AVX2 machines: the hardware prefetchers alone)
#include "kernels/arch/x86/qgemv_avx2.inc"

// Q8_0, Q4_0 and Q5_0 against a Q8_0 x row, Q4_1 and Q5_1 against a Q8_1 one: decode (n == 1) through the 256-bit
// qgemv_avx2.inc, n > 1 through the row kernels (Q8_0 and Q4_0 from GB_MIN_N x rows through qgemm_vnni.inc).
QV_MM(qv_q8_0, PERI_TYPE_Q8_0, gb_q8_0)
QV_MM(qv_q4_0, PERI_TYPE_Q4_0, gb_q4_0)
QV_MM(qv_q4_1, PERI_TYPE_Q4_1, qmm_q4_1)
QV_MM(qv_q5_0, PERI_TYPE_Q5_0, qmm_q5_0)
QV_MM(qv_q5_1, PERI_TYPE_Q5_1, qmm_q5_1)
#undef QV_MM
#include "kernels/arch/x86/qkgemv_avx2.inc"

// Q2_K to Q6_K against a Q8_K x row: decode (n == 1) through the 256-bit qkgemv_avx2.inc, n > 1 as before.
KV_MM(kv_q2_K, PERI_TYPE_Q2_K, qmm_q2_K)
KV_MM(kv_q3_K, PERI_TYPE_Q3_K, qmm_q3_K)
KV_MM(kv_q4_K, PERI_TYPE_Q4_K, gb_q4_K)
KV_MM(kv_q5_K, PERI_TYPE_Q5_K, qmm_q5_K)
KV_MM(kv_q6_K, PERI_TYPE_Q6_K, gb_q6_K)
#undef KV_MM

// ---- weight rows as float32 (peri_get_row) ------------------------------------------------------------------
// The same operations as the references in tensor/quants*.c, one rounding each: products (and Q4_K's
// difference) use the explicit-rounding forms so the compiler cannot fuse them into an FMA.
#define RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static void deq_q8_0(const void *src, float *y, int64_t n) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(x[i].d));
        PERI_UNROLL for (int h = 0; h < 2; h++) {
            __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(x[i].qs + 16 * h)));
            _mm512_storeu_ps(y + 16 * h, _mm512_mul_round_ps(_mm512_cvtepi32_ps(q), d, RN));
        }
    }
}

// One Q4_0 block's 16 code bytes and scale d as 32 floats.
PERI_INLINE void deq_q4_0_block(const uint8_t *qs, float d, float *y) {
    const __m512i m4 = _mm512_set1_epi32(15), c8 = _mm512_set1_epi32(8);
    const __m512 dv = _mm512_set1_ps(d);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i lo = _mm512_sub_epi32(_mm512_and_si512(v, m4), c8), hi = _mm512_sub_epi32(_mm512_srli_epi32(v, 4), c8);
    _mm512_storeu_ps(y, _mm512_mul_round_ps(_mm512_cvtepi32_ps(lo), dv, RN));
    _mm512_storeu_ps(y + 16, _mm512_mul_round_ps(_mm512_cvtepi32_ps(hi), dv, RN));
}

#include "kernels/arch/x86/deq_q4_0.inc"

// y = x C for quantized C (peri_matmul_nn; PLM's decode multiplies a head's 128 rows of W_kb this way): each x
// row in strips of 256 columns held in 16 registers while all K rows of C pass; a block's scale is folded into its
// x value once, and its codes become floats by a table lookup (Q4_0: vpermps on the nibble gives q - 8, as the
// permute reads only an index's low 4 bits) or a widening convert (Q8_0). m is a multiple of 32.
#define NN_PF_ROWS 16
PERI_INLINE void mm_q_nn(int wt, float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs,
                         int64_t K, int64_t m, int64_t n) {
    const __m512 tbl = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    peri_nn_prefetch_start(c, cs, K, NN_PF_ROWS);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * ldx;
        float *yi = y + i * ldy;
        for (int64_t j0 = 0; j0 < m; j0 += 256) {
            const int nb = (int)((m - j0 < 256 ? m - j0 : 256) / 32);
            __m512 acc[16];
            PERI_UNROLL for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
            for (int64_t s = 0; s < K; s++) {
                const int64_t k = peri_nn_row(s, K);
                const char *row = (const char *)c + (size_t)k * cs;
                const float a = xi[k];
                if (i == 0 && j0 == 0) peri_nn_prefetch_step(c, cs, s + NN_PF_ROWS, K);
                // a times each block's scale, through memory: broadcasts from memory take a load port, not the
                // shuffle port that the code lookups need (twice as fast in L1)
                _Alignas(64) float fs[16] = {0};
                if (wt == PERI_TYPE_Q4_0_X16) {   // the strip's 8 blocks: half of a group's 16 consecutive scales
                    const block_q4_0_x16 *g = (const block_q4_0_x16 *)row + j0 / QK4_0_X16;
                    const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g->d + (j0 / 32) % 16)));
                    _mm256_store_ps(fs, _mm256_mul_ps(_mm256_set1_ps(a), dv));
                } else {
                    PERI_UNROLL for (int b = 0; b < 8; b++) {
                        if (b >= nb) break;
                        const int64_t blk = j0 / 32 + b;
                        fs[b] = a * _cvtsh_ss(wt == PERI_TYPE_Q8_0 ? ((const block_q8_0 *)row)[blk].d
                                                                   : ((const block_q4_0 *)row)[blk].d);
                    }
                }
                PERI_UNROLL for (int b = 0; b < 8; b++) {
                    if (b >= nb) break;
                    const int64_t blk = j0 / 32 + b;
                    const uint8_t *q;
                    if (wt == PERI_TYPE_Q8_0) q = (const uint8_t *)((const block_q8_0 *)row + blk)->qs;
                    else if (wt == PERI_TYPE_Q4_0) q = ((const block_q4_0 *)row + blk)->qs;
                    else q = ((const block_q4_0_x16 *)row + blk / 16)->qs + 16 * (blk % 16);
                    const __m512 f = _mm512_set1_ps(fs[b]);
                    __m512 lo, hi;
                    if (wt == PERI_TYPE_Q8_0) {
                        lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
                        hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
                    } else {
                        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
                        lo = _mm512_permutexvar_ps(v, tbl);
                        hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tbl);
                    }
                    acc[2 * b] = _mm512_fmadd_ps(f, lo, acc[2 * b]);
                    acc[2 * b + 1] = _mm512_fmadd_ps(f, hi, acc[2 * b + 1]);
                }
            }
            PERI_UNROLL for (int b = 0; b < 8; b++) {
                if (b >= nb) break;
                _mm512_storeu_ps(yi + j0 + 32 * b, acc[2 * b]);
                _mm512_storeu_ps(yi + j0 + 32 * b + 16, acc[2 * b + 1]);
            }
        }
    }
}

#define MM_Q_NN(name, wt)                                                                                       \
    static void name(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs, int64_t K,  \
                     int64_t m, int64_t n) {                                                                    \
        mm_q_nn(wt, y, ldy, x, ldx, c, cs, K, m, n);                                                            \
    }
MM_Q_NN(mm_q8_0_nn, PERI_TYPE_Q8_0)
MM_Q_NN(mm_q4_0_nn, PERI_TYPE_Q4_0)
MM_Q_NN(mm_q4_0_x16_nn, PERI_TYPE_Q4_0_X16)
#undef MM_Q_NN

// y = x C for Q4_K C (the absorbed query of Q4_K_M files): as mm_q_nn, in strips of one super-block (256 columns,
// 16 registers). A value is (d sc) q - dmin m as the reference dequantizes it: d sc q is exact in float (11 + 6 + 4
// significant bits), so one fused multiply-subtract rounds as the reference's multiply and subtract do.
static void mm_q4_K_nn(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs, int64_t K,
                       int64_t m, int64_t n) {
    const __m512 tbl = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    peri_nn_prefetch_start(c, cs, K, NN_PF_ROWS);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * ldx;
        float *yi = y + i * ldy;
        for (int64_t j0 = 0; j0 < m; j0 += QK_K) {
            __m512 acc[16];
            PERI_UNROLL for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
            for (int64_t s = 0; s < K; s++) {
                const int64_t k = peri_nn_row(s, K);
                const char *row = (const char *)c + (size_t)k * cs;
                if (i == 0 && j0 == 0) peri_nn_prefetch_step(c, cs, s + NN_PF_ROWS, K);
                const block_q4_K *bb = (const block_q4_K *)row + j0 / QK_K;
                const __m512 a = _mm512_set1_ps(xi[k]);
                const __m128i sm = q_k4_scales_v(bb->scales);   // scales of sub-blocks 0..7, then their mins
                // d sc and dmin m of the 8 sub-blocks in one vector, through memory: broadcasts from memory take a
                // load port, not the shuffle port that the code lookups need
                _Alignas(64) float f[16];
                const __m512 dd = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(_cvtsh_ss(bb->d)), _mm512_set1_ps(_cvtsh_ss(bb->dmin)));
                _mm512_store_ps(f, _mm512_mul_round_ps(dd, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sm)), RN));
                PERI_UNROLL for (int p = 0; p < 4; p++) {
                    const __m512 d1 = _mm512_set1_ps(f[2 * p]), m1 = _mm512_set1_ps(f[8 + 2 * p]);
                    const __m512 d2 = _mm512_set1_ps(f[2 * p + 1]), m2 = _mm512_set1_ps(f[8 + 2 * p + 1]);
                    PERI_UNROLL for (int h = 0; h < 2; h++) {
                        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(bb->qs + 32 * p + 16 * h)));
                        const __m512 lo = _mm512_fmsub_ps(d1, _mm512_permutexvar_ps(v, tbl), m1);
                        const __m512 hi = _mm512_fmsub_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tbl), m2);
                        acc[4 * p + h] = _mm512_fmadd_ps(a, lo, acc[4 * p + h]);
                        acc[4 * p + 2 + h] = _mm512_fmadd_ps(a, hi, acc[4 * p + 2 + h]);
                    }
                }
            }
            PERI_UNROLL for (int t = 0; t < 16; t++) _mm512_storeu_ps(yi + j0 + 16 * t, acc[t]);
        }
    }
}

static void deq_q4_K(const void *src, float *y, int64_t n) {
    const block_q4_K *x = src;
    const __m512i m4 = _mm512_set1_epi32(15);
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = _cvtsh_ss(x[i].d), mn = _cvtsh_ss(x[i].dmin);
        _Alignas(16) uint8_t sm[16];
        q_k4_scales(x[i].scales, sm);   // scales of sub-blocks 0..7, then their mins
        PERI_UNROLL for (int p = 0; p < 4; p++) {
            const __m512 d1 = _mm512_set1_ps(d * sm[2 * p]), m1 = _mm512_set1_ps(mn * sm[8 + 2 * p]);
            const __m512 d2 = _mm512_set1_ps(d * sm[2 * p + 1]), m2 = _mm512_set1_ps(mn * sm[8 + 2 * p + 1]);
            PERI_UNROLL for (int h = 0; h < 2; h++) {
                __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x[i].qs + 32 * p + 16 * h)));
                __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, m4)), hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
                _mm512_storeu_ps(y + 64 * p + 16 * h, _mm512_sub_round_ps(_mm512_mul_round_ps(d1, lo, RN), m1, RN));
                _mm512_storeu_ps(y + 64 * p + 32 + 16 * h, _mm512_sub_round_ps(_mm512_mul_round_ps(d2, hi, RN), m2, RN));
            }
        }
    }
}

static void deq_q5_K(const void *src, float *y, int64_t n) {
    const block_q5_K *x = src;
    const __m512i m4 = _mm512_set1_epi32(15), one = _mm512_set1_epi32(1);
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = _cvtsh_ss(x[i].d), mn = _cvtsh_ss(x[i].dmin);
        _Alignas(16) uint8_t sm[16];
        q_k4_scales(x[i].scales, sm);
        PERI_UNROLL for (int p = 0; p < 4; p++) { // qh bit 2p (2p+1) adds 16 to the low (high) nibbles of qs[32p..]
            const __m512 d1 = _mm512_set1_ps(d * sm[2 * p]), m1 = _mm512_set1_ps(mn * sm[8 + 2 * p]);
            const __m512 d2 = _mm512_set1_ps(d * sm[2 * p + 1]), m2 = _mm512_set1_ps(mn * sm[8 + 2 * p + 1]);
            PERI_UNROLL for (int h = 0; h < 2; h++) {
                __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x[i].qs + 32 * p + 16 * h)));
                __m512i hb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x[i].qh + 16 * h)));
                __m512i lo = _mm512_or_si512(_mm512_and_si512(v, m4),
                                             _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2 * p), one), 4));
                __m512i hi = _mm512_or_si512(_mm512_srli_epi32(v, 4),
                                             _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2 * p + 1), one), 4));
                _mm512_storeu_ps(y + 64 * p + 16 * h,
                                 _mm512_sub_round_ps(_mm512_mul_round_ps(d1, _mm512_cvtepi32_ps(lo), RN), m1, RN));
                _mm512_storeu_ps(y + 64 * p + 32 + 16 * h,
                                 _mm512_sub_round_ps(_mm512_mul_round_ps(d2, _mm512_cvtepi32_ps(hi), RN), m2, RN));
            }
        }
    }
}

// Q2_K: per 16 values (d * scale) * q - dmin * min; 2-bit codes as in qmm_x86.inc's q_row_k.
static void deq_q2_K(const void *src, float *y, int64_t n) {
    const block_q2_K *x = src;
    const __m512i m3 = _mm512_set1_epi32(3);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = _cvtsh_ss(x[i].d), mn = _cvtsh_ss(x[i].dmin);
        PERI_UNROLL for (int h = 0; h < 2; h++) {
            PERI_UNROLL for (int s = 0; s < 4; s++) {
                PERI_UNROLL for (int k = 0; k < 2; k++, y += 16) {
                    const uint8_t sc = x[i].scales[8 * h + 2 * s + k];
                    const __m512 dl = _mm512_set1_ps(d * (sc & 0xF)), ml = _mm512_set1_ps(mn * (sc >> 4));
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x[i].qs + 32 * h + 16 * k)));
                    v = _mm512_and_si512(_mm512_srli_epi32(v, 2 * s), m3);
                    _mm512_storeu_ps(y, _mm512_sub_round_ps(_mm512_mul_round_ps(dl, _mm512_cvtepi32_ps(v), RN), ml, RN));
                }
            }
        }
    }
}

// Q3_K: (d * scale) * (q - 4 unless the hmask bit is set).
static void deq_q3_K(const void *src, float *y, int64_t n) {
    const block_q3_K *x = src;
    const __m512i m3 = _mm512_set1_epi32(3), c4 = _mm512_set1_epi32(4);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = _cvtsh_ss(x[i].d);
        _Alignas(16) uint8_t s8[16];
        q_k3_scales(x[i].scales, s8);
        const __m512i hm[2] = {_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)x[i].hmask)),
                               _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x[i].hmask + 16)))};
        PERI_UNROLL for (int h = 0; h < 2; h++) {
            PERI_UNROLL for (int s = 0; s < 4; s++) {
                const __m512i bit = _mm512_set1_epi32(1 << (4 * h + s));
                PERI_UNROLL for (int k = 0; k < 2; k++, y += 16) {
                    const __m512 dl = _mm512_set1_ps(d * (s8[8 * h + 2 * s + k] - 32));
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(x[i].qs + 32 * h + 16 * k)));
                    v = _mm512_and_si512(_mm512_srli_epi32(v, 2 * s), m3);
                    v = _mm512_mask_sub_epi32(v, _mm512_testn_epi32_mask(hm[k], bit), v, c4);
                    _mm512_storeu_ps(y, _mm512_mul_round_ps(dl, _mm512_cvtepi32_ps(v), RN));
                }
            }
        }
    }
}

static void deq_q6_K(const void *src, float *y, int64_t n) {
    const block_q6_K *x = src;
    const __m512i m4 = _mm512_set1_epi32(15), m3 = _mm512_set1_epi32(3), c32 = _mm512_set1_epi32(32);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = _cvtsh_ss(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            PERI_UNROLL for (int h = 0; h < 2; h++) {   // values l = 16h .. 16h+15 of each quarter, scale sc[h + ...]
                __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 16 * h)));
                __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 32 + 16 * h)));
                __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qh + 16 * h)));
                __m512i q[4] = {
                    _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi32(_mm512_and_si512(c, m3), 4)),
                    _mm512_or_si512(_mm512_and_si512(b, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(c, 2), m3), 4)),
                    _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(c, 4), m3), 4)),
                    _mm512_or_si512(_mm512_srli_epi32(b, 4), _mm512_slli_epi32(_mm512_srli_epi32(c, 6), 4)),
                };
                PERI_UNROLL for (int j = 0; j < 4; j++) {
                    const __m512 ds = _mm512_set1_ps(d * sc[h + 2 * j]);   // (d * scale) * q, in that order
                    _mm512_storeu_ps(y + 32 * j + 16 * h,
                                     _mm512_mul_round_ps(ds, _mm512_cvtepi32_ps(_mm512_sub_epi32(q[j], c32)), RN));
                }
            }
        }
    }
}
#undef RN

static void deq_f16(const void *src, float *y, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

static void deq_bf16(const void *src, float *y, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i))), 16)));
    for (; i < n; i++) {
        uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&y[i], &u, 4);
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const struct peri_kernel_set peri_kset_avx512 = {
    .name = "avx512",
    .level = PERI_KERNELS_AVX512,
    .row_align = 8, // the decode tile; finer than a multiple of the prefill tile (6) keeps threads balanced
    .mm = {
        [PERI_TYPE_F32] = {mm_f32, PERI_TYPE_F32},
        [PERI_TYPE_F16] = {mm_f16, PERI_TYPE_F32},
        [PERI_TYPE_BF16] = {mm_bf16, PERI_TYPE_F32},
        // Q8_0, Q4_0, Q4_K, Q6_K: n >= GB_MIN_N through the tiled GEMM (qgemm_vnni.inc without vpdpbusd), else
        // the row kernels of the other types; Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 at n == 1 through qgemv_avx2.inc,
        // Q2_K to Q6_K through qkgemv_avx2.inc
        [PERI_TYPE_Q8_0] = {qv_q8_0, PERI_TYPE_Q8_0}, [PERI_TYPE_Q4_0] = {qv_q4_0, PERI_TYPE_Q8_0},
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
    .quantize_x = {[PERI_TYPE_Q8_0] = quantize_q8_0, [PERI_TYPE_Q8_K] = quantize_q8_K, [PERI_TYPE_F16] = f16_row},
    .dot = dot,
    .axpy = axpy,
    .layernorm = layernorm,
    .rmsnorm = rmsnorm,
    .softmax = softmax,
    .silu_row = silu_row,
    .swiglu = swiglu,
    .sum8 = sum8,
    .attn_scores = gp_attn_scores,
    .mm_nn = {[PERI_TYPE_F32] = mm_f32_nn, [PERI_TYPE_F16] = mm_f16_nn, [PERI_TYPE_BF16] = mm_bf16_nn,
              [PERI_TYPE_Q8_0] = mm_q8_0_nn, [PERI_TYPE_Q4_0] = mm_q4_0_nn, [PERI_TYPE_Q4_0_X16] = mm_q4_0_x16_nn,
              [PERI_TYPE_Q4_K] = mm_q4_K_nn},
    .t_nn = {mm_q8t_nn, mm_q4kt_nn, mm_q6kt_nn},
    .t_nn_q8k = {NULL, peri_avx2_q4kt_q8k, peri_avx2_q6kt_q8k},
    .q8t_mm = mm_q8t_gemm,
    .to_float = {[PERI_TYPE_F16] = deq_f16, [PERI_TYPE_BF16] = deq_bf16, [PERI_TYPE_Q8_0] = deq_q8_0, [PERI_TYPE_Q4_0] = deq_q4_0, [PERI_TYPE_Q4_K] = deq_q4_K,
                 [PERI_TYPE_Q4_0_X16] = deq_q4_0_x16, [PERI_TYPE_Q6_K] = deq_q6_K, [PERI_TYPE_Q2_K] = deq_q2_K, [PERI_TYPE_Q3_K] = deq_q3_K,
                 [PERI_TYPE_Q5_K] = deq_q5_K},
};

#else
typedef int peri_avx512_unused; // ISO C wants a non-empty translation unit
#endif
