// Weight types. The ids equal ggml's / GGUF's on-disk type ids and only ever grow at the end.
// One traits table, indexed by the id, tells each type's block layout and its kernels.
#ifndef PERI_TENSOR_TYPES_H
#define PERI_TENSOR_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum peri_type {
    PERI_TYPE_F32 = 0,
    PERI_TYPE_F16 = 1,
    PERI_TYPE_Q4_0 = 2,
    PERI_TYPE_Q4_1 = 3,
    // 4, 5: removed Q4_2, Q4_3
    PERI_TYPE_Q5_0 = 6,
    PERI_TYPE_Q5_1 = 7,
    PERI_TYPE_Q8_0 = 8,
    PERI_TYPE_Q8_1 = 9,
    PERI_TYPE_Q2_K = 10,
    PERI_TYPE_Q3_K = 11,
    PERI_TYPE_Q4_K = 12,
    PERI_TYPE_Q5_K = 13,
    PERI_TYPE_Q6_K = 14,
    PERI_TYPE_Q8_K = 15,
    PERI_TYPE_IQ2_XXS = 16,
    PERI_TYPE_IQ2_XS = 17,
    PERI_TYPE_IQ3_XXS = 18,
    PERI_TYPE_IQ1_S = 19,
    PERI_TYPE_IQ4_NL = 20,
    PERI_TYPE_IQ3_S = 21,
    PERI_TYPE_IQ2_S = 22,
    PERI_TYPE_IQ4_XS = 23,
    PERI_TYPE_I8 = 24,
    PERI_TYPE_I16 = 25,
    PERI_TYPE_I32 = 26,
    PERI_TYPE_I64 = 27,
    PERI_TYPE_F64 = 28,
    PERI_TYPE_IQ1_M = 29,
    PERI_TYPE_BF16 = 30,
    // 31-33: removed Q4_0_4_4, Q4_0_4_8, Q4_0_8_8
    PERI_TYPE_TQ1_0 = 34,
    PERI_TYPE_TQ2_0 = 35,
    // 36-38: removed IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8
    PERI_TYPE_MXFP4 = 39,
    PERI_TYPE_BOOL = 40,   // peri-only (safetensors BOOL; never written to GGUF)
    PERI_TYPE_U8 = 41,     // peri-only (safetensors U8)
    PERI_TYPE_Q4_0_X16 = 42, // peri-only: Q4_0 repacked at load for the kernels (tensor/repack.h); never in a file
    PERI_TYPE_Q8_0_T = 43,   // peri-only: a Q8_0 matrix stored by groups of 32 inputs (tensor/repack.h); never in a file
    PERI_TYPE_Q4_K_T = 44,   // peri-only: a Q4_K matrix stored by groups of 256 inputs (tensor/repack.h); never in a file
    PERI_TYPE_Q6_K_T = 45,   // peri-only: a Q6_K matrix stored by groups of 256 inputs (tensor/repack.h); never in a file
    PERI_TYPE_COUNT,
};

// The load-time layouts (tensor/repack.h): types of memory only, which no file may hold.
static inline int peri_type_is_layout(int type) {
    return type == PERI_TYPE_Q4_0_X16 || type == PERI_TYPE_Q8_0_T || type == PERI_TYPE_Q4_K_T ||
           type == PERI_TYPE_Q6_K_T;
}

// Converts one row of n values (n a multiple of blck_size) to float32.
typedef void (*peri_to_float_fn)(const void *src, float *dst, int64_t n);
// Converts n floats (n a multiple of blck_size) into the type (quantization); NULL if not supported.
typedef void (*peri_from_float_fn)(const float *src, void *dst, int64_t n);
// Dot product of one weight row (n values of this type) with a float32 vector: the reference matmul.
typedef float (*peri_dot_f32_fn)(const void *row, const float *x, int64_t n);

struct peri_type_traits {
    const char *name;        // as ggml names it: "f32", "q4_K", ...
    int64_t blck_size;       // values per block
    size_t type_size;        // bytes per block
    bool supported;          // peri can compute with it (to_float set)
    peri_to_float_fn to_float;
    peri_from_float_fn from_float;
    peri_dot_f32_fn dot_f32;
};

// NULL for ids that are not types (4, 5, 31..33, 36..38, >= COUNT).
const struct peri_type_traits *peri_type_traits(int type);
const char *peri_type_name(int type);               // "type 77" for unknown ids (static buffer per id range)
// Bytes of a row of n values; 0 if n is not a multiple of the block size or the type is unknown.
size_t peri_row_size(int type, int64_t n);

// Scalar conversions (exact, round-to-nearest-even on the way down, as ggml and PyTorch do).
float peri_f16_to_f32(uint16_t h);
uint16_t peri_f32_to_f16(float f);
float peri_bf16_to_f32(uint16_t h);
uint16_t peri_f32_to_bf16(float f);

// Quantized types register their traits here (src/tensor/quants.c); F32/F16/BF16 live in types.c.
void peri_quant_traits_fill(struct peri_type_traits *table, int n);

// A weight as the model code sees it: a row-major view (shape[0] outermost, as PyTorch/safetensors;
// GGUF's ne[] is reversed on load), with the data used in place from the mapped file.
#define PERI_MAX_DIMS 6
typedef struct peri_tensor {
    const char *name;
    int type;                       // enum peri_type
    int n_dims;
    int64_t shape[PERI_MAX_DIMS];
    const void *data;
    size_t nbytes;
    unsigned flags;                 // PERI_TENSOR_*
} peri_tensor;

// Matmuls keep float32 activations and sums for this operand (no F16 partial sums, avx512fp16.c): cache rows, whose
// scores feed a softmax, and the weights of models whose reference computes in float32 (PLDR-LLM).
#define PERI_TENSOR_FLOAT_SUMS 1u

int64_t peri_tensor_nelem(const peri_tensor *t);

#endif
