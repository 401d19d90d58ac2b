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

// The by-input ("T") layouts of PLM's sparse down projection (models/plm.c, peri_matmul_t): an m x K weight (m rows
// of K inputs, quantized in blocks along the inputs) stored by groups of its inputs, each group its m rows' scales
// then one row of m codes per input, so that a decode reads only the code rows of the inputs an activation leaves
// non-zero. Each is the file's bytes rearranged: exact, the same size, and turned back into the file's rows exactly
// (peri_t_rows). Not row types: no traits kernels; GGUF never holds them.
//
// Q8_0_T (groups of 32 inputs, 34 m bytes): the scales of block g of rows 0..m-1 (m F16), then for i < 32 the codes of
// input 32 g + i of rows 0..m-1 (m int8). Value (row j, input k) = scale[k / 32][j] * code[k][j].
//
// Q4_K_T (groups of 256 inputs = one Q4_K block of every row, 144 m bytes; m a multiple of 32):
//   d[m], dmin[m] (F16); SL[4][m], ML[4][m]: the 6-bit scale (min) of sub-blocks 2p and 2p + 1 (32 inputs each),
//   low 4 bits, as a byte's low and high nibble; SH[2][m], MH[2][m]: their top 2 bits, sub-block 4q + t at bits 2t;
//   then for i < 256 the code row of input 256 g + i: m / 2 bytes, rows 32 b .. 32 b + 31 in bytes 16 b .. 16 b + 15
//   (row 32 b + c in byte 16 b + c % 16, low nibble for c < 16). Value = d sc q - dmin mn (sub-block i / 32), as Q4_K.
// Q6_K_T (groups of 256 inputs, 210 m bytes; m a multiple of 64): d[m] (F16); SC[16][m] (int8, sub-blocks of 16
//   inputs); then per input a low plane of m / 2 bytes (Q4_K_T's nibble order) followed by a high plane of m / 4
//   bytes (rows 64 b .. 64 b + 63 in bytes 16 b .. 16 b + 15: row 64 b + c in byte 16 b + c % 16, bits 2 (c / 16)).
//   Value = d sc (q - 32) with q = low + 16 high, as Q6_K.
// A kernel reading VL <= 16 consecutive rows from a multiple of VL finds their codes in VL consecutive bytes, under
// one shift.
enum { PERI_T_Q8_0, PERI_T_Q4_K, PERI_T_Q6_K, PERI_T_KINDS };
// The kind (PERI_T_*) of a T layout type, or -1.
int peri_t_kind(int t_type);
// The T layout for an m x K weight of a file type, or -1 if none (another type, or a shape it cannot take).
int peri_t_layout(int type, int64_t m, int64_t K);
// The file type a T layout rearranges; its inputs per group; the bytes of a group; the rows peri_t_rows takes at a
// time (j0 a multiple of it; rows too unless it reaches m).
int peri_t_base(int t_type);
int64_t peri_t_group(int t_type);
size_t peri_t_group_bytes(int t_type, int64_t m);
int64_t peri_t_panel(int t_type);
// The m x K matrix src (the base type's rows) into the layout at dst (not overlapping).
void peri_t_from(int t_type, void *dst, const void *src, int64_t m, int64_t K);
// Rows j0 .. j0 + rows - 1 of a T layout matrix (m x K) back as the base type's rows at dst: the panels the prefill
// multiplies with the level's kernel for that type.
void peri_t_rows(int t_type, void *dst, const void *src, int64_t m, int64_t K, int64_t j0, int64_t rows);

// Where a group's code rows start (after the m rows' scales) and the bytes from one input's code row to the next,
// by kind (PERI_T_*): the geometry every reader of the layouts takes from here. A group is the rows' scales, then
// one code row per input: peri_t_group_bytes_of = offset + inputs x stride (m times the base type's block size).
static inline size_t peri_t_codes_offset(int kind, int64_t m) {
    return (size_t)m * (kind == PERI_T_Q8_0 ? 2u : kind == PERI_T_Q4_K ? 16u : 18u);
}
static inline size_t peri_t_code_stride(int kind, int64_t m) {
    return kind == PERI_T_Q8_0 ? (size_t)m : kind == PERI_T_Q4_K ? (size_t)m / 2 : (size_t)m / 4 * 3;
}
static inline size_t peri_t_group_bytes_of(int kind, int64_t m) {
    return peri_t_codes_offset(kind, m) + (kind == PERI_T_Q8_0 ? 32u : 256u) * peri_t_code_stride(kind, m);
}

// Codes and scales of Q4_K_T and Q6_K_T at row j of a group (grp, m rows): for the reference and kernels' tails.
static inline int peri_t_nibble(const uint8_t *plane, int64_t j) {
    return (plane[(j >> 5) * 16 + (j & 15)] >> (4 * ((j >> 4) & 1))) & 15;
}
static inline int peri_t_crumb(const uint8_t *plane, int64_t j) {
    return (plane[(j >> 6) * 16 + (j & 15)] >> (2 * ((j >> 4) & 3))) & 3;
}
// Q4_K_T sub-block s (0..7): the 6-bit scale and min (as Q4_K's get_scale_min_k4 gives them).
static inline void peri_q4_k_t_scale_min(const char *grp, int64_t m, int64_t j, int s, int *sc, int *mn) {
    const uint8_t *u = (const uint8_t *)grp;
    const int lo = 4 * (s & 1), hi = 2 * (s & 3);
    *sc = ((u[4 * m + (s >> 1) * m + j] >> lo) & 15) | (((u[12 * m + (s >> 2) * m + j] >> hi) & 3) << 4);
    *mn = ((u[8 * m + (s >> 1) * m + j] >> lo) & 15) | (((u[14 * m + (s >> 2) * m + j] >> hi) & 3) << 4);
}
// Q4_K_T sub-block s (0..7): d sc and dmin mn.
static inline void peri_q4_k_t_scale(const char *grp, int64_t m, int64_t j, int s, float *sc, float *mn) {
    int a, b;
    peri_q4_k_t_scale_min(grp, m, j, s, &a, &b);
    peri_half d, dmin;
    memcpy(&d, grp + 2 * j, 2);
    memcpy(&dmin, grp + 2 * m + 2 * j, 2);
    *sc = peri_f16_to_f32(d) * (float)a;
    *mn = peri_f16_to_f32(dmin) * (float)b;
}
// Q6_K_T sub-block s (0..15): d sc.
static inline float peri_q6_k_t_scale(const char *grp, int64_t m, int64_t j, int s) {
    peri_half d;
    memcpy(&d, grp + 2 * j, 2);
    return peri_f16_to_f32(d) * (float)((const int8_t *)grp)[2 * m + s * m + j];
}

// A rows x cols matrix of esz-byte elements (esz 4: F32, 2: F16, BF16; source rows ld_src elements apart)
// transposed into cols x rows, dst[c][r] = src[r][c], from src into dst (not overlapping): PLM's down projection,
// whose decode reads one row per non-zero input (models/plm.c), and float operands that peri_matmul wants the other
// way round (PLDR's per-head q columns, the trainer's backward).
void peri_transpose_elems(void *dst, const void *src, int64_t rows, int64_t cols, int64_t ld_src, size_t esz);

#endif
