// AArch64 Advanced SIMD (NEON) kernels; compiled for AArch64 only and chosen at run time by dispatch.c.
// The integer-dot kernels with vdotq_s32 (ARMv8.2 dotprod) live in neon_dotprod.c.
#if defined(__aarch64__)
#include "kernels/kernels_impl.h"
#include "tensor/quants.h"

#include <arm_neon.h>
#include <math.h>
#include <string.h>

// 32 q registers: dot-product tile 4 x rows by 4 weight rows (16 accumulators) for n < GP_MIN_N; decode streams
// 8 rows.
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

// The outer-product GEMM (gemm_outer.inc) for n >= GP_MIN_N: 8 x rows (or weight rows) by a 12-column panel is
// 24 accumulators, plus 3 panel vectors and the broadcast value, within the 32 q registers.
#define GP_VEC float32x4_t
#define GP_VL 4
#define GP_NV 3
#define GP_MR 8
#define GP_ZERO() vdupq_n_f32(0)
#define GP_LOAD(p) vld1q_f32(p)
#define GP_SET1(v) vdupq_n_f32(v)
#define GP_FMA(a, b, c) vfmaq_f32(c, a, b)
#define GP_STORE(p, v) vst1q_f32(p, v)
#define GP_ADD(a, b) vaddq_f32(a, b)
#define GP_LOADU_N(p, n) ((n) == 4 ? vld1q_f32(p) : ld_x_tail(p, n))
#define GP_STOREU_N(p, n, v) st_y_n(p, n, v)
#define GP_TRANSPOSE(t) transpose4(t)
#define GP_IB (16 * GP_MR) // 128 rows x 2 KB: a quarter of a 1 MB L2, half of a 512 KB one
#define GP_LOADW_N(wt, row, k, n) ((n) == 4 ? ld_w(wt, row, k) : ld_w_tail(wt, row, k, n))

PERI_INLINE void st_y_n(float *y, int n, float32x4_t v) {
    if (n == 4) {
        vst1q_f32(y, v);
        return;
    }
    float buf[4];
    vst1q_f32(buf, v);
    memcpy(y, buf, (size_t)n * sizeof(float));
}

PERI_INLINE void transpose4(float32x4_t r[4]) {
    const float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
    const float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
    r[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    r[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

// 4 signed bytes at p as float (peri_matmul_t's Q8_0_T codes): one 32-bit load, widened twice.
PERI_INLINE float32x4_t ld_q8x4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    const int16x8_t h = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(v)));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
}
#define GP_LOADQ8(p) ld_q8x4(p)
// 4 bytes at p, each (byte >> sh) & mask, as float (the T layouts' packed codes and scales)
PERI_INLINE float32x4_t bits4(const uint8_t *p, int sh, int mask) {
    uint32_t v;
    memcpy(&v, p, 4);
    const uint32x4_t w = vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(v)))));
    return vcvtq_f32_u32(vandq_u32(vshlq_u32(w, vdupq_n_s32(-sh)), vdupq_n_u32((uint32_t)mask)));
}
#define GP_BITS(p, sh, mask) bits4(p, sh, mask)
#include "kernels/gemm_outer.inc"

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

// exp(x) for float32 within ~2 ulp (the Cephes polynomial of the x86 levels); inputs below -87.3 give 0, above
// 88.72 give inf, and NaN passes through.
PERI_INLINE float32x4_t exp4(float32x4_t x) {
    const float32x4_t xc = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.72f));
    const float32x4_t fx = vrndnq_f32(vmulq_n_f32(xc, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(xc, fx, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, fx, vdupq_n_f32(-2.12194440e-4f));
    const float32x4_t z = vmulq_f32(r, r);
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, z);
    // 2^fx as 2^(fx-1) * 2 so that fx = 128 (x near 88.7) does not overflow the exponent field.
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(126)), 23);
    float32x4_t res = vmulq_f32(vmulq_f32(p, vreinterpretq_f32_s32(e)), vdupq_n_f32(2.0f));
    res = vbslq_f32(vcltq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(0.0f), res);
    res = vbslq_f32(vcgtq_f32(x, vdupq_n_f32(88.72283935546875f)), vdupq_n_f32(INFINITY), res);
    return vbslq_f32(vceqq_f32(x, x), res, x);
}

// silu(v) = v / (1 + exp(-v))
PERI_INLINE float32x4_t silu4(float32x4_t v) {
    return vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(v))));
}

static void softmax(float *x, int64_t n) {
    if (n <= 0) return;
    float mx = -INFINITY;
    int64_t i = 0;
    if (n >= 4) {
        float32x4_t m = vdupq_n_f32(-INFINITY);
        for (; i + 4 <= n; i += 4) m = vmaxq_f32(m, vld1q_f32(x + i));
        mx = vmaxvq_f32(m);
    }
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const float32x4_t mv = vdupq_n_f32(mx);
    float32x4_t s = vdupq_n_f32(0);
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), mv));
        s = vaddq_f32(s, e);
        vst1q_f32(x + i, e);
    }
    float tot = vaddvq_f32(s);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        tot += x[i];
    }
    const float inv = 1.0f / tot;
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++) x[i] *= inv;
}

static void silu_row(float *y, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, silu4(vld1q_f32(x + i)));
    for (; i < n; i++) y[i] = peri_silu(x[i]);
}

static void swiglu(float *y, const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_f32(silu4(vld1q_f32(a + i)), vld1q_f32(b + i)));
    for (; i < n; i++) y[i] = peri_silu(a[i]) * b[i];
}

// ---- activation quantizers, byte for byte the references (peri_quantize_row_q8_0_ref / _q8_K_ref) ---------------
// The same float operations per value; only the max and the sums are taken in another order, and those are exact.

// fp16 bits of f, rounded to nearest even as peri_f32_to_f16 (a single rounding, subnormals included).
PERI_INLINE peri_half f2h(float f) {
    __fp16 h = (__fp16)f;
    peri_half u;
    memcpy(&u, &h, sizeof u);
    return u;
}

PERI_INLINE int8x16_t narrow_s8(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    return vcombine_s8(vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))),
                       vqmovn_s16(vcombine_s16(vqmovn_s32(c), vqmovn_s32(d))));
}

static void quantize_q8_0(const float *x, void *dst, int64_t n) {
    block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float32x4_t v[8], m = vdupq_n_f32(0);
        PERI_UNROLL for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(x + 4 * k);
            m = vmaxq_f32(m, vabsq_f32(v[k]));
        }
        const float d = vmaxvq_f32(m) / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        int32x4_t q[8];
        // roundf: nearest, ties away from zero (vrndaq); then C's conversion, saturated as peri_trunc_i8
        PERI_UNROLL for (int k = 0; k < 8; k++) q[k] = vcvtq_s32_f32(vrndaq_f32(vmulq_n_f32(v[k], id)));
        vst1q_s8(y[i].qs, narrow_s8(q[0], q[1], q[2], q[3]));
        vst1q_s8(y[i].qs + 16, narrow_s8(q[4], q[5], q[6], q[7]));
    }
}

static void quantize_q8_K(const float *x, void *dst, int64_t n) {
    block_q8_K *y = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float32x4_t m = vdupq_n_f32(0);
        for (int j = 0; j < QK_K; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
        const float amax = vmaxvq_f32(m);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float max = 0; // the first value of largest magnitude, with its sign (as the reference's scan)
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) == amax) {
                max = x[j];
                break;
            }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j += 16) {
            int32x4_t q[4];
            PERI_UNROLL for (int k = 0; k < 4; k++) // nearest, ties to even (peri_nearest_int), at most 127
                q[k] = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * k), iscale)), vdupq_n_s32(127));
            vst1q_s8(y[i].qs + j, narrow_s8(q[0], q[1], q[2], q[3]));
            y[i].bsums[j / 16] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
        }
        y[i].d = 1 / iscale;
    }
}

#define QMM_DOTPROD 0
#include "kernels/arch/arm/qmm_neon.inc"

// ---- weight rows as float32 (peri_get_row), bit for bit the references in tensor/quants*.c ---------------------
// The same operations with one rounding each; the file-wide contraction switch (as the references use it) keeps
// Q4_K's product and difference from being fused into one rounding.
PERI_QUANT_NO_CONTRACT

PERI_INLINE void st_i8x16(float *y, int8x16_t q, float32x4_t d) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_high_s8(q);
    vst1q_f32(y, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
    vst1q_f32(y + 4, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d));
    vst1q_f32(y + 8, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
    vst1q_f32(y + 12, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d));
}

static void deq_q8_0(const void *src, float *y, int64_t n) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
        const float32x4_t d = vdupq_n_f32(q_h2f(x[i].d));
        st_i8x16(y, vld1q_s8(x[i].qs), d);
        st_i8x16(y + 16, vld1q_s8(x[i].qs + 16), d);
    }
}

static void deq_q4_0(const void *src, float *y, int64_t n) {
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
        const float32x4_t d = vdupq_n_f32(q_h2f(x[i].d));
        const uint8x16_t v = vld1q_u8(x[i].qs);
        st_i8x16(y, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), vdupq_n_s8(8)), d);
        st_i8x16(y + 16, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8)), d);
    }
}

// 16 codes as float, times d minus m: d * q - m as the reference writes it.
PERI_INLINE void st_u8x16_dm(float *y, uint8x16_t q, float32x4_t d, float32x4_t m) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q)), hi = vmovl_high_u8(q);
    vst1q_f32(y, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)))), m));
    vst1q_f32(y + 4, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_high_u16(lo))), m));
    vst1q_f32(y + 8, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)))), m));
    vst1q_f32(y + 12, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_high_u16(hi))), m));
}

// 16 codes as float, times d plus m: q * d + m as the Q4_1 / Q5_1 references write it.
PERI_INLINE void st_u8x16_dp(float *y, uint8x16_t q, float32x4_t d, float32x4_t m) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q)), hi = vmovl_high_u8(q);
    vst1q_f32(y, vaddq_f32(vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), d), m));
    vst1q_f32(y + 4, vaddq_f32(vmulq_f32(vcvtq_f32_u32(vmovl_high_u16(lo)), d), m));
    vst1q_f32(y + 8, vaddq_f32(vmulq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), d), m));
    vst1q_f32(y + 12, vaddq_f32(vmulq_f32(vcvtq_f32_u32(vmovl_high_u16(hi)), d), m));
}

// Q5_0 / Q5_1's 32 fifth bits (qh, little-endian) as 0x10 in the byte of each value: each qh byte spread over the
// 8 lanes of its values, then one bit per lane tested.
PERI_INLINE void q5_high(const uint8_t *qh, uint8x16_t *h0, uint8x16_t *h1) {
    static const uint8_t idx[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                    2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint32_t u;
    memcpy(&u, qh, 4);
    const uint8x16_t t = vreinterpretq_u8_u32(vdupq_n_u32(u)), b = vld1q_u8(bit), c = vdupq_n_u8(0x10);
    *h0 = vandq_u8(vtstq_u8(vqtbl1q_u8(t, vld1q_u8(idx)), b), c);
    *h1 = vandq_u8(vtstq_u8(vqtbl1q_u8(t, vld1q_u8(idx + 16)), b), c);
}

static void deq_q4_1(const void *src, float *y, int64_t n) {
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1) {
        const float32x4_t d = vdupq_n_f32(q_h2f(x[i].d)), m = vdupq_n_f32(q_h2f(x[i].m));
        const uint8x16_t v = vld1q_u8(x[i].qs);
        st_u8x16_dp(y, vandq_u8(v, vdupq_n_u8(0x0F)), d, m);
        st_u8x16_dp(y + 16, vshrq_n_u8(v, 4), d, m);
    }
}

static void deq_q5_0(const void *src, float *y, int64_t n) {
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < n / QK5_0; i++, y += QK5_0) {
        const float32x4_t d = vdupq_n_f32(q_h2f(x[i].d));
        const uint8x16_t v = vld1q_u8(x[i].qs);
        uint8x16_t h0, h1;
        q5_high(x[i].qh, &h0, &h1);
        const uint8x16_t q0 = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), h0), q1 = vorrq_u8(vshrq_n_u8(v, 4), h1);
        st_i8x16(y, vsubq_s8(vreinterpretq_s8_u8(q0), vdupq_n_s8(16)), d);
        st_i8x16(y + 16, vsubq_s8(vreinterpretq_s8_u8(q1), vdupq_n_s8(16)), d);
    }
}

static void deq_q5_1(const void *src, float *y, int64_t n) {
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < n / QK5_1; i++, y += QK5_1) {
        const float32x4_t d = vdupq_n_f32(q_h2f(x[i].d)), m = vdupq_n_f32(q_h2f(x[i].m));
        const uint8x16_t v = vld1q_u8(x[i].qs);
        uint8x16_t h0, h1;
        q5_high(x[i].qh, &h0, &h1);
        st_u8x16_dp(y, vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), h0), d, m);
        st_u8x16_dp(y + 16, vorrq_u8(vshrq_n_u8(v, 4), h1), d, m);
    }
}

// Q2_K: per 16 values (d * scale) * q - dmin * min, both products rounded before the difference as in the
// reference; codes at bits 2s of bytes 32h + 16k .. for scale 8h + 2s + k.
static void deq_q2_K(const void *src, float *y, int64_t n) {
    const block_q2_K *x = src;
    const uint8x16_t m3 = vdupq_n_u8(3);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = q_h2f(x[i].d), mn = q_h2f(x[i].dmin);
        for (int h = 0; h < 2; h++) {
            const uint8x16_t v[2] = {vld1q_u8(x[i].qs + 32 * h), vld1q_u8(x[i].qs + 32 * h + 16)};
            PERI_UNROLL for (int s = 0; s < 4; s++) {
                PERI_UNROLL for (int k = 0; k < 2; k++, y += 16) {
                    const uint8_t sc = x[i].scales[8 * h + 2 * s + k];
                    st_u8x16_dm(y, vandq_u8(q_shr(v[k], 2 * s), m3), vdupq_n_f32(d * (sc & 0xF)),
                                vdupq_n_f32(mn * (sc >> 4)));
                }
            }
        }
    }
}

// Q3_K's 16 6-bit scales as stored (the scale is the byte minus 32), in sub-block order: low nibbles of bytes 0..7
// (sub-blocks 0..7, then 8..15 from the high nibbles), top 2 bits from bytes 8..11.
PERI_INLINE void q_k3_scales(const uint8_t *s, uint8_t out[16]) {
    uint32_t a, b, c;
    memcpy(&a, s, 4);
    memcpy(&b, s + 4, 4);
    memcpy(&c, s + 8, 4);
    uint32_t u[4] = {(a & 0x0f0f0f0f) | ((c & 0x03030303) << 4), (b & 0x0f0f0f0f) | (((c >> 2) & 0x03030303) << 4),
                     ((a >> 4) & 0x0f0f0f0f) | (((c >> 4) & 0x03030303) << 4),
                     ((b >> 4) & 0x0f0f0f0f) | (((c >> 6) & 0x03030303) << 4)};
    memcpy(out, u, 16);
}

// Q3_K: (d * scale) * (q - 4 unless the hmask bit is set); the code with its hmask bit as bit 2 is q + 4 exactly
// when the bit is set, so one subtraction of 4 gives the signed value.
static void deq_q3_K(const void *src, float *y, int64_t n) {
    const block_q3_K *x = src;
    const uint8x16_t m3 = vdupq_n_u8(3), c4 = vdupq_n_u8(4);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = q_h2f(x[i].d);
        uint8_t s8[16];
        q_k3_scales(x[i].scales, s8);
        const uint8x16_t hm[2] = {vld1q_u8(x[i].hmask), vld1q_u8(x[i].hmask + 16)};
        for (int h = 0; h < 2; h++) {
            const uint8x16_t v[2] = {vld1q_u8(x[i].qs + 32 * h), vld1q_u8(x[i].qs + 32 * h + 16)};
            PERI_UNROLL for (int s = 0; s < 4; s++) {
                const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << (4 * h + s)));
                PERI_UNROLL for (int k = 0; k < 2; k++, y += 16) {
                    const uint8x16_t q = vorrq_u8(vandq_u8(q_shr(v[k], 2 * s), m3), vandq_u8(vtstq_u8(hm[k], bit), c4));
                    st_i8x16(y, vsubq_s8(vreinterpretq_s8_u8(q), vreinterpretq_s8_u8(c4)),
                             vdupq_n_f32(d * (s8[8 * h + 2 * s + k] - 32)));
                }
            }
        }
    }
}

static void deq_q4_K(const void *src, float *y, int64_t n) {
    const block_q4_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = q_h2f(x[i].d), mn = q_h2f(x[i].dmin);
        uint8_t sm[16];
        q_k4_scales(x[i].scales, sm); // scales of sub-blocks 0..7, then their mins
        for (int p = 0; p < 4; p++) {
            const float32x4_t d1 = vdupq_n_f32(d * sm[2 * p]), m1 = vdupq_n_f32(mn * sm[8 + 2 * p]);
            const float32x4_t d2 = vdupq_n_f32(d * sm[2 * p + 1]), m2 = vdupq_n_f32(mn * sm[8 + 2 * p + 1]);
            PERI_UNROLL for (int h = 0; h < 2; h++) {
                const uint8x16_t v = vld1q_u8(x[i].qs + 32 * p + 16 * h);
                st_u8x16_dm(y + 64 * p + 16 * h, vandq_u8(v, vdupq_n_u8(0x0F)), d1, m1);
                st_u8x16_dm(y + 64 * p + 32 + 16 * h, vshrq_n_u8(v, 4), d2, m2);
            }
        }
    }
}

// Q5_K: Q4_K's layout plus a fifth bit, bit 2p (2p + 1) of qh[l] for the low (high) nibbles of qs[32p + l].
static void deq_q5_K(const void *src, float *y, int64_t n) {
    const block_q5_K *x = src;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), c16 = vdupq_n_u8(0x10);
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = q_h2f(x[i].d), mn = q_h2f(x[i].dmin);
        uint8_t sm[16];
        q_k4_scales(x[i].scales, sm);
        const uint8x16_t qh[2] = {vld1q_u8(x[i].qh), vld1q_u8(x[i].qh + 16)};
        for (int p = 0; p < 4; p++) {
            const float32x4_t d1 = vdupq_n_f32(d * sm[2 * p]), m1 = vdupq_n_f32(mn * sm[8 + 2 * p]);
            const float32x4_t d2 = vdupq_n_f32(d * sm[2 * p + 1]), m2 = vdupq_n_f32(mn * sm[8 + 2 * p + 1]);
            const uint8x16_t b1 = vdupq_n_u8((uint8_t)(1 << (2 * p))), b2 = vdupq_n_u8((uint8_t)(2 << (2 * p)));
            PERI_UNROLL for (int h = 0; h < 2; h++) {
                const uint8x16_t v = vld1q_u8(x[i].qs + 32 * p + 16 * h);
                st_u8x16_dm(y + 64 * p + 16 * h, vorrq_u8(vandq_u8(v, m4), vandq_u8(vtstq_u8(qh[h], b1), c16)), d1, m1);
                st_u8x16_dm(y + 64 * p + 32 + 16 * h, vorrq_u8(vshrq_n_u8(v, 4), vandq_u8(vtstq_u8(qh[h], b2), c16)), d2,
                            m2);
            }
        }
    }
}

static void deq_q6_K(const void *src, float *y, int64_t n) {
    const block_q6_K *x = src;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = q_h2f(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            PERI_UNROLL for (int h = 0; h < 2; h++) { // values l = 16h .. 16h+15 of each quarter
                const uint8x16_t a = vld1q_u8(ql + 16 * h), b = vld1q_u8(ql + 32 + 16 * h), c = vld1q_u8(qh + 16 * h);
                const uint8x16_t q[4] = {
                    vorrq_u8(vandq_u8(a, m4), vshlq_n_u8(vandq_u8(c, m3), 4)),
                    vorrq_u8(vandq_u8(b, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(c, 2), m3), 4)),
                    vorrq_u8(vshrq_n_u8(a, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(c, 4), m3), 4)),
                    vorrq_u8(vshrq_n_u8(b, 4), vshlq_n_u8(vshrq_n_u8(c, 6), 4)),
                };
                PERI_UNROLL for (int j = 0; j < 4; j++) // (d * scale) * (q - 32), in that order
                    st_i8x16(y + 32 * j + 16 * h, vsubq_s8(vreinterpretq_s8_u8(q[j]), vdupq_n_s8(32)),
                             vdupq_n_f32(d * sc[h + 2 * j]));
            }
        }
    }
}

static void deq_f16(const void *src, float *y, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(x + i));
        vst1q_f32(y + i, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(y + i + 4, vcvt_high_f32_f16(h));
    }
    for (; i < n; i++) y[i] = q_h2f(x[i]);
}

static void deq_bf16(const void *src, float *y, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(x + i);
        vst1q_f32(y + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)));
        vst1q_f32(y + i + 4, vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)));
    }
    for (; i < n; i++) {
        const uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&y[i], &u, 4);
    }
}

#include "kernels/arch/arm/tgemv_neon.inc"

const struct peri_kernel_set peri_kset_neon = {
    .name = "neon",
    .level = PERI_KERNELS_NEON,
    .row_align = 8,
    .mm = {
        [PERI_TYPE_F32] = {mm_f32, PERI_TYPE_F32},
        [PERI_TYPE_F16] = {mm_f16, PERI_TYPE_F32},
        [PERI_TYPE_BF16] = {mm_bf16, PERI_TYPE_F32},
        QMM_NEON_ENTRIES,
    },
    .mm_nn = {[PERI_TYPE_F32] = mm_f32_nn, [PERI_TYPE_F16] = mm_f16_nn, [PERI_TYPE_BF16] = mm_bf16_nn},
    .t_nn = {mm_q8t_nn, mm_q4kt_nn, mm_q6kt_nn},
    .t_nn_q8k = {NULL, mm_q4kt_q8k, mm_q6kt_q8k},
    .q8t_mm = mm_q8t_gemm,
    .quantize_x = {[PERI_TYPE_Q8_0] = quantize_q8_0, [PERI_TYPE_Q8_K] = quantize_q8_K},
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
                 [PERI_TYPE_Q4_0] = deq_q4_0, [PERI_TYPE_Q4_1] = deq_q4_1, [PERI_TYPE_Q5_0] = deq_q5_0,
                 [PERI_TYPE_Q5_1] = deq_q5_1, [PERI_TYPE_Q2_K] = deq_q2_K, [PERI_TYPE_Q3_K] = deq_q3_K,
                 [PERI_TYPE_Q4_K] = deq_q4_K, [PERI_TYPE_Q5_K] = deq_q5_K, [PERI_TYPE_Q6_K] = deq_q6_K},
};

#else
typedef int peri_neon_unused; // ISO C wants a non-empty translation unit
#endif
