// 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1): ggml's reference (de)quantization, and the
// registration of every quantized type's kernels in the traits table.
#include "tensor/quants.h"
#include "tensor/repack.h"

#include <float.h>
#include <math.h>
#include <string.h>

PERI_QUANT_NO_CONTRACT

// The scale of Q4_0 / Q5_0 is the signed value of largest magnitude over -2^(bits-1): that value then
// maps exactly to the lowest quant, and the other side gets one more level.
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

// ---- Q4_0 ------------------------------------------------------------------------------------------------

void peri_quantize_row_q4_0_ref(const float *x, void *dst, int64_t n) {
    block_q4_0 *y = dst;
    for (int64_t i = 0; i < n / QK4_0; i++, x += QK4_0) {
        const float d = signed_absmax(x, QK4_0) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = peri_f32_to_f16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[QK4_0 / 2 + j] * id;
            const int q0 = peri_trunc_i8(x0 + 8.5f), q1 = peri_trunc_i8(x1 + 8.5f);
            const uint8_t xi0 = (uint8_t)(q0 > 15 ? 15 : q0), xi1 = (uint8_t)(q1 > 15 ? 15 : q1);
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

void peri_dequantize_row_q4_0(const void *src, float *y, int64_t n) {
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
        const float d = peri_f16_to_f32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[j] = x0 * d;
            y[j + QK4_0 / 2] = x1 * d;
        }
    }
}

// ---- Q4_1 ------------------------------------------------------------------------------------------------

static void min_max(const float *x, int n, float *mn, float *mx) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    *mn = min;
    *mx = max;
}

void peri_quantize_row_q4_1_ref(const float *x, void *dst, int64_t n) {
    block_q4_1 *y = dst;
    for (int64_t i = 0; i < n / QK4_1; i++, x += QK4_1) {
        float min, max;
        min_max(x, QK4_1, &min, &max);
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = peri_f32_to_f16(d);
        y[i].m = peri_f32_to_f16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[QK4_1 / 2 + j] - min) * id;
            const int q0 = peri_trunc_i8(x0 + 0.5f), q1 = peri_trunc_i8(x1 + 0.5f);
            const uint8_t xi0 = (uint8_t)(q0 > 15 ? 15 : q0), xi1 = (uint8_t)(q1 > 15 ? 15 : q1);
            y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
        }
    }
}

void peri_dequantize_row_q4_1(const void *src, float *y, int64_t n) {
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1) {
        const float d = peri_f16_to_f32(x[i].d);
        const float m = peri_f16_to_f32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            const int x0 = x[i].qs[j] & 0x0F;
            const int x1 = x[i].qs[j] >> 4;
            y[j] = x0 * d + m;
            y[j + QK4_1 / 2] = x1 * d + m;
        }
    }
}

// ---- Q5_0 ------------------------------------------------------------------------------------------------

void peri_quantize_row_q5_0_ref(const float *x, void *dst, int64_t n) {
    block_q5_0 *y = dst;
    for (int64_t i = 0; i < n / QK5_0; i++, x += QK5_0) {
        const float d = signed_absmax(x, QK5_0) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = peri_f32_to_f16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[QK5_0 / 2 + j] * id;
            // ggml computes MIN(31, (int8_t)v) into a uint8_t: a negative v wraps modulo 256.
            int q0 = peri_trunc_i8(x0 + 16.5f), q1 = peri_trunc_i8(x1 + 16.5f);
            uint8_t xi0 = (uint8_t)(q0 > 31 ? 31 : q0), xi1 = (uint8_t)(q1 > 31 ? 31 : q1);
            y[i].qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << j;
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_0 / 2);
        }
        for (int b = 0; b < 4; b++) y[i].qh[b] = (uint8_t)(qh >> (8 * b)); // little-endian, as ggml's memcpy on LE
    }
}

static uint32_t load_qh(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

void peri_dequantize_row_q5_0(const void *src, float *y, int64_t n) {
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < n / QK5_0; i++, y += QK5_0) {
        const float d = peri_f16_to_f32(x[i].d);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            const int x0 = ((x[i].qs[j] & 0x0F) | h0) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | h1) - 16;
            y[j] = x0 * d;
            y[j + QK5_0 / 2] = x1 * d;
        }
    }
}

// ---- Q5_1 ------------------------------------------------------------------------------------------------

void peri_quantize_row_q5_1_ref(const float *x, void *dst, int64_t n) {
    block_q5_1 *y = dst;
    for (int64_t i = 0; i < n / QK5_1; i++, x += QK5_1) {
        float min, max;
        min_max(x, QK5_1, &min, &max);
        const float d = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = peri_f32_to_f16(d);
        y[i].m = peri_f32_to_f16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[QK5_1 / 2 + j] - min) * id;
            const uint8_t xi0 = peri_trunc_u8(x0 + 0.5f);   // no clamp to 31, as ggml
            const uint8_t xi1 = peri_trunc_u8(x1 + 0.5f);
            y[i].qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << j;
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_1 / 2);
        }
        for (int b = 0; b < 4; b++) y[i].qh[b] = (uint8_t)(qh >> (8 * b));
    }
}

void peri_dequantize_row_q5_1(const void *src, float *y, int64_t n) {
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < n / QK5_1; i++, y += QK5_1) {
        const float d = peri_f16_to_f32(x[i].d);
        const float m = peri_f16_to_f32(x[i].m);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            const int x0 = (x[i].qs[j] & 0x0F) | h0;
            const int x1 = (x[i].qs[j] >> 4) | h1;
            y[j] = x0 * d + m;
            y[j + QK5_1 / 2] = x1 * d + m;
        }
    }
}

// ---- Q8_0, Q8_1 ------------------------------------------------------------------------------------------

static float absmax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    return amax;
}

void peri_quantize_row_q8_0_ref(const float *x, void *dst, int64_t n) {
    block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        const float d = absmax(x, QK8_0) / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = peri_f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = peri_trunc_i8(roundf(x[j] * id));
    }
}

void peri_dequantize_row_q8_0(const void *src, float *y, int64_t n) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
        const float d = peri_f16_to_f32(x[i].d);
        for (int j = 0; j < QK8_0; j++) y[j] = x[i].qs[j] * d;
    }
}

void peri_quantize_row_q8_1_ref(const float *x, void *dst, int64_t n) {
    block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        const float d = absmax(x, QK8_1) / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = peri_f32_to_f16(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = peri_trunc_i8(roundf(x[j] * id));
            sum += y[i].qs[j];
        }
        y[i].s = peri_f32_to_f16(sum * d);
    }
}

// ggml has no to_float for Q8_1 (it only ever holds activations); this one is Q8_0's arithmetic.
void peri_dequantize_row_q8_1(const void *src, float *y, int64_t n) {
    const block_q8_1 *x = src;
    for (int64_t i = 0; i < n / QK8_1; i++, y += QK8_1) {
        const float d = peri_f16_to_f32(x[i].d);
        for (int j = 0; j < QK8_1; j++) y[j] = x[i].qs[j] * d;
    }
}

PERI_QUANT_DEFINE_DOT(q4_0, QK4_0, block_q4_0)
PERI_QUANT_DEFINE_DOT(q4_1, QK4_1, block_q4_1)
PERI_QUANT_DEFINE_DOT(q5_0, QK5_0, block_q5_0)
PERI_QUANT_DEFINE_DOT(q5_1, QK5_1, block_q5_1)
PERI_QUANT_DEFINE_DOT(q8_0, QK8_0, block_q8_0)
PERI_QUANT_DEFINE_DOT(q8_1, QK8_1, block_q8_1)

// ---- registration ----------------------------------------------------------------------------------------

void peri_quant_traits_fill(struct peri_type_traits *table, int n) {
    static const struct {
        int type;
        int64_t blck_size;
        size_t type_size;
        peri_to_float_fn to_float;
        peri_from_float_fn from_float;
        peri_dot_f32_fn dot;
    } k[] = {
#define Q(T, t, qk, block_t) {PERI_TYPE_##T, qk, sizeof(block_t), peri_dequantize_row_##t, peri_quantize_row_##t##_ref, peri_dot_##t##_f32_ref}
        Q(Q4_0, q4_0, QK4_0, block_q4_0), Q(Q4_1, q4_1, QK4_1, block_q4_1),
        Q(Q5_0, q5_0, QK5_0, block_q5_0), Q(Q5_1, q5_1, QK5_1, block_q5_1),
        Q(Q8_0, q8_0, QK8_0, block_q8_0), Q(Q8_1, q8_1, QK8_1, block_q8_1),
        Q(Q2_K, q2_K, QK_K, block_q2_K),  Q(Q3_K, q3_K, QK_K, block_q3_K),
        Q(Q4_K, q4_K, QK_K, block_q4_K),  Q(Q5_K, q5_K, QK_K, block_q5_K),
        Q(Q6_K, q6_K, QK_K, block_q6_K),  Q(Q8_K, q8_K, QK_K, block_q8_K),
        Q(Q4_0_X16, q4_0_x16, QK4_0_X16, block_q4_0_x16), // load-time layout (repack.c)
#undef Q
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        if (k[i].type >= n) continue;
        struct peri_type_traits *t = &table[k[i].type];
        // The table in types.c owns names and sizes; a mismatch with our structs would be a bug there
        // or here, and leaves the type unsupported rather than reading blocks with the wrong stride.
        if (t->blck_size != k[i].blck_size || t->type_size != k[i].type_size) continue;
        t->supported = true;
        t->to_float = k[i].to_float;
        t->from_float = k[i].from_float;
        t->dot_f32 = k[i].dot;
    }
}
