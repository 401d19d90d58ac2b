// Quantized block layouts (byte for byte those of ggml's ggml-common.h) and their scalar reference kernels.
//
// Every kernel here is the `_ref` of its type: dequantization and quantization repeat ggml's reference
// arithmetic operation for operation (ggml/src/ggml-quants.c), so that to_float gives the same float bits
// as ggml's dequantize_row_* and from_float the same bytes as llama-quantize without an importance matrix.
// Block pointers must be aligned as their struct (2 bytes; 4 for block_q8_K), as they are in GGUF data.
#ifndef PERI_TENSOR_QUANTS_H
#define PERI_TENSOR_QUANTS_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "tensor/types.h"

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t peri_half;   // IEEE binary16 bits; convert with peri_f16_to_f32 / peri_f32_to_f16

// ---- 32-value blocks ----------------------------------------------------------------------------------

typedef struct {
    peri_half d;              // scale: x = d * (q - 8)
    uint8_t qs[QK4_0 / 2];    // value j in the low nibble of qs[j], value j+16 in the high nibble
} block_q4_0;
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");

typedef struct {
    peri_half d;              // x = d * q + m
    peri_half m;
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");

typedef struct {
    peri_half d;              // x = d * (q - 16)
    uint8_t qh[4];            // bit j: the 5th bit of value j (little-endian uint32)
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 layout");

typedef struct {
    peri_half d;              // x = d * q + m
    peri_half m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 layout");

typedef struct {
    peri_half d;              // x = d * q
    int8_t qs[QK8_0];
} block_q8_0;
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");

typedef struct {
    peri_half d;              // x = d * q
    peri_half s;              // d * sum(qs)
    int8_t qs[QK8_1];
} block_q8_1;
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 layout");

// ---- 256-value super-blocks (K-quants) -----------------------------------------------------------------

typedef struct {
    uint8_t scales[QK_K / 16];   // per 16 values: low nibble scale, high nibble min (4 bits each)
    uint8_t qs[QK_K / 4];        // 2-bit quants
    peri_half d;                 // super-block scale of the scales
    peri_half dmin;              // super-block scale of the mins
} block_q2_K;
static_assert(sizeof(block_q2_K) == 2 * 2 + QK_K / 16 + QK_K / 4, "block_q2_K layout");

typedef struct {
    uint8_t hmask[QK_K / 8];     // high (3rd) bit of the quants
    uint8_t qs[QK_K / 4];        // low 2 bits
    uint8_t scales[12];          // 16 scales of 6 bits
    peri_half d;
} block_q3_K;
static_assert(sizeof(block_q3_K) == 2 + QK_K / 4 + QK_K / 8 + 12, "block_q3_K layout");

typedef struct {
    peri_half d;
    peri_half dmin;
    uint8_t scales[K_SCALE_SIZE];   // 8 scales and 8 mins of 6 bits (see get_scale_min_k4)
    uint8_t qs[QK_K / 2];           // 4-bit quants
} block_q4_K;
static_assert(sizeof(block_q4_K) == 2 * 2 + K_SCALE_SIZE + QK_K / 2, "block_q4_K layout");

typedef struct {
    peri_half d;
    peri_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];           // 5th bit
    uint8_t qs[QK_K / 2];           // low 4 bits
} block_q5_K;
static_assert(sizeof(block_q5_K) == 2 * 2 + K_SCALE_SIZE + QK_K / 2 + QK_K / 8, "block_q5_K layout");

typedef struct {
    uint8_t ql[QK_K / 2];           // low 4 bits
    uint8_t qh[QK_K / 4];           // upper 2 bits
    int8_t scales[QK_K / 16];       // 8-bit scales
    peri_half d;
} block_q6_K;
static_assert(sizeof(block_q6_K) == 2 + QK_K / 16 + 3 * QK_K / 4, "block_q6_K layout");

// Intermediate type of ggml's K-quant dot products (the activations side); float32 scale.
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];       // sums of qs in groups of 16
} block_q8_K;
static_assert(sizeof(block_q8_K) == 4 + QK_K + QK_K / 16 * 2, "block_q8_K layout");

// ---- kernels ---------------------------------------------------------------------------------------------
// All take n values, n a multiple of the type's block size (trailing values of a partial block are
// ignored). Signatures match peri_to_float_fn / peri_from_float_fn / peri_dot_f32_fn.
// from_float expects finite input (as ggml): non-finite values give unspecified (but defined) bytes.

#define PERI_QUANT_DECLARE(t)                                                                   \
    void peri_dequantize_row_##t(const void *src, float *dst, int64_t n);                       \
    void peri_quantize_row_##t##_ref(const float *src, void *dst, int64_t n);                   \
    float peri_dot_##t##_f32_ref(const void *row, const float *x, int64_t n);

PERI_QUANT_DECLARE(q4_0)
PERI_QUANT_DECLARE(q4_1)
PERI_QUANT_DECLARE(q5_0)
PERI_QUANT_DECLARE(q5_1)
PERI_QUANT_DECLARE(q8_0)
PERI_QUANT_DECLARE(q8_1)
PERI_QUANT_DECLARE(q2_K)
PERI_QUANT_DECLARE(q3_K)
PERI_QUANT_DECLARE(q4_K)
PERI_QUANT_DECLARE(q5_K)
PERI_QUANT_DECLARE(q6_K)
PERI_QUANT_DECLARE(q8_K)

#undef PERI_QUANT_DECLARE

// ggml's nearest_int: adding 1.5*2^23 leaves the rounded integer (round half to even) in the low mantissa
// bits. Kept instead of lrintf so that results never depend on the current rounding mode or libm; exact
// for |v| <= 4194303, garbage (but defined) beyond.
static inline int peri_nearest_int(float v) {
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

// Shared by quants.c and quants_k.c. The conversions are C's (int8_t)v / (uint8_t)v where those are
// defined, and clamp where C would be undefined (out of range, NaN -> 0), so hostile input cannot trigger UB.
static inline int8_t peri_trunc_i8(float v) {
    if (v != v) return 0;
    if (!(v > -129.f)) return -128;
    if (!(v < 128.f)) return 127;
    return (int8_t)v;
}
static inline uint8_t peri_trunc_u8(float v) {
    if (!(v > -1.f)) return 0; // also NaN
    if (!(v < 256.f)) return 255;
    return (uint8_t)v;
}

// The reference dot product of a type: dequantize one block into a stack buffer, then accumulate in
// float in index order, so that dot(row, x) == the f32 dot of to_float(row) with x, bit for bit.
#define PERI_QUANT_DEFINE_DOT(t, qk, block_t)                                                    \
    float peri_dot_##t##_f32_ref(const void *row, const float *x, int64_t n) {                   \
        const block_t *b = row;                                                                  \
        float buf[qk];                                                                           \
        float s = 0;                                                                             \
        for (int64_t i = 0; i < n / (qk); i++) {                                                 \
            peri_dequantize_row_##t(&b[i], buf, (qk));                                           \
            const float *xi = x + i * (qk);                                                      \
            for (int j = 0; j < (qk); j++) s += buf[j] * xi[j];                                  \
        }                                                                                        \
        return s;                                                                                \
    }

// Exact IEEE single operations in the written order: no fused multiply-add, whatever -march says,
// since ggml's reference results (and llama-quantize's bytes) depend on every intermediate rounding.
#if defined(__clang__)
#define PERI_QUANT_NO_CONTRACT _Pragma("STDC FP_CONTRACT OFF")
#elif defined(__GNUC__)
#define PERI_QUANT_NO_CONTRACT _Pragma("GCC optimize(\"fp-contract=off\")")
#else
#define PERI_QUANT_NO_CONTRACT
#endif

#endif
