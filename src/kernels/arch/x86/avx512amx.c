// AMX-INT8 prefill GEMM for Q8_0, Q4_0 (and its Q4_0_X16 rows), Q4_K and Q6_K weights: one tdpbssd multiplies a
// 16 x 32 tile of x codes by a 32 x 16 tile of weight codes into 16 x 16 int32 sums, 8192 products, where vpdpbusd
// makes 64. dispatch.c lays these entries over a copy of the avx512fp16 set to form the "avx512amx" level, offered
// where the CPU has AMX-TILE and AMX-INT8, the OS saves the tile state, and Linux grants the process its use
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once at the first kernel call); x86-64 Linux only.
//
// Arithmetic. The weights are packed as the vpdpbusd GEMM packs them (qpack_avx512.inc: 32 rows over 256 values,
// [step of 4 values][row][4 bytes], which is AMX's B layout with a 128-byte stride), but with signed codes (q, nibble
// - 8, q6 - 32; Q4_K's nibbles stay unsigned and take tdpbsud), so each group of 32 (Q6_K: 16) values is one tile
// product with nothing to correct. x rows need no packing: a tile loads 16 rows' codes of one group straight from
// the Q8_0 / Q8_K rows, xs bytes apart. Each group's int32 tile is stored and scaled with AVX-512 into float sums in
// the order of qgemm_vnni.inc's gb_tile (the group's sum times (d_w d_x), added into a per-chunk float sum that is
// added into y once per chunk), so the results are the vpdpbusd GEMM's to the bit; the integer sums are exact.
// That scaling, 3 vector instructions per 16 sums per group, is the bound here, not the tile products.
#include "kernels/kernels_impl.h"

#if PERI_HAVE_AMX
#include "tensor/quants.h"
#include "tensor/repack.h"

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(                                                                                        \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8"))),        \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8")
#endif

#define QMM_VNNI 1
#include "kernels/arch/x86/qmm_x86.inc" // q_k4_scales for the panel packer
#define GB_VNNI 1
#include "kernels/arch/x86/qpack_avx512.inc"

#define AX_XB 512   // x rows per block (their sums: 64 KB of stack)
#define AX_KS 1024  // values per pass: 4 panels of 256 (44 KB of stack)
// Below this many x rows the avx512vnni entry (its vpdpbusd GEMM or row kernels) is used. 2 threads, K = 2048,
// M = 8192 (test_kernels --bench), AMX against vpdpbusd: Q8_0 1.17x at 8 rows, 1.66x at 16, 1.7x at 512; Q4_0 0.78x
// at 8, 1.23x at 16 (Q4_0_X16 0.87x at 8, 1.0x at 12); Q4_K 1.06x at 32, 1.13x at 64, 1.43x at 512; Q6_K (tile
// products of 16 values) 1.0x at 32 and 64, 1.12x at 512. Packing, shared by fewer x rows, is what costs at few rows.
PERI_INLINE int ax_min_n(int wt) {
    return wt == PERI_TYPE_Q8_0 ? 8 : wt == PERI_TYPE_Q4_0 || wt == PERI_TYPE_Q4_0_X16 ? 16 : 32;
}

#include "kernels/arch/x86/amx_cfg.inc"

// Tiles 0, 1: 16 x rows by one group of G codes; 2, 3: 16 rows of the panel for that group (G / 4 steps of 4 codes, 64
// bytes each); 4, 5: their int32 sums; the first of each pair for even groups, the second for odd ones.
static void ax_config(int G) {
    struct peri_amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 2; t++) c.rows[t] = 16, c.colsb[t] = (uint16_t)G;
    for (int t = 2; t < 4; t++) c.rows[t] = (uint8_t)(G / 4), c.colsb[t] = 64;
    for (int t = 4; t < 6; t++) c.rows[t] = 16, c.colsb[t] = 64;
    _tile_loadconfig(&c);
}

// The x scales of rows 0 .. rv - 1 (rv <= 16, xs bytes apart from xr) at value k, gathered: d[r] (Q8_0: the block's;
// Q8_K: the super-block's) and for Q4_K e[r] = d * Σ x of the 32-value sub-block (from bsums). Rows past rv get 0.
PERI_INLINE void ax_xscales(int wt, const char *xr, size_t xs, int rv, int64_t k, float *d, float *e) {
    const __m512i idx = gb_rows_index(xs);
    const __mmask16 mk = first_lanes16(rv);
    if (gb_q8_0_x(wt)) {
        const char *b = xr + (size_t)(k / 32) * sizeof(block_q8_0);
        __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mk, idx, b, 1);
        _mm512_store_ps(d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)));
        return;
    }
    const char *sb = xr + (size_t)(k / QK_K) * sizeof(block_q8_K);
    const __m512 dv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, sb + offsetof(block_q8_K, d), 1);
    _mm512_store_ps(d, dv);
    if (wt == PERI_TYPE_Q4_K) {
        const size_t j = (size_t)(k % QK_K) / 32;
        const char *bs = sb + offsetof(block_q8_K, bsums) + 4 * j;
        __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mk, idx, bs, 1);
        __m512i sum = _mm512_add_epi32(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16), _mm512_srai_epi32(v, 16));
        _mm512_store_ps(e, _mm512_mul_ps(dv, _mm512_cvtepi32_ps(sum)));
    }
}

// acc[r] += the 16 int32 sums c[r] of one group times (d_w d_x[r]) (d_w first, as the references scale each block
// sum); Q4_K: minus the mins' part.
PERI_INLINE void ax_scale(int wt, __m512 acc[16], const int32_t (*c)[16], __m512 f, const float *d, __m512 mn,
                          const float *e) {
    PERI_UNROLL for (int r = 0; r < 16; r++) {
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[r])), _mm512_mul_ps(f, _mm512_set1_ps(d[r])),
                                 acc[r]);
        if (wt == PERI_TYPE_Q4_K) acc[r] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(e[r]), acc[r]);
    }
}

// Group g's tile product into C: tiles TA (16 x rows) and TB (16 weight rows) loaded, C = TA TB.
#define AX_ISSUE(TA, TB, TC, g)                                                                                \
    do {                                                                                                       \
        const int64_t k_ = (int64_t)(g) * G;                                                                   \
        if (pad) _tile_loadd(TA, pad + k_, AX_KS);                                                             \
        else _tile_loadd(TA, gb_xcodes(wt, xr, k0 + k_), (long)xs);                                            \
        _tile_loadd(TB, P[k_ / GB_KC].codes + (size_t)(k_ % GB_KC / 4) * (GB_ROWS * 4) + 64 * h, GB_ROWS * 4);  \
        _tile_zero(TC);                                                                                        \
        if (wt == PERI_TYPE_Q4_K) _tile_dpbsud(TC, TA, TB); /* x signed, weights unsigned */                   \
        else _tile_dpbssd(TC, TA, TB);                                                                         \
    } while (0)

// x rows 0 .. rv - 1 (rv <= 16; xr, xs bytes apart) against half h (16 rows) of the panels P over the ng groups of G
// values from value k0, into tot's 16 columns of those rows. Each chunk of 256 values is added into tot by itself
// (first, for the chunk at value 0: tot = bias + its sums), as the vpdpbusd GEMM adds each chunk into y. pad: NULL,
// or the rows' codes from k0 in a zero-padded copy (rows AX_KS bytes apart) for a short pass. A group's sums are
// scaled while the next group's tile product runs: reading them back at once waits for the tile store (about 20%
// slower in a probe), and so does the last group of a pass, which is why passes span several chunks. d, e: the rows'
// scales per group (ax_xscales), gathered by half 0 and read by half 1 (the gathers took about 15% of the time).
PERI_INLINE void ax_pass(int wt, int G, const struct gb_panel *P, int h, const char *xr, size_t xs, int64_t k0, int rv,
                         const int8_t *pad, int64_t ng, float (*tot)[GB_ROWS], const float *bias, __mmask16 mk,
                         float (*d)[16], float (*e)[16]) {
    _Alignas(64) int32_t c[2][16][16];
    const int64_t gpc = GB_KC / G; // groups per chunk
    __m512 acc[16];
    PERI_UNROLL for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    // even groups in tiles 0, 2 -> 4, odd ones in 1, 3 -> 5: group g + 1's product is under way while g's is stored
    // and g - 1's scaled
    if (ng > 0) AX_ISSUE(0, 2, 4, 0);
    for (int64_t g = 0; g <= ng; g++) {
        if (g < ng) {
            if (g + 1 < ng) {
                if (g & 1) AX_ISSUE(0, 2, 4, g + 1);
                else AX_ISSUE(1, 3, 5, g + 1);
            }
            if (g & 1) _tile_stored(5, c[1], 64);
            else _tile_stored(4, c[0], 64);
            if (!h) ax_xscales(wt, xr, xs, rv, k0 + g * G, d[g], e[g]);
        }
        if (!g) continue;
        const int64_t p = g - 1;
        const struct gb_panel *Pp = &P[p / gpc];
        const int64_t q = p % gpc;
        ax_scale(wt, acc, (const int32_t(*)[16])c[p & 1], _mm512_load_ps(Pp->s[q] + 16 * h), d[p],
                 wt == PERI_TYPE_Q4_K ? _mm512_load_ps(Pp->mn[q] + 16 * h) : _mm512_setzero_ps(), e[p]);
        if (q == gpc - 1 || p == ng - 1) { // the chunk's sums into tot
            const int first = k0 + p / gpc * GB_KC == 0;
            for (int r = 0; r < rv; r++) {
                float *t = tot[r] + 16 * h;
                __m512 b = _mm512_setzero_ps();
                if (!first) b = _mm512_load_ps(t);
                else if (bias) b = _mm512_maskz_loadu_ps(mk, bias + 16 * h);
                _mm512_store_ps(t, _mm512_add_ps(b, acc[r]));
            }
            PERI_UNROLL for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
        }
    }
}
#undef AX_ISSUE

// A panel from rows r0 .. r0 + mrows - 1 of an mw x K Q8_0_T weight c (tensor/repack.h: per group of 32 inputs the
// rows' F16 scales, then one row of mw codes per input), values k0 .. k0 + kc - 1: the same bytes gb_pack makes of
// those rows in Q8_0 (signed codes), without turning them back into rows first. Per 4 inputs and 16 rows, 4 byte rows
// are interleaved into [row][4 inputs]; rows past mrows are not read (masked loads) and get zero codes and scales.
PERI_INLINE void ax_pack_q8t(struct gb_panel *P, const char *c, int64_t mw, int64_t r0, int mrows, int64_t k0,
                             int64_t kc) {
    const size_t gs = peri_t_group_bytes_of(PERI_T_Q8_0, mw), off = peri_t_codes_offset(PERI_T_Q8_0, mw);
    for (int h = 0; h < 2; h++) {
        const __mmask16 mk = first_lanes16(mrows - 16 * h);
        for (int64_t bb = 0; bb < kc / 32; bb++) {
            const char *grp = c + (size_t)((k0 / 32) + bb) * gs;
            const __m256i d = _mm256_maskz_loadu_epi16(mk, grp + 2 * (size_t)(r0 + 16 * h));
            _mm512_store_ps(&P->s[bb][16 * h], _mm512_cvtph_ps(d));
            const char *q = grp + off + (size_t)(r0 + 16 * h);
            for (int t = 0; t < 8; t++) {
                const char *qt = q + (size_t)(4 * t) * (size_t)mw;
                const __m128i a = _mm_maskz_loadu_epi8(mk, qt), b = _mm_maskz_loadu_epi8(mk, qt + mw);
                const __m128i e = _mm_maskz_loadu_epi8(mk, qt + 2 * mw), f = _mm_maskz_loadu_epi8(mk, qt + 3 * mw);
                const __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
                const __m128i ef0 = _mm_unpacklo_epi8(e, f), ef1 = _mm_unpackhi_epi8(e, f);
                uint8_t *dst = P->codes + (size_t)(8 * bb + t) * (GB_ROWS * 4) + 64 * h;
                _mm_store_si128((__m128i *)dst, _mm_unpacklo_epi16(ab0, ef0));
                _mm_store_si128((__m128i *)(dst + 16), _mm_unpackhi_epi16(ab0, ef0));
                _mm_store_si128((__m128i *)(dst + 32), _mm_unpacklo_epi16(ab1, ef1));
                _mm_store_si128((__m128i *)(dst + 48), _mm_unpackhi_epi16(ab1, ef1));
            }
        }
    }
}

// y[i][j] = dot(x row i, w row j) + bias[j] for i < n, j < m; x quantized (Q8_0 or Q8_K rows, xs bytes apart). With
// tmw > 0, w is instead an tmw x K Q8_0_T weight and its rows tc0 .. tc0 + m - 1 are the ones multiplied (ws unused).
// Blocks of AX_XB x rows by panels of 32 weight rows carry their sums over K in tot (64 KB), so y is written once:
// writing y per chunk (as the vpdpbusd GEMM does) cost 5% more here, y rows a power of two apart falling into few cache
// sets. A panel is packed once per block of x rows: 512 rows (rather than 256) made Q8_0 and Q4_K 1.07-1.15x as fast.
static void ax_gemm(int wt, float *y, int64_t ldy, const char *x, size_t xs, const char *w, size_t ws, int64_t K,
                    int64_t m, int64_t n, const float *bias, int64_t tmw, int64_t tc0) {
    struct gb_panel P[AX_KS / GB_KC];
    _Alignas(64) float tot[AX_XB][GB_ROWS];
    _Alignas(64) int8_t pad[16 * AX_KS]; // a short pass's x codes, rows past the end zero
    // a pass's x scales per group (and Q4_K's e), gathered by the first half of the panel and read by the second
    _Alignas(64) float d[AX_KS / 16][16], e[AX_KS / 16][16];
    const int G = GB_G(wt);
    ax_config(G);
    for (int64_t ib = 0; ib < n; ib += AX_XB) {
        const int64_t nx = n - ib < AX_XB ? n - ib : AX_XB;
        const char *xb = x + (size_t)ib * xs;
        const int64_t full = nx / 16 * 16;
        const int rest = (int)(nx - full);
        for (int64_t j = 0; j < m; j += GB_ROWS) {
            const int mrows = m - j < GB_ROWS ? (int)(m - j) : GB_ROWS;
            const __mmask16 m0 = first_lanes16(mrows), m1 = first_lanes16(mrows - 16);
            const float *bj = bias ? bias + j : NULL;
            const int halves = mrows > 16 ? 2 : 1;
            for (int64_t k0 = 0; k0 < K; k0 += AX_KS) {
                const int64_t kc = K - k0 < AX_KS ? K - k0 : AX_KS;
                for (int64_t kk = 0; kk < kc; kk += GB_KC) {
                    const int64_t pc = kc - kk < GB_KC ? kc - kk : GB_KC;
                    if (tmw) ax_pack_q8t(&P[kk / GB_KC], w, tmw, tc0 + j, mrows, k0 + kk, pc);
                    else gb_pack(wt, &P[kk / GB_KC], w + (size_t)j * ws, ws, mrows, k0 + kk, pc, 1);
                }
                for (int64_t i = 0; i < full; i += 16)
                    for (int h = 0; h < halves; h++)
                        ax_pass(wt, G, P, h, xb + (size_t)i * xs, xs, k0, 16, NULL, kc / G, tot + i, bj, h ? m1 : m0, d,
                                e);
                if (rest) {
                    memset(pad, 0, sizeof pad);
                    for (int r = 0; r < rest; r++)
                        for (int64_t k = 0; k < kc; k += 32)
                            memcpy(pad + (size_t)r * AX_KS + k, gb_xcodes(wt, xb + (size_t)(full + r) * xs, k0 + k),
                                   32);
                    for (int h = 0; h < halves; h++)
                        ax_pass(wt, G, P, h, xb + (size_t)full * xs, xs, k0, rest, pad, kc / G, tot + full, bj,
                                h ? m1 : m0, d, e);
                }
            }
            for (int64_t i = 0; i < nx; i++) {
                float *yr = y + (ib + i) * ldy + j;
                _mm512_mask_storeu_ps(yr, m0, _mm512_load_ps(tot[i]));
                _mm512_mask_storeu_ps(yr + 16, m1, _mm512_load_ps(tot[i] + 16));
            }
        }
    }
    _tile_release();
}

#define AX_MM(name, wt)                                                                                        \
    static void name(float *y, int64_t ldy, const void *x, size_t xs, const void *w, size_t ws, int64_t K,     \
                     int64_t m, int64_t n, const float *bias) {                                                \
        if (n >= ax_min_n(wt)) ax_gemm(wt, y, ldy, (const char *)x, xs, (const char *)w, ws, K, m, n, bias, 0, 0); \
        else peri_qmm_avx512vnni[wt].fn(y, ldy, x, xs, w, ws, K, m, n, bias);                                  \
    }
AX_MM(ax_q8_0, PERI_TYPE_Q8_0)
AX_MM(ax_q4_0, PERI_TYPE_Q4_0)
AX_MM(ax_q4_0_x16, PERI_TYPE_Q4_0_X16)
AX_MM(ax_q4_K, PERI_TYPE_Q4_K)
AX_MM(ax_q6_K, PERI_TYPE_Q6_K)
#undef AX_MM

void peri_amx_q8t_qmm(float *y, int64_t ldy, const void *xq, size_t xs, const void *c, int64_t mw, int64_t c0,
                      int64_t m, int64_t K, int64_t n) {
    ax_gemm(PERI_TYPE_Q8_0, y, ldy, (const char *)xq, xs, (const char *)c, 0, K, m, n, NULL, mw, c0);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const struct peri_mm_kernel peri_qmm_avx512amx[PERI_TYPE_COUNT] = {
    [PERI_TYPE_Q8_0] = {ax_q8_0, PERI_TYPE_Q8_0},       [PERI_TYPE_Q4_0] = {ax_q4_0, PERI_TYPE_Q8_0},
    [PERI_TYPE_Q4_0_X16] = {ax_q4_0_x16, PERI_TYPE_Q8_0}, [PERI_TYPE_Q4_K] = {ax_q4_K, PERI_TYPE_Q8_K},
    [PERI_TYPE_Q6_K] = {ax_q6_K, PERI_TYPE_Q8_K},
};

#else
typedef int peri_avx512amx_unused; // ISO C wants a non-empty translation unit
#endif
