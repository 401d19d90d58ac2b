// Internal to src/kernels: the per-level kernel tables that dispatch.c chooses from at run time.
// A level fills what it has; NULL entries fall back to the generic path (dispatch.c), so a new weight
// type (Q8_0, Q4_K, ...) slots in by adding one `mm` entry per level where it has a fast kernel.
#ifndef PERI_KERNELS_IMPL_H
#define PERI_KERNELS_IMPL_H

#include "kernels/ops.h"
#include "tensor/repack.h"

#include <stddef.h>
#include <stdint.h>

// The matmul block kernel: for i < n, j < m
//   y[i*ldy + j] = dot(x row i, w row j) + (bias ? bias[j] : 0)
// x rows are xstride BYTES apart and of type x_type of the entry (float32 unless the entry asks for
// x converted first, e.g. to Q8_0 for integer dot products); w rows are wstride bytes apart, K values.
// It chooses its own blocking for n == 1 (stream W) and n > 1 (register tiles reusing W across x rows).
typedef void (*peri_mm_fn)(float *y, int64_t ldy, const void *x, size_t xstride, const void *w, size_t wstride,
                           int64_t K, int64_t m, int64_t n, const float *bias);

struct peri_mm_kernel {
    peri_mm_fn fn;   // NULL: generic path (dequantize rows and reuse the F32 kernel, or the type's dot_f32)
    int x_type;      // what x must be converted to before fn (PERI_TYPE_F32: used as is)
    int min_n;       // fewer x rows (or exact mode, when x_type is not F32) take the set's mm_exact entry instead
    int f32_from_n;  // 0, or from this many x rows on the mm_exact entry (float x): its float GEMM outruns fn's
};

struct peri_kernel_set {
    const char *name;
    int level;                                   // enum peri_kernel_level
    int row_align;                               // threads split W rows in multiples of this
    struct peri_mm_kernel mm[PERI_TYPE_COUNT];   // indexed by the weight type
    // Float-activation kernels of quantized types, used instead of integer-dot `mm` entries in exact mode
    // (peri_kernels_set_exact); types without one take the generic path there.
    struct peri_mm_kernel mm_exact[PERI_TYPE_COUNT];
    // Activation quantizers by x type (Q8_0, Q8_K), byte for byte the type's reference from_float; NULL: that one.
    peri_from_float_fn quantize_x[PERI_TYPE_COUNT];
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*axpy)(float *y, float a, const float *x, int64_t n);
    void (*layernorm)(float *y, const float *x, const float *w, const float *b, int64_t n, float eps);
    void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, float eps);
    void (*softmax)(float *x, int64_t n);
    void (*silu_row)(float *y, const float *x, int64_t n);
    void (*swiglu)(float *y, const float *a, const float *b, int64_t n);
    // Sum of 8 rows of len floats (len a multiple of 16), `stride` floats apart, read together as the
    // decode matmul reads weight rows: the bandwidth probe.
    float (*sum8)(const float *p, int64_t len, int64_t stride);
    // y = x C with C's rows stored (peri_matmul_nn), by C's type; NULL: the reference.
    void (*mm_nn[PERI_TYPE_COUNT])(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs,
                                   int64_t K, int64_t m, int64_t n);
    // peri_attn_scores for nq <= 16 queries and F32 or F16 keys; NULL: the reference.
    void (*attn_scores)(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                        size_t krs, int64_t nk, int64_t D);
    // y += x C for n <= 4 x rows and C in a T layout, by its kind (PERI_T_*: peri_t_nn_ref's contract); NULL: the
    // reference.
    void (*t_nn[PERI_T_KINDS])(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, int64_t mw,
                               int64_t c0, int64_t m, int64_t G, int64_t n);
    // The same for x rows quantized to Q8_K (G blocks each, xqs bytes apart) with integer sums, for Q4_K_T and Q6_K_T
    // (c0 and m multiples of 32); NULL: x dequantized for t_nn.
    void (*t_nn_q8k[PERI_T_KINDS])(float *y, int64_t ldy, const void *xq, size_t xqs, const void *c, int64_t mw,
                                   int64_t c0, int64_t m, int64_t G, int64_t n);
    // y = x W^T for float x (n rows) and W's rows c0 .. c0 + m - 1 of an mw x K Q8_0_T weight (a GEMM that converts the
    // codes as it packs them), used where the level's Q8_0 entry for n rows takes float x; NULL: Q8_0 panels instead.
    void (*q8t_mm)(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, int64_t mw, int64_t c0,
                   int64_t m, int64_t K, int64_t n);
    // The same for x rows quantized to Q8_0 (xs bytes apart) with integer sums, where the level's Q8_0 entry for n rows
    // takes Q8_0 x (packing the layout's code rows straight into its panels); NULL: the rows turned back (peri_t_rows)
    // for that entry.
    void (*q8t_qmm)(float *y, int64_t ldy, const void *xq, size_t xs, const void *c, int64_t mw, int64_t c0, int64_t m,
                    int64_t K, int64_t n);
    // Rows of a weight type as float32 (peri_get_row; the F16 entry also serves peri_f16_to_f32_row), by weight
    // type; NULL: the type's reference to_float.
    // Same values as the reference (docs/kernels.md says where an FMA may round once instead of twice).
    peri_to_float_fn to_float[PERI_TYPE_COUNT];
};

extern const struct peri_kernel_set peri_kset_ref;
#if defined(__x86_64__)
extern const struct peri_kernel_set peri_kset_avx2;
extern const struct peri_kernel_set peri_kset_avx512;
// The integer T layout kernels (arch/x86/tgemv_avx2.inc), also in the AVX-512 sets.
void peri_avx2_q4kt_q8k(float *y, int64_t ldy, const void *xq, size_t xqs, const void *c, int64_t mw, int64_t c0,
                        int64_t m, int64_t G, int64_t n);
void peri_avx2_q6kt_q8k(float *y, int64_t ldy, const void *xq, size_t xqs, const void *c, int64_t mw, int64_t c0,
                        int64_t m, int64_t G, int64_t n);
#endif
#if defined(__aarch64__)
extern const struct peri_kernel_set peri_kset_neon;
#endif

float peri_sum8_ref(const float *p, int64_t len, int64_t stride);

// Integer-dot kernels: the activation row is first quantized to x_type (Q8_0, Q8_1 or Q8_K, as ggml does),
// then each block's products are summed in integers and scaled once. `fn` is the scalar reference of one
// weight row (K values) against one quantized x row: the same integer sums as the SIMD kernels, so the two
// differ only in the order of the float additions (qdot_ref.c). NULL for types without integer kernels.
typedef float (*peri_qdot_fn)(const void *w, const void *x, int64_t K);
struct peri_qdot {
    int x_type;
    peri_qdot_fn fn;
};
const struct peri_qdot *peri_qdot_ref(int wtype);

// The integer-dot matmul entries of the AVX-512 VNNI level (avx512vnni.c); dispatch.c lays them over a
// copy of the AVX-512 set.
#if defined(__x86_64__)
extern const struct peri_mm_kernel peri_qmm_avx512vnni[PERI_TYPE_COUNT];
#endif
// The half-precision arithmetic GEMM of the AVX512-FP16 level (avx512fp16.c), laid over a copy of the avx512vnni
// set; compilers older than GCC 12 / Clang 14 lack its intrinsics, and the level is then absent.
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 12))
#define PERI_HAVE_AVX512FP16 1
extern const struct peri_mm_kernel peri_mm_avx512fp16[PERI_TYPE_COUNT];
#else
#define PERI_HAVE_AVX512FP16 0
#endif
// The AMX-INT8 prefill GEMM entries (avx512amx.c), laid over a copy of the avx512fp16 set; they need that level's
// compilers, and Linux to grant the tile state (dispatch.c asks).
#if PERI_HAVE_AVX512FP16 && defined(__linux__)
#define PERI_HAVE_AMX 1
extern const struct peri_mm_kernel peri_qmm_avx512amx[PERI_TYPE_COUNT];
void peri_amx_q8t_qmm(float *y, int64_t ldy, const void *xq, size_t xs, const void *c, int64_t mw, int64_t c0, int64_t m,
                      int64_t K, int64_t n);
// AMX-BF16 entries of the same level (avx512amx_bf16.c), where the CPU also has AMX-BF16, AVX512-BF16 and VBMI:
// attention scores against F16 keys and y = x C for F16 C, at float32 accuracy; other cases go to the AVX-512 set's.
void peri_amx_attn_scores(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                          size_t krs, int64_t nk, int64_t D);
void peri_amx_mm_f16_nn(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs, int64_t K,
                        int64_t m, int64_t n);
#else
#define PERI_HAVE_AMX 0
#endif
// The vdotq_s32 (ARMv8.2 dotprod) integer-dot entries (neon_dotprod.c), laid over a copy of the NEON set.
#if defined(__aarch64__)
extern const struct peri_mm_kernel peri_qmm_neon_dotprod[PERI_TYPE_COUNT];
#endif

// The set in use (never NULL).
const struct peri_kernel_set *peri_kernels_current(void);

// Loop helpers for the fixed-size register tiles (full unrolling keeps accumulators in registers).
#if defined(__clang__)
#define PERI_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define PERI_UNROLL _Pragma("GCC unroll 16")
#else
#define PERI_UNROLL
#endif
#define PERI_INLINE static inline __attribute__((always_inline))

// The y = x C kernels (peri_matmul_nn's, few x rows) read C's K rows, cs bytes apart, all of each row. In order they
// would be one short stream (a head's 128 rows of W_kb: 36 KB as Q4_0) that the hardware prefetchers take up too
// late, so they take them as PERI_NN_STREAMS interleaved streams, step k reading row peri_nn_row(k, K): rows 0,
// K/4, K/2, 3K/4, 1, K/4 + 1, ... (docs/kernels.md, "4 streams"; 4 made a cold Q4_0 W_kb head 1.2x as fast as 1,
// 8 and 16 no faster than 4). They ask for the whole of the row of step k ahead (nothing past step K - 1), and
// before their loop for steps 0 .. pf - 1.
#define PERI_NN_STREAMS 4
PERI_INLINE int64_t peri_nn_row(int64_t k, int64_t K) {
    return K % PERI_NN_STREAMS ? k : k % PERI_NN_STREAMS * (K / PERI_NN_STREAMS) + k / PERI_NN_STREAMS;
}
PERI_INLINE void peri_nn_prefetch_row(const char *c, size_t cs, int64_t r, int64_t K) {
    if (r < K)
        for (size_t o = 0; o < cs; o += 64) __builtin_prefetch(c + (size_t)r * cs + o, 0, 3);
}
PERI_INLINE void peri_nn_prefetch_step(const char *c, size_t cs, int64_t k, int64_t K) {
    if (k < K) peri_nn_prefetch_row(c, cs, peri_nn_row(k, K), K);
}
PERI_INLINE void peri_nn_prefetch_start(const char *c, size_t cs, int64_t K, int64_t pf) {
    for (int64_t k = 0; k < pf; k++) peri_nn_prefetch_step(c, cs, k, K);
}

// The row order of the decode (n == 1) kernels (docs/kernels.md, "4 streams"): passes of R rows (a constant) taken
// from R streams far apart, rows j, j + Q, ..., j + (R - 1) Q with Q = m / R, so that the hardware prefetchers
// run ahead on R streams instead of one; then the last m % R rows one at a time. PASS(r, w0, stride, out, wn, os)
// runs r rows from w0, stride bytes apart, giving row i's result to out[i * os]; wn is the first of the rows
// (stride apart as well) that the pass PFD passes later reads, for software prefetch, or NULL.
#define PERI_DECODE_PASSES(R, PFD, m, w, ws, y, PASS)                                                         \
    do {                                                                                                       \
        const int64_t q_ = (m) / (R);                                                                          \
        for (int64_t j_ = 0; j_ < q_; j_++)                                                                    \
            PASS(R, (w) + (size_t)j_ * (ws), (ws) * (size_t)q_, (y) + j_,                                       \
                 j_ + (PFD) < q_ ? (w) + (size_t)(j_ + (PFD)) * (ws) : NULL, q_);                                \
        for (int64_t j_ = q_ * (R); j_ < (m); j_++) PASS(1, (w) + (size_t)j_ * (ws), (ws), (y) + j_, NULL, 1); \
    } while (0)

#endif
