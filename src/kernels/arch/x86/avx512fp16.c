// AVX512-FP16 prefill GEMM for F16 and BF16 weights: vfmadd231ph multiplies and adds 32 halves per instruction, twice
// the 16 floats of vfmadd231ps at the same rate (one core here: 368 against 173 GFLOPS). dispatch.c lays this
// entry over a copy of the avx512vnni set to form the "avx512fp16" level; x86-64 only.
//
// Precision. x is rounded to F16 as llama.cpp's F16 matmul rounds it (x_type F16: the dispatcher converts the
// rows). The products are summed in F16 over GH_KB pairs of k per output lane, then added into float32: each of
// those roundings is at most 2^-11 of the running partial sum, so a 64-product partial carries about 2^-11 * 13
// of its size; on random data the whole dot product comes out within ~8e-4 (relative rms) of the float sum of
// the same F16 operands, about three times the error of rounding x to F16 (BENCHMARKS.md reports the KL
// divergence of the next-token distributions). Exact mode (peri_kernels_set_exact) and n < GH_MIN_N take the
// avx512 level's float32 kernel instead. A partial sum that leaves F16's range (|s| > 65504) would be inf:
// each tile's chunk is checked and, where any output is not finite, summed again in float32 from the same F16
// operands (llama.cpp's arithmetic), so only an x that is itself beyond F16 gives inf, as in llama.cpp. Operands
// flagged PERI_TENSOR_FLOAT_SUMS (cache rows, PLDR-LLM's weights) never come here (dispatch.c choose_kernel).
//
// Layout. F16 weights are used as stored (BF16 ones rounded to F16 as they are packed), so packing transposes: a panel holds GH_NP weight rows, and each
// 32-bit lane of P[kp][c] is row c's pair of halves (2kp, 2kp + 1). An x row contributes the same pair
// broadcast as one dword (vpbroadcastd from memory is a load, where a 16-bit broadcast would also take a
// shuffle port), so each lane pair (2c, 2c + 1) sums row c's even and odd k; they are added at the store.
#include "kernels/kernels_impl.h"

#if PERI_HAVE_AVX512FP16
#include <immintrin.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512fp16,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512fp16,avx2,fma,f16c")
#endif

#include "kernels/arch/x86/transpose16.inc"

#define GH_MR 12               // x rows per tile: 24 half accumulators + 2 panel vectors + 1 broadcast of 32 registers
#define GH_NV 2                // panel vectors per pair of k
#define GH_NP (16 * GH_NV)     // weight rows per panel
#define GH_KC 512              // k per packed panel: 256 pairs x 32 rows x 4 bytes = 32 KB, kept in L1
#define GH_KB 32               // pairs of k summed in F16 before the float32 add (16: 1.2x vfmadd231ps; 32: 1.6x)
#define GH_IB (8 * GH_MR)      // x rows per block (packed per chunk: 96 x 1 KB on the stack, beside 32 KB of panel)
#define GH_JB (16 * GH_NP)     // weight rows per pass over a packed x chunk: 96 x 512 floats of y stay in L2
#define GH_MIN_N 12            // fewer x rows: the float32 kernels (packing is shared by too few rows)

// Sums of one tile: a32[r][v][h] holds x row r against panel rows 16v + 8h .. 16v + 8h + 7, two lanes per row
// (even and odd k).
typedef __m512 gh_acc[GH_MR][GH_NV][2];

// a32 = sums over kpn pairs (and a last single k when odd, its pair's second half 0) of packed x rows
// (xp[kp * GH_MR + r]: one pointer for all rows, where row pointers would take 12 registers and spill) against
// panel P.
PERI_INLINE void gh_tile(int mr, const uint32_t *xp, const uint32_t *P, int64_t kpn, int odd, gh_acc a32) {
    PERI_UNROLL for (int r = 0; r < GH_MR; r++) {
        if (r >= mr) break;
        PERI_UNROLL for (int v = 0; v < GH_NV; v++) a32[r][v][0] = a32[r][v][1] = _mm512_setzero_ps();
    }
    const int64_t kend = kpn + odd;
    for (int64_t kb = 0; kb < kend; kb += GH_KB) {
        const int64_t ke = kend - kb < GH_KB ? kend : kb + GH_KB;
        __m512h s[GH_MR][GH_NV];
        PERI_UNROLL for (int r = 0; r < GH_MR; r++) {
            if (r >= mr) break;
            PERI_UNROLL for (int v = 0; v < GH_NV; v++) s[r][v] = _mm512_setzero_ph();
        }
        for (int64_t kp = kb; kp < ke; kp++) {
            __m512h p[GH_NV];
            PERI_UNROLL for (int v = 0; v < GH_NV; v++)
                p[v] = _mm512_castsi512_ph(_mm512_load_si512((const void *)(P + kp * GH_NP + v * 16)));
            PERI_UNROLL for (int r = 0; r < GH_MR; r++) {
                if (r >= mr) break;
                const __m512h a = _mm512_castsi512_ph(_mm512_set1_epi32((int32_t)xp[kp * GH_MR + r]));
                PERI_UNROLL for (int v = 0; v < GH_NV; v++) s[r][v] = _mm512_fmadd_ph(a, p[v], s[r][v]);
            }
        }
        PERI_UNROLL for (int r = 0; r < GH_MR; r++) {
            if (r >= mr) break;
            PERI_UNROLL for (int v = 0; v < GH_NV; v++) {
                const __m512i h = _mm512_castph_si512(s[r][v]);
                a32[r][v][0] = _mm512_add_ps(a32[r][v][0], _mm512_cvtph_ps(_mm512_castsi512_si256(h)));
                a32[r][v][1] = _mm512_add_ps(a32[r][v][1], _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)));
            }
        }
    }
}

static void gh_tile_any(int mr, const uint32_t *xp, const uint32_t *P, int64_t kpn, int odd, gh_acc a32) {
    switch (mr) {
#define GH_CASE(R) \
    case R: gh_tile(R, xp, P, kpn, odd, a32); break;
        GH_CASE(1) GH_CASE(2) GH_CASE(3) GH_CASE(4) GH_CASE(5) GH_CASE(6)
        GH_CASE(7) GH_CASE(8) GH_CASE(9) GH_CASE(10) GH_CASE(11) GH_CASE(12)
#undef GH_CASE
    default: break;
    }
}

// 32 values of a weight row from value k (lanes past n are 0) as F16: F16 as stored; BF16 widened (a shift) and
// rounded to F16, exact for |w| in F16's normal range (8 significant bits fit in 11); beyond 65504 it becomes inf,
// which the store's check sends to the float32 sums.
PERI_INLINE __m512i gh_load_w(int wt, const char *row, int64_t k, __mmask32 mask) {
    const __m512i h = _mm512_maskz_loadu_epi16(mask, row + (size_t)k * sizeof(uint16_t));
    if (wt == PERI_TYPE_F16) return h;
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
                              _mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 1);
}

// dst[kp * ds + c] = row c's halves (k0 + 2kp, k0 + 2kp + 1) for kp < (kc + 1) / 2 and the lanes c of smask, from
// up to 16 rows of type wt (F16 or BF16, rs bytes apart; rows c >= nrows and halves past kc are 0): 16 pairs at a
// time, as a 16 x 16 dword transpose (float shuffles move bits unchanged). Weight panels and x tiles alike.
PERI_INLINE void gh_pairs(int wt, uint32_t *dst, int64_t ds, __mmask16 smask, const char *rows, size_t rs, int nrows,
                          int64_t k0, int64_t kc) {
    const int64_t kpc = (kc + 1) / 2;
    for (int64_t kb = 0; kb < kpc; kb += 16) {
        const int64_t halves = kc - 2 * kb < 32 ? kc - 2 * kb : 32;
        const __mmask32 mask = halves == 32 ? ~(__mmask32)0 : (((__mmask32)1 << halves) - 1);
        __m512 t[16];
        PERI_UNROLL for (int c = 0; c < 16; c++)
            t[c] = c < nrows ? _mm512_castsi512_ps(gh_load_w(wt, rows + (size_t)c * rs, k0 + 2 * kb, mask))
                             : _mm512_setzero_ps();
        transpose16(t);
        const int kn = (int)(kpc - kb < 16 ? kpc - kb : 16);
        for (int k = 0; k < kn; k++) _mm512_mask_storeu_ps((float *)(dst + (kb + k) * ds), smask, t[k]);
    }
}

// P[kp * GH_NP + c] = weight row c's pairs, c < GH_NP (rows c >= nvalid are 0): a panel of F16 or BF16 rows (ws
// bytes apart).
PERI_INLINE void gh_pack(int wt, uint32_t *P, const char *w, size_t ws, int nvalid, int64_t k0, int64_t kc) {
    for (int c0 = 0; c0 < GH_NP; c0 += 16)
        gh_pairs(wt, P + c0, GH_NP, 0xffff, w + (size_t)c0 * ws, ws, nvalid - c0, k0, kc);
}

// xp[t][kp * GH_MR + r] = x row (12t + r)'s pairs for the rows of a block (nr of them, lx halves apart): 12 of the
// transpose's 16 lanes stored.
static void gh_pack_x(uint32_t *xp, const uint16_t *x, int64_t lx, int nr, int64_t k0, int64_t kc) {
    const int64_t kpc = (kc + 1) / 2;
    for (int t = 0; t * GH_MR < nr; t++)
        gh_pairs(PERI_TYPE_F16, xp + (size_t)t * (size_t)(kpc * GH_MR), GH_MR, 0x0fff,
                 (const char *)(x + (int64_t)t * GH_MR * lx), (size_t)lx * sizeof(uint16_t), nr - t * GH_MR, k0, kc);
}

// The 16 row sums of a32[r][v]: even lanes (k even) plus odd lanes, rows in order.
PERI_INLINE __m512 gh_rows(const __m512 lo, const __m512 hi) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_add_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
}

// sum_k x[k] w[k] over kc values in float32 (x F16, w F16 or BF16 as stored, both widened exactly): a chunk's
// outputs again where the half sums left F16's range.
static float gh_dot_f32(int wt, const uint16_t *x, const uint16_t *w, int64_t kc) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k += 16) {
        const __mmask16 m = kc - k < 16 ? (__mmask16)((1u << (kc - k)) - 1) : (__mmask16)0xffff;
        const __m256i wh = _mm256_maskz_loadu_epi16(m, w + k);
        const __m512 wf = wt == PERI_TYPE_F16 ? _mm512_cvtph_ps(wh)
                                              : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(wh), 16));
        s = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + k)), wf, s);
    }
    return _mm512_reduce_add_ps(s);
}

// y[i0 + r][j0 + c] (=, plus bias, when first; else +=) the tile's sums for this chunk, r < mr, c < nc.
static void gh_store(int wt, float *y, int64_t ldy, int mr, int nc, gh_acc a32, const float *bias, int first,
                     const uint16_t *x, int64_t lx, const char *w, size_t ws, int64_t k0, int64_t kc) {
    for (int v = 0; v < GH_NV; v++) {
        const int c0 = v * 16, cn = nc - c0 < 16 ? nc - c0 : 16;
        if (cn <= 0) break;
        const __mmask16 m = (__mmask16)((1u << cn) - 1);
        const __m512 bv = first && bias ? _mm512_maskz_loadu_ps(m, bias + c0) : _mm512_setzero_ps();
        for (int r = 0; r < mr; r++) {
            __m512 s = gh_rows(a32[r][v][0], a32[r][v][1]);
            // not finite: QNaN (0x01), +inf (0x08), -inf (0x10), SNaN (0x80)
            if (_mm512_mask_fpclass_ps_mask(m, s, 0x99)) {
                _Alignas(64) float t[16];
                for (int c = 0; c < cn; c++)
                    t[c] = gh_dot_f32(wt, x + r * lx + k0, (const uint16_t *)(w + (size_t)(c0 + c) * ws) + k0, kc);
                s = _mm512_maskz_load_ps(m, t);
            }
            float *yr = y + r * ldy + c0;
            _mm512_mask_storeu_ps(yr, m, _mm512_add_ps(s, first ? bv : _mm512_maskz_loadu_ps(m, yr)));
        }
    }
}

// y = x W^T: x n rows of F16 (xs bytes apart), W m rows of F16 or BF16 (ws bytes apart), K values each. Blocks of GH_IB
// x rows against blocks of GH_JB weight rows, whose y block (192 KB) stays in L2 while the chunks of K pass: each
// chunk's x rows are packed once and every weight panel of the block meets them.
PERI_INLINE void gh_mm(int wt, float *y, int64_t ldy, const void *xv, size_t xs, const void *wv, size_t ws, int64_t K,
                       int64_t m, int64_t n, const float *bias) {
    const uint16_t *x = xv;
    const char *w = wv;
    const int64_t lx = (int64_t)(xs / sizeof(uint16_t));
    _Alignas(64) uint32_t P[GH_KC / 2 * GH_NP];
    _Alignas(64) uint32_t xp[GH_IB * GH_KC / 2];
    gh_acc a32;
    const int64_t nchunk = (K + GH_KC - 1) / GH_KC;
    int64_t kcmax = (K + nchunk - 1) / nchunk; // equal chunks, each an even count but perhaps the last
    kcmax += kcmax & 1;
    for (int64_t ib = 0; ib < n; ib += GH_IB) {
        const int nr = (int)(n - ib < GH_IB ? n - ib : GH_IB);
        for (int64_t jb = 0; jb < m; jb += GH_JB) {
            const int64_t je = m - jb < GH_JB ? m : jb + GH_JB;
            for (int64_t k0 = 0; k0 < K; k0 += kcmax) {
                const int64_t kc = K - k0 < kcmax ? K - k0 : kcmax, kpc = (kc + 1) / 2;
                gh_pack_x(xp, x + ib * lx, lx, nr, k0, kc);
                for (int64_t j0 = jb; j0 < je; j0 += GH_NP) {
                    const int nc = (int)(je - j0 < GH_NP ? je - j0 : GH_NP);
                    gh_pack(wt, P, w + (size_t)j0 * ws, ws, nc, k0, kc);
                    for (int i = 0; i < nr; i += GH_MR) {
                        const int mr = nr - i < GH_MR ? nr - i : GH_MR;
                        gh_tile_any(mr, xp + (size_t)(i / GH_MR) * (size_t)(kpc * GH_MR), P, kc / 2, (int)(kc & 1),
                                    a32);
                        gh_store(wt, y + (ib + i) * ldy + j0, ldy, mr, nc, a32, bias ? bias + j0 : NULL, k0 == 0,
                                 x + (ib + i) * lx, lx, w + (size_t)j0 * ws, ws, k0, kc);
                    }
                }
            }
        }
    }
}

static void gh_mm_f16(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                      int64_t n, const float *bias) {
    gh_mm(PERI_TYPE_F16, y, ldy, x, xs, w, ws, K, m, n, bias);
}
static void gh_mm_bf16(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K, int64_t m,
                       int64_t n, const float *bias) {
    gh_mm(PERI_TYPE_BF16, y, ldy, x, xs, w, ws, K, m, n, bias);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const struct peri_mm_kernel peri_mm_avx512fp16[PERI_TYPE_COUNT] = {
    [PERI_TYPE_F16] = {gh_mm_f16, PERI_TYPE_F16, GH_MIN_N},
    [PERI_TYPE_BF16] = {gh_mm_bf16, PERI_TYPE_F16, GH_MIN_N},
};

#else
typedef int peri_avx512fp16_unused; // ISO C wants a non-empty translation unit
#endif
