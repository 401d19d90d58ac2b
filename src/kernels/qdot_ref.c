// Scalar references of the integer-dot matmul kernels: one weight row against one activation row quantized
// to Q8_0 / Q8_1 / Q8_K, with the same integer sums per block (exact) that the SIMD versions form, so that
// SIMD and reference differ only in the order of the float additions of the scaled block sums.
#include "kernels/kernels_impl.h"
#include "tensor/quants.h"
#include "tensor/repack.h"

static inline float f16(peri_half h) { return peri_f16_to_f32(h); }

// ---- 32-value blocks against Q8_0 (Q8_1 for the types with a min) --------------------------------------

static float qdot_q8_0(const void *wv, const void *xv, int64_t K) {
    const block_q8_0 *w = wv, *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK8_0; b++) {
        int32_t is = 0;
        for (int j = 0; j < QK8_0; j++) is += w[b].qs[j] * x[b].qs[j];
        s += (float)is * (f16(w[b].d) * f16(x[b].d));
    }
    return s;
}

static float qdot_q4_0(const void *wv, const void *xv, int64_t K) {
    const block_q4_0 *w = wv;
    const block_q8_0 *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK4_0; b++) {
        int32_t is = 0;
        for (int j = 0; j < 16; j++) {
            is += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j];
            is += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        }
        s += (float)is * (f16(w[b].d) * f16(x[b].d));
    }
    return s;
}

// Q4_0's sums over the rearranged bytes: block j of a group has its scale at d[j] and its codes at qs[16 j].
static float qdot_q4_0_x16(const void *wv, const void *xv, int64_t K) {
    const block_q4_0_x16 *w = wv;
    const block_q8_0 *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK4_0; b++) {
        const uint8_t *q = w[b / 16].qs + 16 * (b % 16);
        int32_t is = 0;
        for (int j = 0; j < 16; j++) {
            is += ((q[j] & 0xF) - 8) * x[b].qs[j];
            is += ((q[j] >> 4) - 8) * x[b].qs[j + 16];
        }
        s += (float)is * (f16(w[b / 16].d[b % 16]) * f16(x[b].d));
    }
    return s;
}

// x = d*q + m: the m part needs sum(x), which Q8_1 carries as s = d*sum(q) (fp16, as ggml).
static float qdot_q4_1(const void *wv, const void *xv, int64_t K) {
    const block_q4_1 *w = wv;
    const block_q8_1 *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK4_1; b++) {
        int32_t is = 0;
        for (int j = 0; j < 16; j++) {
            is += (w[b].qs[j] & 0xF) * x[b].qs[j];
            is += (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        }
        s += (float)is * (f16(w[b].d) * f16(x[b].d)) + f16(w[b].m) * f16(x[b].s);
    }
    return s;
}

static inline uint32_t qh32(const uint8_t *q) {
    return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
}

static float qdot_q5_0(const void *wv, const void *xv, int64_t K) {
    const block_q5_0 *w = wv;
    const block_q8_0 *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK5_0; b++) {
        uint32_t h = qh32(w[b].qh);
        int32_t is = 0;
        for (int j = 0; j < 16; j++) {
            is += (int)(((w[b].qs[j] & 0xF) | ((h >> j) & 1) << 4) - 16) * x[b].qs[j];
            is += (int)(((w[b].qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4) - 16) * x[b].qs[j + 16];
        }
        s += (float)is * (f16(w[b].d) * f16(x[b].d));
    }
    return s;
}

static float qdot_q5_1(const void *wv, const void *xv, int64_t K) {
    const block_q5_1 *w = wv;
    const block_q8_1 *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK5_1; b++) {
        uint32_t h = qh32(w[b].qh);
        int32_t is = 0;
        for (int j = 0; j < 16; j++) {
            is += (int)((w[b].qs[j] & 0xF) | ((h >> j) & 1) << 4) * x[b].qs[j];
            is += (int)((w[b].qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4) * x[b].qs[j + 16];
        }
        s += (float)is * (f16(w[b].d) * f16(x[b].d)) + f16(w[b].m) * f16(x[b].s);
    }
    return s;
}

// ---- K-quants against Q8_K ---------------------------------------------------------------------------------
// Per super-block: isum = sum over sub-blocks of scale * sum(q * xq) (integers), then
// d_w * d_x * isum - dmin_w * d_x * sum over sub-blocks of min * sum(xq) (the bsums).

static inline void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

static float qdot_q4_K(const void *wv, const void *xv, int64_t K) {
    const block_q4_K *w = wv;
    const block_q8_K *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK_K; b++) {
        int32_t is = 0, ms = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, w[b].scales, &sc, &m);
            const uint8_t *q = w[b].qs + 32 * (j / 2);
            const int8_t *xq = x[b].qs + 32 * j;
            int32_t t = 0;
            for (int l = 0; l < 32; l++) t += (j & 1 ? q[l] >> 4 : q[l] & 0xF) * xq[l];
            is += sc * t;
            ms += m * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
        }
        s += f16(w[b].d) * x[b].d * (float)is - f16(w[b].dmin) * x[b].d * (float)ms;
    }
    return s;
}

static float qdot_q5_K(const void *wv, const void *xv, int64_t K) {
    const block_q5_K *w = wv;
    const block_q8_K *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK_K; b++) {
        int32_t is = 0, ms = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, w[b].scales, &sc, &m);
            const uint8_t *q = w[b].qs + 32 * (j / 2);
            const int8_t *xq = x[b].qs + 32 * j;
            int32_t t = 0;
            for (int l = 0; l < 32; l++)
                t += ((j & 1 ? q[l] >> 4 : q[l] & 0xF) | ((w[b].qh[l] >> j) & 1) << 4) * xq[l];
            is += sc * t;
            ms += m * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
        }
        s += f16(w[b].d) * x[b].d * (float)is - f16(w[b].dmin) * x[b].d * (float)ms;
    }
    return s;
}

// Q6_K: q - 32 with 16 signed 8-bit scales; the -32 is folded in through the bsums.
static float qdot_q6_K(const void *wv, const void *xv, int64_t K) {
    const block_q6_K *w = wv;
    const block_q8_K *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK_K; b++) {
        int32_t is = 0, os = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w[b].ql + 64 * h, *qh = w[b].qh + 32 * h;
            const int8_t *xq = x[b].qs + 128 * h;
            for (int g = 0; g < 8; g++) { // 16 values each: g/2 picks the quarter, g%2 its half
                int32_t t = 0;
                for (int l = 16 * (g & 1); l < 16 * (g & 1) + 16; l++) {
                    int quarter = g / 2;
                    int lo = quarter & 1 ? ql[l + 32] : ql[l];
                    lo = quarter & 2 ? lo >> 4 : lo & 0xF;
                    t += (lo | ((qh[l] >> (2 * quarter)) & 3) << 4) * xq[32 * quarter + l];
                }
                int sc = w[b].scales[8 * h + g];
                is += sc * t;
                os += sc * x[b].bsums[8 * h + g];
            }
        }
        s += f16(w[b].d) * x[b].d * (float)(is - 32 * os);
    }
    return s;
}

static int q3_scale(const uint8_t *s, int j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// Q3_K: value (low 2 bits) - 4 unless the hmask bit is set; the -4 goes through the bsums.
static float qdot_q3_K(const void *wv, const void *xv, int64_t K) {
    const block_q3_K *w = wv;
    const block_q8_K *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK_K; b++) {
        int32_t is = 0;
        for (int g = 0; g < 16; g++) { // 16 values: half g/8, shift 2*((g/2)%4), bytes 16*(g%2)..
            const uint8_t *q = w[b].qs + 32 * (g / 8);
            int shift = 2 * ((g / 2) % 4), hbit = g / 2; // hmask bit: 0..7 over the 8 groups of 32
            int32_t t = 0;
            for (int l = 16 * (g & 1); l < 16 * (g & 1) + 16; l++) {
                int v = ((q[l] >> shift) & 3) - ((w[b].hmask[l] >> hbit) & 1 ? 0 : 4);
                t += v * x[b].qs[16 * g + l - 16 * (g & 1)];
            }
            is += q3_scale(w[b].scales, g) * t;
        }
        s += f16(w[b].d) * x[b].d * (float)is;
    }
    return s;
}

static float qdot_q2_K(const void *wv, const void *xv, int64_t K) {
    const block_q2_K *w = wv;
    const block_q8_K *x = xv;
    float s = 0;
    for (int64_t b = 0; b < K / QK_K; b++) {
        int32_t is = 0, ms = 0;
        for (int g = 0; g < 16; g++) {
            const uint8_t *q = w[b].qs + 32 * (g / 8);
            int shift = 2 * ((g / 2) % 4);
            int32_t t = 0;
            for (int l = 16 * (g & 1); l < 16 * (g & 1) + 16; l++)
                t += ((q[l] >> shift) & 3) * x[b].qs[16 * g + l - 16 * (g & 1)];
            is += (w[b].scales[g] & 0xF) * t;
            ms += (w[b].scales[g] >> 4) * x[b].bsums[g];
        }
        s += f16(w[b].d) * x[b].d * (float)is - f16(w[b].dmin) * x[b].d * (float)ms;
    }
    return s;
}

static const struct peri_qdot g_qdot_ref[PERI_TYPE_COUNT] = {
    [PERI_TYPE_Q8_0] = {PERI_TYPE_Q8_0, qdot_q8_0}, [PERI_TYPE_Q4_0] = {PERI_TYPE_Q8_0, qdot_q4_0},
    [PERI_TYPE_Q4_1] = {PERI_TYPE_Q8_1, qdot_q4_1}, [PERI_TYPE_Q5_0] = {PERI_TYPE_Q8_0, qdot_q5_0},
    [PERI_TYPE_Q5_1] = {PERI_TYPE_Q8_1, qdot_q5_1}, [PERI_TYPE_Q2_K] = {PERI_TYPE_Q8_K, qdot_q2_K},
    [PERI_TYPE_Q3_K] = {PERI_TYPE_Q8_K, qdot_q3_K}, [PERI_TYPE_Q4_K] = {PERI_TYPE_Q8_K, qdot_q4_K},
    [PERI_TYPE_Q5_K] = {PERI_TYPE_Q8_K, qdot_q5_K}, [PERI_TYPE_Q6_K] = {PERI_TYPE_Q8_K, qdot_q6_K},
    [PERI_TYPE_Q4_0_X16] = {PERI_TYPE_Q8_0, qdot_q4_0_x16},
};

const struct peri_qdot *peri_qdot_ref(int wtype) {
    if (wtype < 0 || wtype >= PERI_TYPE_COUNT || !g_qdot_ref[wtype].fn) return NULL;
    return &g_qdot_ref[wtype];
}
