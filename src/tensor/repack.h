// Load-time layouts: weight types that exist only in memory, made from a file's type when the model is loaded
// so that the kernels read each weight byte once, in whole aligned-size vectors, with no gathers or inserts.
// A repacked row has the same size as the original, so a tensor is repacked in place (in its private
// copy-on-write mapping, or the buffer it was read into): the memory use stays that of the file.
#ifndef PERI_TENSOR_REPACK_H
#define PERI_TENSOR_REPACK_H

#include "tensor/quants.h"

// Q4_0_X16: 16 consecutive Q4_0 blocks of a row (512 values) as their 16 scales, then their 16 x 16 code bytes
// in block order. The decode kernel reads a group's scales with one load and 4 blocks' codes per 64-byte load
// (Q4_0's 18-byte blocks take 4 loads, 3 inserts and a gather for the same); the scales come first so that a
// 4-byte gather at any scale stays inside the group (the prefill GEMM's packing gathers them).
#define QK4_0_X16 512
typedef struct {
    peri_half d[16];  // the scales of blocks 0..15
    uint8_t qs[256];  // block j's 16 code bytes at qs[16 j], as in block_q4_0
} block_q4_0_x16;
static_assert(sizeof(block_q4_0_x16) == 16 * sizeof(block_q4_0), "block_q4_0_x16 is 16 Q4_0 blocks, rearranged");

// One row of n values (n a multiple of 512): Q4_0 -> Q4_0_X16 (src and dst must not overlap).
void peri_repack_q4_0_x16(const void *src, void *dst, int64_t n);

// The type's traits entries: through Q4_0's reference, so the values are Q4_0's bit for bit.
void peri_dequantize_row_q4_0_x16(const void *src, float *y, int64_t n);
void peri_quantize_row_q4_0_x16_ref(const float *x, void *dst, int64_t n);
float peri_dot_q4_0_x16_f32_ref(const void *row, const float *x, int64_t n);

// The load-time layout for a weight of this type and row length, or -1 if none (type unchanged).
int peri_repack_type(int type, int64_t row_len);
// Rewrites rows [0, n_rows) of `type` at data into peri_repack_type(type, row_len), in place.
// Returns 0, or PERI_E_NOMEM if the one-row scratch cannot be had (the data is then unchanged).
int peri_repack_rows(int type, void *data, int64_t row_len, int64_t n_rows);

// Q8_0_T: an m x K Q8_0 weight (m rows of K inputs, blocks of 32 along the inputs) stored by groups of 32 inputs,
// so that the inputs an activation leaves at zero can be skipped (PLM's sparse down projection: models/plm.c,
// peri_matmul_q8t). Group g (34 m bytes) holds the scales of block g of rows 0..m-1 (m F16), then for i < 32 the
// codes of input 32 g + i of rows 0..m-1 (m int8): the file's bytes rearranged, so the conversion is exact and the
// size unchanged. Value (row j, input k) = scale[k / 32][j] * code[k][j].
static inline size_t peri_q8_0_t_group_bytes(int64_t m) { return (size_t)m * sizeof(block_q8_0); }
// The m x K Q8_0 matrix src (rows K / 32 blocks long) into Q8_0_T at dst (not overlapping), or in place through a
// scratch copy (returns 0, or PERI_E_NOMEM if the copy cannot be had: the data is then unchanged).
void peri_q8_0_t_from_q8_0(void *dst, const void *src, int64_t m, int64_t K);
int peri_q8_0_t_inplace(void *data, int64_t m, int64_t K);
// Rows j0 .. j0 + rows - 1 of a Q8_0_T matrix (m x K) back as Q8_0 rows (K / 32 blocks each) at dst: the panels the
// prefill GEMM multiplies with the level's Q8_0 kernel.
void peri_q8_0_t_rows(void *dst, const void *src, int64_t m, int64_t K, int64_t j0, int64_t rows);

// A rows x cols matrix of esz-byte elements (esz 4: F32, 2: F16, BF16) transposed into cols x rows (PLM's down projection,
// whose decode reads one row per non-zero input: models/plm.c): from src into dst (not overlapping), or in place
// through a scratch copy (returns 0, or PERI_E_NOMEM if the copy cannot be had: the data is then unchanged).
void peri_transpose_elems(void *dst, const void *src, int64_t rows, int64_t cols, size_t esz);
int peri_transpose_inplace(void *data, int64_t rows, int64_t cols, size_t esz);

#endif
