// Compute kernels used by the models. Each has a scalar reference (`*_ref`, in ops_ref.c / matmul_ref.c)
// and may have SIMD versions with the same signature chosen at run time (kernels/arch/*).
// All activations are float32, row-major.
#ifndef PERI_KERNELS_OPS_H
#define PERI_KERNELS_OPS_H

#include "runtime/pool.h"
#include "tensor/types.h"

#include <stdbool.h>
#include <stdint.h>

// y[n x M] = x[n x K] . W^T (+ bias[M]), W a [M x K] weight of any supported type (rows in place).
// Work is split over the rows of W. bias may be NULL; y must not overlap x or bias (kernels keep partial sums in y).
void peri_matmul(peri_pool *pool, float *y, const float *x, const peri_tensor *W, const float *bias, int64_t n);
void peri_matmul_ref(peri_pool *pool, float *y, const float *x, const peri_tensor *W, const float *bias, int64_t n);

// Same with strides: x rows ldx apart, y rows ldy apart (in floats), W rows [row0, row0+M) of K values.
void peri_matmul_ex(peri_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, const peri_tensor *W,
                    int64_t row0, int64_t M, const float *bias, int64_t n);
void peri_matmul_ex_ref(peri_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, const peri_tensor *W,
                        int64_t row0, int64_t M, const float *bias, int64_t n);

// y[n x m] (rows ldy apart) = x[n x K] (rows ldx apart) . C[K x m], C stored as K rows of `type` (F32, F16, BF16,
// or a block type with m a multiple of its block size) cs bytes apart, only their first m values used: the product
// with the second operand as stored (not transposed), e.g. attention probabilities times cache rows, or a query
// times a head's rows of a weight. Runs on the caller (no pool); allocates nothing.
#define PERI_NN_CHUNK 1024 // columns of a block-type C converted at a time (a multiple of every block size)
void peri_matmul_nn(float *y, int64_t ldy, const float *x, int64_t ldx, int type, const void *c, size_t cs, int64_t K,
                    int64_t m, int64_t n);
void peri_matmul_nn_ref(float *y, int64_t ldy, const float *x, int64_t ldx, int type, const void *c, size_t cs,
                        int64_t K, int64_t m, int64_t n);

// Attention scores of nq queries against nk cache rows (PLM's latent decode: one query per head, the keys as rows):
// s[i * lds + j] = sum_d q[i * ldq + d] k_j[d] for i < nq, j < nk, k_j row j of k (F32 or F16, krs bytes apart), D
// values each; float32 sums. Where peri_matmul_ex would take the few queries as x rows of its GEMM and pack the keys
// into panels for them alone, the level's kernel reads each key row once, in order, against the queries held
// transposed (docs/kernels.md, "Latent attention scores"). Runs on the caller; allocates nothing.
void peri_attn_scores(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                      size_t krs, int64_t nk, int64_t D);
void peri_attn_scores_ref(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                          size_t krs, int64_t nk, int64_t D);

// y[n x m] = x[n x K] . C for C a K x m float matrix (F32, F16 or BF16; K rows of m values): a weight stored by its
// inputs, as PLM's down projection is when rearranged at load (models/plm.c). Up to PERI_NN_SPARSE_ROWS x rows the
// threads split the inputs (peri_matmul_nn then reads only the rows of inputs non-zero in some x row) and their
// partial sums, in the pool's scratch (peri_matmul_reserve sizes it), are added; more rows split the outputs, 64 at a
// time, for peri_matmul_nn's GEMM. Without the scratch, the caller alone. Allocates nothing.
#define PERI_NN_SPARSE_ROWS 4   // GP_NN_ROWS_MAX (kernels/gemm_outer.inc): the rows of peri_matmul_nn's sparse kernel
void peri_matmul_by_inputs(peri_pool *pool, float *y, const float *x, const peri_tensor *C, int64_t n);

// y[n x m] = x[n x K] . W^T for W an m x K weight in a T layout (tensor/repack.h: Q8_0_T, Q4_K_T, Q6_K_T; PLM's down
// projection, whose activations are mostly zero), with the numbers of peri_matmul on the file's weight: x rounded as
// the level's kernel for the base type and n rows quantizes it (Q8_0, Q8_K; not in exact mode), else float. Up to
// peri_t_sparse_rows(type) x rows go through peri_t_nn, which reads only the code rows of inputs non-zero in some x
// row of its 4 (Q8_0_T) or in its one x row (the integer Q4_K_T and Q6_K_T kernels, which take one row at a time:
// with 91% of x zero they beat the chunks below up to 64 rows for Q4_K_T and 24 for Q6_K_T; docs/kernels.md "Session
// 16"): the threads split the input groups and their partial sums are added, PERI_T_DECODE_ROWS rows at a time. More rows: for Q8_0_T where the level's Q8_0 kernel for n rows takes
// float x, the level's GEMM straight from the layout (q8t_mm); else each thread turns its share of the weight rows
// (whole panels of peri_t_panel) back into the base type's rows, 256 at a time, and multiplies them with the level's
// kernel. Scratch from the pool
// (peri_matmul_reserve sizes it); without it, peri_t_nn on the caller. Allocates nothing.
#define PERI_T_DECODE_ROWS 16
#define PERI_T_SPARSE_ROWS 64        // Q8_0_T, Q4_K_T
#define PERI_T_SPARSE_ROWS_Q6_K 24
int64_t peri_t_sparse_rows(int t_type);
void peri_matmul_t(peri_pool *pool, float *y, const float *x, const peri_tensor *W, int64_t n);
// y[i][j] = sum_{k < G g} x[i * ldx + k] C[k][j] for i < n, j < m (y rows ldy apart, overwritten), C the weight rows
// c0 .. c0 + m - 1 of an mw-row T layout of type t_type (g inputs per group: peri_t_group), c at the first of its G
// groups; x_type PERI_TYPE_F32 takes x as it is, Q8_0 or Q8_K rounds each block of x to it first (the level's
// quantize_x, byte for byte the reference; zeros stay zero). The level's kernel (or peri_t_nn_ref: the same contract,
// y += x C for n <= 4) takes 4 x rows at a time and skips the inputs zero in all of them. For Q4_K_T and Q6_K_T, c0
// is a multiple of 64.
void peri_t_nn(int t_type, float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, int64_t mw, int64_t c0,
               int64_t m, int64_t G, int64_t n, int x_type);
void peri_t_nn_ref(int t_type, float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, int64_t mw,
                   int64_t c0, int64_t m, int64_t G, int64_t n);

// Row r of a 2-D weight (any supported type) as float32 (K values): SIMD where the level has a dequantizer
// for the type, else the type's reference (peri_get_row_ref).
void peri_get_row(const peri_tensor *W, int64_t r, float *out);
void peri_get_row_ref(const peri_tensor *W, int64_t r, float *out);

// Plain float helpers (single rows).
void peri_layernorm_ref(float *y, const float *x, const float *w, const float *b, int64_t n, float eps);
void peri_rmsnorm_ref(float *y, const float *x, const float *w, int64_t n, float eps);
float peri_dot_ref(const float *a, const float *b, int64_t n);
void peri_softmax_ref(float *x, int64_t n);   // in place, max-subtracted, float32
static inline float peri_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
void peri_axpy_ref(float *y, float a, const float *x, int64_t n);   // y += a * x
void peri_silu_row_ref(float *y, const float *x, int64_t n);       // y = silu(x); y may equal x
void peri_swiglu_ref(float *y, const float *a, const float *b, int64_t n); // y = silu(a) * b; y may equal a or b

// Dispatched versions of the helpers above (same contracts; results within the tolerances of
// docs/kernels.md of the _ref versions, since SIMD sums in a different order).
float peri_dot(const float *a, const float *b, int64_t n);
void peri_axpy(float *y, float a, const float *x, int64_t n);
// out[0..n) = the sum over t < nth of part + t * stride: threads' partial results added, in thread order.
void peri_sum_parts(float *out, const float *part, int64_t stride, int nth, int64_t n);
void peri_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps);
void peri_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
void peri_softmax(float *x, int64_t n);
void peri_silu_row(float *y, const float *x, int64_t n);
void peri_swiglu(float *y, const float *a, const float *b, int64_t n);
void peri_f16_to_f32_row(float *y, const uint16_t *x, int64_t n);     // exact, F16C where the CPU has it
void peri_f16_to_f32_row_ref(float *y, const uint16_t *x, int64_t n);
// Float rows to F16, byte for byte peri_f32_to_f16 (the level's quantize_x[F16] where it has one: AVX-512)
void peri_f32_to_f16_row(uint16_t *y, const float *x, int64_t n);

// RoPE on one head vector of dim d (rotating `n_rot` leading dims, n_rot <= d), position pos, base theta.
//   interleaved (GPT-J / ggml NORM): pairs (2i, 2i+1);  half (NeoX): pairs (i, i + n_rot/2).
// cos/sin come from a table [pos][n_rot/2] built once (peri_rope_table) so both variants use the
// same float32 values as the references.
void peri_rope_table(float *cos_tab, float *sin_tab, int64_t n_pos, int n_rot, double theta);
void peri_rope_apply(float *x, int n_rot, const float *cos_row, const float *sin_row, int interleaved);

// Matrix multiply of small float32 matrices: C[m x n] = A[m x k] . B[k x n] (+= when accumulate).
void peri_gemm_f32_ref(float *C, const float *A, const float *B, int m, int n, int k, int accumulate);

const char *peri_kernels_info(void);   // which SIMD versions the dispatcher chose

// Kernel levels. The best one the CPU supports is chosen at the first call, unless the environment
// variable PERI_KERNELS (ref|avx2|avx512|avx512vnni|avx512fp16|avx512amx|neon|neondot|auto) asks for another (an unsupported request falls back
// to the best supported level below it).
enum peri_kernel_level {
    PERI_KERNELS_REF = 0,
    PERI_KERNELS_AVX2 = 1,   // x86-64 AVX2 + FMA + F16C
    PERI_KERNELS_AVX512 = 2, // x86-64 AVX-512 F/BW/VL/DQ
    PERI_KERNELS_NEON = 3,   // AArch64 Advanced SIMD
    PERI_KERNELS_AVX512VNNI = 4, // AVX-512 plus VNNI (vpdpbusd) for the integer-dot kernels
    PERI_KERNELS_NEON_DOTPROD = 5, // NEON plus ARMv8.2 dotprod (vdotq_s32) for the integer-dot kernels
    PERI_KERNELS_AVX512FP16 = 6,   // avx512vnni plus AVX512-FP16 (vfmadd231ph) for the F16/BF16-weight prefill GEMM
    PERI_KERNELS_AVX512AMX = 7,    // avx512fp16 plus AMX-INT8 tiles for the prefill GEMM of Q8_0/Q4_0/Q4_K/Q6_K weights
    PERI_KERNELS_LEVELS,
};
bool peri_kernels_supported(int level);
// Whether the current level has its own matmul kernel for a weight type (load-time layouts are made only then).
bool peri_kernels_has_mm(int type);
int peri_kernels_set_level(int level);   // PERI_OK, or PERI_E_UNSUPPORTED (level unchanged)
int peri_kernels_level(void);
const char *peri_kernels_level_name(int level);

// Quantized weights (Q8_0, Q4_0, Q4_K, ...) multiply activations quantized on the fly to 8 bits (Q8_0 /
// Q8_1 / Q8_K, as ggml) by default; at the avx512fp16 level, F16 and BF16 weights in prefill multiply activations rounded
// to F16 with half-precision partial sums (avx512fp16.c). Exact mode keeps activations in float32 for every type, so results
// match the float reference (dequantize, then dot) up to the order of the sums; slower. Also set by the
// environment variable PERI_KERNELS_EXACT=1 (read at the first kernel call). The ref level is always exact.
void peri_kernels_set_exact(bool exact);
bool peri_kernels_exact(void);

// Sizes the pool's scratch (peri_pool_reserve) for matmuls of up to max_n rows of up to max_K values, so that
// peri_matmul never allocates: call it at set-up (context init). by_inputs: the weights stored by their inputs that
// the caller multiplies too (peri_matmul_t, peri_matmul_by_inputs), as an OR of peri_by_inputs_bit(type) of each (0:
// none; their scratch, up to a few MiB, is then not reserved). Without it (or with pool == NULL), matmuls on quantized
// weights still allocate nothing: they quantize x in chunks of a 32 KiB stack buffer, which costs some speed for n > 1,
// and those by inputs run on the caller alone. Returns PERI_OK or a negative status.
int peri_matmul_reserve(peri_pool *pool, int64_t max_K, int64_t max_n, unsigned by_inputs);
// peri_matmul_reserve's bit for a weight stored by its inputs: a T layout type, or F32/F16/BF16 (peri_matmul_by_inputs).
unsigned peri_by_inputs_bit(int type);

// Read bandwidth in GB/s (1e9 bytes/s) of a streaming sum over a `bytes` buffer with all pool threads,
// best of a few runs; a negative status if the buffer cannot be allocated.
double peri_measure_read_bandwidth(peri_pool *pool, size_t bytes);

#endif
