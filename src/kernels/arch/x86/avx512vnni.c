// AVX-512 VNNI integer-dot matmul kernels (vpdpbusd on 256-bit vectors); x86-64 only. dispatch.c lays these
// entries over a copy of the AVX-512 set to form the "avx512vnni" level.
#if defined(__x86_64__)
#include "kernels/kernels_impl.h"
#include "tensor/quants.h"
#include "tensor/repack.h"

#include <immintrin.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif

#define QMM_VNNI 1
#include "kernels/arch/x86/qmm_x86.inc"
#include "kernels/arch/x86/qgemv_vnni.inc"
#include "kernels/arch/x86/qgemm_vnni.inc"
#define QV_MASK_BITS // Q5 high bits by masked byte adds (AVX-512 BW/VL)
#define QV_GATHER_SCALES // measured on Intel's AVX-512 cores with the gather (AVX2 machines: scalar loads)
#define QV_SW_PREFETCH   // and with software prefetch (AVX2 machines: the hardware prefetchers alone)
#include "kernels/arch/x86/qgemv_avx2.inc"

// Q4_1, Q5_0 and Q5_1 decode (n == 1) through the 4-row kernels of qgemv_avx2.inc (vpmaddubsw; the avx512 level's
// too): the one-row vpdpbusd kernels ran at half their speed (L2 6.6 / 8.9 / 7.3 against 14.4 / 16.0 / 15.2 GB/s).
// n > 1 through the vpdpbusd row kernels.
QV_MM(qv_q4_1, PERI_TYPE_Q4_1, qmm_q4_1)
QV_MM(qv_q5_0, PERI_TYPE_Q5_0, qmm_q5_0)
QV_MM(qv_q5_1, PERI_TYPE_Q5_1, qmm_q5_1)
#undef QV_MM
#include "kernels/arch/x86/qkgemv_avx2.inc"

// Q2_K and Q3_K decode through the avx512 level's 4-row kernels of qkgemv_avx2.inc as well: the one-row vpdpbusd
// kernels were slower (L2, 1 thread: Q5_K 12.0 against 17.7 GB/s there). n > 1 through the vpdpbusd row kernels.
KV_MM(kv_q2_K, PERI_TYPE_Q2_K, qmm_q2_K)
KV_MM(kv_q3_K, PERI_TYPE_Q3_K, qmm_q3_K)
#undef KV_MM

// Q5_K decode on 512-bit vectors (qgemv_vnni.inc's Q4_K kernel with the fifth bits).
static void gv_q5_K(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                    int64_t n, const float *bias) {
    if (n == 1) qk_gemv(PERI_TYPE_Q5_K, y, (const block_q8_K *)x, (const char *)w, ws, K, m, bias);
    else qmm_q5_K(y, ldy, x, xs, w, ws, K, m, n, bias);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const struct peri_mm_kernel peri_qmm_avx512vnni[PERI_TYPE_COUNT] = {
    [PERI_TYPE_Q4_1] = {qv_q4_1, PERI_TYPE_Q8_1}, [PERI_TYPE_Q5_0] = {qv_q5_0, PERI_TYPE_Q8_0},
    [PERI_TYPE_Q5_1] = {qv_q5_1, PERI_TYPE_Q8_1}, [PERI_TYPE_Q5_K] = {gv_q5_K, PERI_TYPE_Q8_K},
    [PERI_TYPE_Q2_K] = {kv_q2_K, PERI_TYPE_Q8_K}, [PERI_TYPE_Q3_K] = {kv_q3_K, PERI_TYPE_Q8_K},
    // n == 1 on 512-bit vectors (qgemv_vnni.inc) for Q8_0/Q4_0; n >= GB_MIN_N through the tiled GEMM
    // (qgemm_vnni.inc); the rest as the other levels
    [PERI_TYPE_Q8_0] = {gb_q8_0, PERI_TYPE_Q8_0},
    [PERI_TYPE_Q4_0] = {gb_q4_0, PERI_TYPE_Q8_0},
    [PERI_TYPE_Q4_0_X16] = {gb_q4_0_x16, PERI_TYPE_Q8_0},
    [PERI_TYPE_Q4_K] = {gb_q4_K, PERI_TYPE_Q8_K},
    [PERI_TYPE_Q6_K] = {gb_q6_K, PERI_TYPE_Q8_K},
};

#else
typedef int peri_avx512vnni_unused; // ISO C wants a non-empty translation unit
#endif
