// The type traits table and the float formats (F32, F16, BF16, F64, integer types).
#include "tensor/types.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

// ---- scalar conversions -----------------------------------------------------------------------------------

float peri_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { // subnormal: normalise
            int e = -1;
            do { e++; mant <<= 1; } while (!(mant & 0x400));
            mant &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t peri_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) // inf or nan
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); // rounds to inf
    if (absx < 0x38800000u) { // result is subnormal or zero
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; // 14 - (e - 127) + 13 - 1 ... computed so result = m >> (shift)
        // value = m * 2^(e-127-23); f16 subnormal unit = 2^-24 -> q = m * 2^(e-127-23+24) = m >> (126-e)
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = absx + 0xfff + ((absx >> 13) & 1) - (uint32_t)((127 - 15) << 23);
    return (uint16_t)(sign | (r >> 13));
}

float peri_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t peri_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); // quiet nan
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

// ---- row kernels for the float formats --------------------------------------------------------------------

static void f32_to_float(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static void f32_from_float(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static float f32_dot(const void *row, const float *x, int64_t n) {
    const float *w = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static void f16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = peri_f16_to_f32(s[i]);
}
static void f16_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = peri_f32_to_f16(src[i]);
}
static float f16_dot(const void *row, const float *x, int64_t n) {
    const uint16_t *w = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += peri_f16_to_f32(w[i]) * x[i];
    return s;
}

static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = peri_bf16_to_f32(s[i]);
}
static void bf16_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = peri_f32_to_bf16(src[i]);
}
static float bf16_dot(const void *row, const float *x, int64_t n) {
    const uint16_t *w = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += peri_bf16_to_f32(w[i]) * x[i];
    return s;
}

static void f64_to_float(const void *src, float *dst, int64_t n) {
    const double *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}

// ---- the table ------------------------------------------------------------------------------------------

static struct peri_type_traits g_traits[PERI_TYPE_COUNT];
static int g_traits_ready;

static void traits_init(void) {
    struct peri_type_traits *t = g_traits;
    t[PERI_TYPE_F32] = (struct peri_type_traits){"f32", 1, 4, true, f32_to_float, f32_from_float, f32_dot};
    t[PERI_TYPE_F16] = (struct peri_type_traits){"f16", 1, 2, true, f16_to_float, f16_from_float, f16_dot};
    t[PERI_TYPE_BF16] = (struct peri_type_traits){"bf16", 1, 2, true, bf16_to_float, bf16_from_float, bf16_dot};
    t[PERI_TYPE_F64] = (struct peri_type_traits){"f64", 1, 8, false, f64_to_float, NULL, NULL};
    t[PERI_TYPE_I8] = (struct peri_type_traits){"i8", 1, 1, false, NULL, NULL, NULL};
    t[PERI_TYPE_I16] = (struct peri_type_traits){"i16", 1, 2, false, NULL, NULL, NULL};
    t[PERI_TYPE_I32] = (struct peri_type_traits){"i32", 1, 4, false, NULL, NULL, NULL};
    t[PERI_TYPE_I64] = (struct peri_type_traits){"i64", 1, 8, false, NULL, NULL, NULL};
    t[PERI_TYPE_BOOL] = (struct peri_type_traits){"bool", 1, 1, false, NULL, NULL, NULL};
    t[PERI_TYPE_U8] = (struct peri_type_traits){"u8", 1, 1, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q4_0_X16] = (struct peri_type_traits){"q4_0x16", 512, 288, false, NULL, NULL, NULL};
    // Not row types (a whole matrix's layout, read only by peri_matmul_t): sizes as their base type's, no row kernels.
    t[PERI_TYPE_Q8_0_T] = (struct peri_type_traits){"q8_0t", 32, 34, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q4_K_T] = (struct peri_type_traits){"q4_Kt", 256, 144, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q6_K_T] = (struct peri_type_traits){"q6_Kt", 256, 210, false, NULL, NULL, NULL};
    // Quantized block types: names and sizes as ggml; kernels filled in by quants.c.
    t[PERI_TYPE_Q4_0] = (struct peri_type_traits){"q4_0", 32, 18, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q4_1] = (struct peri_type_traits){"q4_1", 32, 20, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q5_0] = (struct peri_type_traits){"q5_0", 32, 22, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q5_1] = (struct peri_type_traits){"q5_1", 32, 24, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q8_0] = (struct peri_type_traits){"q8_0", 32, 34, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q8_1] = (struct peri_type_traits){"q8_1", 32, 36, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q2_K] = (struct peri_type_traits){"q2_K", 256, 84, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q3_K] = (struct peri_type_traits){"q3_K", 256, 110, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q4_K] = (struct peri_type_traits){"q4_K", 256, 144, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q5_K] = (struct peri_type_traits){"q5_K", 256, 176, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q6_K] = (struct peri_type_traits){"q6_K", 256, 210, false, NULL, NULL, NULL};
    t[PERI_TYPE_Q8_K] = (struct peri_type_traits){"q8_K", 256, 292, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ2_XXS] = (struct peri_type_traits){"iq2_xxs", 256, 66, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ2_XS] = (struct peri_type_traits){"iq2_xs", 256, 74, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ3_XXS] = (struct peri_type_traits){"iq3_xxs", 256, 98, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ1_S] = (struct peri_type_traits){"iq1_s", 256, 50, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ4_NL] = (struct peri_type_traits){"iq4_nl", 32, 18, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ3_S] = (struct peri_type_traits){"iq3_s", 256, 110, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ2_S] = (struct peri_type_traits){"iq2_s", 256, 82, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ4_XS] = (struct peri_type_traits){"iq4_xs", 256, 136, false, NULL, NULL, NULL};
    t[PERI_TYPE_IQ1_M] = (struct peri_type_traits){"iq1_m", 256, 56, false, NULL, NULL, NULL};
    t[PERI_TYPE_TQ1_0] = (struct peri_type_traits){"tq1_0", 256, 54, false, NULL, NULL, NULL};
    t[PERI_TYPE_TQ2_0] = (struct peri_type_traits){"tq2_0", 256, 66, false, NULL, NULL, NULL};
    t[PERI_TYPE_MXFP4] = (struct peri_type_traits){"mxfp4", 32, 17, false, NULL, NULL, NULL};
    peri_quant_traits_fill(t, PERI_TYPE_COUNT);
}

const struct peri_type_traits *peri_type_traits(int type) {
    if (!g_traits_ready) { // idempotent; a benign race writes the same values
        traits_init();
        g_traits_ready = 1;
    }
    if (type < 0 || type >= PERI_TYPE_COUNT || !g_traits[type].name) return NULL;
    return &g_traits[type];
}

const char *peri_type_name(int type) {
    const struct peri_type_traits *t = peri_type_traits(type);
    return t ? t->name : "unknown type";
}

size_t peri_row_size(int type, int64_t n) {
    const struct peri_type_traits *t = peri_type_traits(type);
    if (!t || n < 0 || n % t->blck_size) return 0;
    return (size_t)(n / t->blck_size) * t->type_size;
}

int64_t peri_tensor_nelem(const peri_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= t->shape[i];
    return n;
}
