// AArch64 Advanced SIMD (NEON) kernels; compiled for AArch64 only and chosen at run time by dispatch.c.
#if defined(__aarch64__)
#include "kernels/kernels_impl.h"

#include <arm_neon.h>
#include <math.h>
#include <string.h>

// 32 q registers: prefill tile 4 x rows by 4 weight rows (16 accumulators); decode streams 8 rows.
#define TR 4
#define TC 4
#define GEMV_ROWS 8

PERI_INLINE float32x4_t ld_w(int wt, const char *w, int64_t k) {
    if (wt == PERI_TYPE_F32) return vld1q_f32((const float *)w + k);
    uint16x4_t h = vld1_u16((const uint16_t *)w + k);
    if (wt == PERI_TYPE_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

PERI_INLINE float32x4_t ld_w_tail(int wt, const char *w, int64_t k, int64_t left) {
    size_t esz = wt == PERI_TYPE_F32 ? 4 : 2;
    _Alignas(16) char buf[16] = {0};
    memcpy(buf, w + (size_t)k * esz, (size_t)left * esz);
    return ld_w(wt, buf, 0);
}

PERI_INLINE float32x4_t ld_x_tail(const float *x, int64_t left) {
    float buf[4] = {0};
    memcpy(buf, x, (size_t)left * sizeof(float));
    return vld1q_f32(buf);
}

PERI_INLINE void tile(int wt, int R, int C, float *y, int64_t ldy, const float *x, int64_t ldx, const char *w,
                      size_t ws, int64_t K, const float *bias) {
    float32x4_t acc[TR][GEMV_ROWS];
    PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++) acc[r][c] = vdupq_n_f32(0);
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        float32x4_t xv[TR];
        PERI_UNROLL for (int r = 0; r < R; r++) xv[r] = vld1q_f32(x + r * ldx + k);
        PERI_UNROLL for (int c = 0; c < C; c++) {
            float32x4_t wv = ld_w(wt, w + (size_t)c * ws, k);
            PERI_UNROLL for (int r = 0; r < R; r++) acc[r][c] = vfmaq_f32(acc[r][c], xv[r], wv);
        }
    }
    if (k < K) {
        float32x4_t xv[TR];
        PERI_UNROLL for (int r = 0; r < R; r++) xv[r] = ld_x_tail(x + r * ldx + k, K - k);
        PERI_UNROLL for (int c = 0; c < C; c++) {
            float32x4_t wv = ld_w_tail(wt, w + (size_t)c * ws, k, K - k);
            PERI_UNROLL for (int r = 0; r < R; r++) acc[r][c] = vfmaq_f32(acc[r][c], xv[r], wv);
        }
    }
    PERI_UNROLL for (int r = 0; r < R; r++) PERI_UNROLL for (int c = 0; c < C; c++)
        y[r * ldy + c] = vaddvq_f32(acc[r][c]) + (bias ? bias[c] : 0.0f);
}

#define XBLOCK 32

PERI_INLINE void mm_body(int wt, float *y, int64_t ldy, const void *xv, size_t xstride, const void *wv,
                         size_t ws, int64_t K, int64_t m, int64_t n, const float *bias) {
    const float *x = xv;
    const char *w = wv;
    int64_t ldx = (int64_t)(xstride / sizeof(float));
#define B(j) (bias ? bias + (j) : NULL)
    if (n == 1) {
        int64_t j = 0;
        for (; j + GEMV_ROWS <= m; j += GEMV_ROWS) tile(wt, 1, GEMV_ROWS, y + j, ldy, x, ldx, w + j * ws, ws, K, B(j));
        for (; j + 2 <= m; j += 2) tile(wt, 1, 2, y + j, ldy, x, ldx, w + j * ws, ws, K, B(j));
        for (; j < m; j++) tile(wt, 1, 1, y + j, ldy, x, ldx, w + j * ws, ws, K, B(j));
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += XBLOCK) {
        int64_t i1 = i0 + XBLOCK < n ? i0 + XBLOCK : n;
        int64_t j = 0;
        for (; j + TC <= m; j += TC) {
            int64_t i = i0;
            for (; i + TR <= i1; i += TR) tile(wt, TR, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, K, B(j));
            for (; i < i1; i++) tile(wt, 1, TC, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, K, B(j));
        }
        for (; j < m; j++) {
            int64_t i = i0;
            for (; i + TR <= i1; i += TR) tile(wt, TR, 1, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, K, B(j));
            for (; i < i1; i++) tile(wt, 1, 1, y + i * ldy + j, ldy, x + i * ldx, ldx, w + j * ws, ws, K, B(j));
        }
    }
#undef B
}

static void mm_f32(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                   int64_t n, const float *bias) {
    mm_body(PERI_TYPE_F32, y, ldy, x, xs, w, ws, K, m, n, bias);
}
static void mm_f16(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                   int64_t n, const float *bias) {
    mm_body(PERI_TYPE_F16, y, ldy, x, xs, w, ws, K, m, n, bias);
}
static void mm_bf16(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                    int64_t n, const float *bias) {
    mm_body(PERI_TYPE_BF16, y, ldy, x, xs, w, ws, K, m, n, bias);
}

static float dot(const float *a, const float *b, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static float sum(const float *x, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0), s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vaddq_f32(s0, vld1q_f32(x + i));
        s1 = vaddq_f32(s1, vld1q_f32(x + i + 4));
        s2 = vaddq_f32(s2, vld1q_f32(x + i + 8));
        s3 = vaddq_f32(s3, vld1q_f32(x + i + 12));
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) s += x[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

static void rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    float rs = 1.0f / sqrtf(dot(x, x, n) / (float)n + eps);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(x + i), rs);
        if (w) v = vmulq_f32(v, vld1q_f32(w + i));
        vst1q_f32(y + i, v);
    }
    for (; i < n; i++) y[i] = x[i] * rs * (w ? w[i] : 1.0f);
}

static void layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    float mean = sum(x, n) / (float)n;
    float32x4_t mv = vdupq_n_f32(mean), s = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t d = vsubq_f32(vld1q_f32(x + i), mv);
        s = vfmaq_f32(s, d, d);
    }
    float var = vaddvq_f32(s);
    for (; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float rs = 1.0f / sqrtf(var / (float)n + eps);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_n_f32(vsubq_f32(vld1q_f32(x + i), mv), rs);
        if (w) v = vmulq_f32(v, vld1q_f32(w + i));
        if (b) v = vaddq_f32(v, vld1q_f32(b + i));
        vst1q_f32(y + i, v);
    }
    for (; i < n; i++) y[i] = (x[i] - mean) * rs * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

static float sum8(const float *p, int64_t len, int64_t stride) {
    float32x4_t a[8];
    PERI_UNROLL for (int r = 0; r < 8; r++) a[r] = vdupq_n_f32(0);
    for (int64_t o = 0; o + 4 <= len; o += 4)
        PERI_UNROLL for (int r = 0; r < 8; r++) a[r] = vaddq_f32(a[r], vld1q_f32(p + r * stride + o));
    PERI_UNROLL for (int r = 1; r < 8; r++) a[0] = vaddq_f32(a[0], a[r]);
    return vaddvq_f32(a[0]);
}

// softmax, silu and swiglu stay scalar here (expf dominates; a NEON exp can follow the x86 one).
const struct peri_kernel_set peri_kset_neon = {
    .name = "neon",
    .level = PERI_KERNELS_NEON,
    .row_align = 8,
    .mm = {
        [PERI_TYPE_F32] = {mm_f32, PERI_TYPE_F32},
        [PERI_TYPE_F16] = {mm_f16, PERI_TYPE_F32},
        [PERI_TYPE_BF16] = {mm_bf16, PERI_TYPE_F32},
    },
    .dot = dot,
    .axpy = axpy,
    .layernorm = layernorm,
    .rmsnorm = rmsnorm,
    .softmax = peri_softmax_ref,
    .silu_row = peri_silu_row_ref,
    .swiglu = peri_swiglu_ref,
    .sum8 = sum8,
};

#else
typedef int peri_neon_unused; // ISO C wants a non-empty translation unit
#endif
