// AMX-BF16 tile products of float rows with F16 rows at float32 accuracy: the latent attention's scores
// (peri_attn_scores: queries against F16 cache rows) and mixes (peri_matmul_nn with F16 C: probabilities times cache
// rows). One tdpbf16ps makes 8192 products (16 x 16 sums of 32), where an AVX-512 FMA makes 16; PLM's decode at depth
// spends most of its attention time in these two (docs/kernels.md, "AMX-BF16 attention at float32 accuracy").
//
// Arithmetic. A bf16 has 8 significant bits, an F16 11, a float 24, so each operand is split into bf16 parts whose
// sum is the value: an F16 value v = v_h + v_l exactly (v_h: v truncated to 8 bits; v - v_h has at most 3 bits); a
// float x = x_h + x_m + x_l (each the rest rounded to 8 bits: 24 bits kept, so exact up to bf16's shorter subnormal
// range). The tile products multiply bf16 pairs exactly into float32 sums (round to nearest even, denormals flushed),
// and the five products x_h v_h + x_h v_l + x_m v_h + x_m v_l + x_l v_h leave out only x_l v_l, below 2^-23 of x v: the
// result is a float32 sum of exact products, as the FMA kernels give, in another order. The splits are the cost (a key
// row's 576 values take about 10 vector instructions per 32), so each is made once: the keys' per row, the queries'
// per call, and the next rows' while the tile unit multiplies the current ones (the instructions interleaved).
#include "kernels/kernels_impl.h"

#if PERI_HAVE_AMX
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(                                                                                        \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,fma,f16c,amx-tile,amx-bf16"))),  \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,fma,f16c,amx-tile,amx-bf16")
#endif

#include "kernels/arch/x86/transpose16.inc"

#include "kernels/arch/x86/amx_cfg.inc"
#include "kernels/arch/x86/mask16.inc"

// All 8 tiles 16 rows of 64 bytes (16 floats, or 16 pairs of bf16).
static void ab_config(void) {
    struct peri_amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.rows[t] = 16, c.colsb[t] = 64;
    _tile_loadconfig(&c);
}

// vpermt2b indices: the high 2 bytes of each of a's 16 dwords, then of b's (bit 6 picks b).
static const uint8_t ab_hi_idx[64] = {
    2,  3,  6,  7,  10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31, 34, 35, 38, 39, 42, 43,
    46, 47, 50, 51, 54, 55, 58, 59, 62, 63, 66, 67, 70, 71, 74, 75, 78, 79, 82, 83, 86, 87, 90, 91,
    94, 95, 98, 99, 102, 103, 106, 107, 110, 111, 114, 115, 118, 119, 122, 123, 126, 127,
};

// The bf16 of a's then b's 16 floats, each with its low 16 bits zero (so exactly): their high halves.
PERI_INLINE __m512i ab_pack(__m512i idx, __m512 a, __m512 b) {
    return _mm512_permutex2var_epi8(_mm512_castps_si512(a), idx, _mm512_castps_si512(b));
}

// x truncated to its first 8 significant bits (the low 16 bits of the float cleared).
PERI_INLINE __m512 ab_trunc(__m512 x) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0xFFFF0000)));
}

// x rounded to its first 8 significant bits (to nearest, ties away from zero), low 16 bits zero.
PERI_INLINE __m512 ab_round(__m512 x) {
    const __m512i b = _mm512_add_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x8000));
    return _mm512_castsi512_ps(_mm512_and_si512(b, _mm512_set1_epi32((int)0xFFFF0000)));
}

// 32 floats x0 | x1 split in three: h, m, l as bf16 rows of 32 (x = h + m + l).
PERI_INLINE void ab_split3(__m512i idx, __m512 x0, __m512 x1, __m512i *h, __m512i *m, __m512i *l) {
    const __m512 h0 = ab_round(x0), h1 = ab_round(x1);
    const __m512 r0 = _mm512_sub_ps(x0, h0), r1 = _mm512_sub_ps(x1, h1);
    const __m512 m0 = ab_round(r0), m1 = ab_round(r1);
    *h = ab_pack(idx, h0, h1);
    *m = ab_pack(idx, m0, m1);
    *l = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(r1, m1), _mm512_sub_ps(r0, m0));
}


// ---- scores: s = q K^T, 16 queries against F16 key rows ----

#define AB_BLOCKS 20   // blocks of 32 values of D per pass (640; PLM's 576 in one)
#define AB_STEP 32     // keys per step: two 16-row tiles against each loaded query tile
// Bytes ahead of the key values being split that are prefetched, a line per line split. The hardware prefetcher does
// not run ahead of a stream read in bursts between arithmetic here (docs/kernels.md, "AMX-BF16 attention"); 2-6 KB
// ahead made a cold chunk's scores and mix 12% faster in a harness, 0 -> 2% in PLM-1.8B decode at depth.
#define AB_PF 2048

// The h and l bf16 rows of key rows r0 .. r1 - 1 of a step from key j0 (rows past nk zero), values d0 .. d0 + dc - 1
// padded with zeros to nb blocks, into kh / kl (rows nb * 32 apart).
PERI_INLINE void ab_key_rows(__m512i idx, uint16_t *kh, uint16_t *kl, const char *k, size_t krs, int64_t j0, int r0,
                             int r1, int64_t nk, int64_t d0, int64_t dc, int nb) {
    const size_t rl = (size_t)nb * 32;
    for (int r = r0; r < r1; r++) {
        uint16_t *h = kh + (size_t)r * rl, *l = kl + (size_t)r * rl;
        if (j0 + r >= nk) {
            memset(h, 0, rl * 2), memset(l, 0, rl * 2);
            continue;
        }
        const uint16_t *kr = (const uint16_t *)(k + (size_t)(j0 + r) * krs) + d0;
        const size_t pf = (size_t)(j0 + r) * krs + (size_t)d0 * 2 + AB_PF, end = (size_t)nk * krs;
        for (int64_t e = 0; e < dc; e += 32) {
            if (pf + 2 * (size_t)e < end) _mm_prefetch(k + pf + 2 * (size_t)e, _MM_HINT_T0);
            __m512 x0, x1;
            if (dc - e >= 32) {
                x0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kr + e)));
                x1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kr + e + 16)));
            } else {
                x0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_lanes16(dc - e), kr + e));
                x1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_lanes16(dc - e - 16), kr + e + 16));
            }
            const __m512 h0 = ab_trunc(x0), h1 = ab_trunc(x1);
            _mm512_store_si512(h + e, ab_pack(idx, h0, h1));
            _mm512_store_si512(l + e, ab_pack(idx, _mm512_sub_ps(x0, h0), _mm512_sub_ps(x1, h1)));
        }
    }
}

// The five tile products of key tiles 5-6 (h, l) and query tiles 2-4 (h, m, l) into accumulator tile T (tile numbers
// are immediates).
#define AB_SCORE5(T)                                                                                           \
    do {                                                                                                       \
        _tile_dpbf16ps(T, 5, 2);                                                                               \
        _tile_dpbf16ps(T, 5, 3);                                                                               \
        _tile_dpbf16ps(T, 5, 4);                                                                               \
        _tile_dpbf16ps(T, 6, 2);                                                                               \
        _tile_dpbf16ps(T, 6, 3);                                                                               \
    } while (0)

// peri_attn_scores' contract for nq <= 16 queries and F16 keys (others: the AVX-512 kernel).
void peri_amx_attn_scores(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                          size_t krs, int64_t nk, int64_t D) {
    if (ktype != PERI_TYPE_F16 || nk < 32) {   // (16 keys: the FMA kernel was 3.5 us, this one 4.9)
        peri_kset_avx512.attn_scores(s, lds, q, ldq, nq, ktype, k, krs, nk, D);
        return;
    }
    // B tiles of the queries: [block][pair of values][query], the h, m and l parts (60 KB)
    _Alignas(64) uint32_t qp[3][AB_BLOCKS][16][16];
    // the h and l rows of a step's keys, two steps (the one multiplied, the next one being split): 160 KB
    _Alignas(64) uint16_t kb[2][2][AB_STEP * AB_BLOCKS * 32];
    _Alignas(64) float cb[2][16][16];
    const __m512i idx = _mm512_loadu_si512(ab_hi_idx);
    const int64_t ns = (nk + AB_STEP - 1) / AB_STEP;
    ab_config();
    for (int64_t d0 = 0; d0 < D; d0 += AB_BLOCKS * 32) {
        const int64_t dc = D - d0 < AB_BLOCKS * 32 ? D - d0 : AB_BLOCKS * 32;
        const int nb = (int)((dc + 31) / 32);
        const size_t rl = (size_t)nb * 32;
        for (int b = 0; b < nb; b++) {
            const int64_t e = (int64_t)b * 32;
            __m512 t[3][16];
            for (int i = 0; i < 16; i++) {
                if (i >= nq) {
                    t[0][i] = t[1][i] = t[2][i] = _mm512_setzero_ps();
                    continue;
                }
                const float *qr = q + i * ldq + d0 + e;
                __m512i h, m, l;
                ab_split3(idx, _mm512_maskz_loadu_ps(first_lanes16(dc - e), qr), _mm512_maskz_loadu_ps(first_lanes16(dc - e - 16), qr + 16),
                          &h, &m, &l);
                t[0][i] = _mm512_castsi512_ps(h), t[1][i] = _mm512_castsi512_ps(m), t[2][i] = _mm512_castsi512_ps(l);
            }
            for (int p = 0; p < 3; p++) {   // [query][pair] -> [pair][query]
                transpose16(t[p]);
                for (int r = 0; r < 16; r++) _mm512_store_ps(qp[p][b][r], t[p][r]);
            }
        }
        ab_key_rows(idx, kb[0][0], kb[0][1], (const char *)k, krs, 0, 0, AB_STEP, nk, d0, dc, nb);
        for (int64_t st = 0; st < ns; st++) {
            const uint16_t *kh = kb[st & 1][0], *kl = kb[st & 1][1];
            uint16_t *nh = kb[(st + 1) & 1][0], *nl = kb[(st + 1) & 1][1];
            const int64_t j0 = st * AB_STEP;
            _tile_zero(0);
            _tile_zero(1);
            for (int b = 0; b < nb; b++) {
                _tile_loadd(2, qp[0][b], 64);
                _tile_loadd(3, qp[1][b], 64);
                _tile_loadd(4, qp[2][b], 64);
                for (int g = 0; g < 2; g++) {   // keys 16 g .. 16 g + 15 of the step into tile g
                    _tile_loadd(5, kh + (size_t)(16 * g) * rl + 32 * b, (long)(rl * 2));
                    _tile_loadd(6, kl + (size_t)(16 * g) * rl + 32 * b, (long)(rl * 2));
                    if (g == 0) AB_SCORE5(0);
                    else AB_SCORE5(1);
                }
                // meanwhile: this block's share of the next step's rows split
                if (st + 1 < ns)
                    ab_key_rows(idx, nh, nl, (const char *)k, krs, j0 + AB_STEP, b * AB_STEP / nb,
                                (b + 1) * AB_STEP / nb, nk, d0, dc, nb);
            }
            _tile_stored(0, cb[0], 64);
            _tile_stored(1, cb[1], 64);
            for (int g = 0; g < 2; g++) {
                const int64_t jg = j0 + 16 * g;
                if (jg >= nk) break;
                const __mmask16 mk = first_lanes16(nk - jg);
                __m512 r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_load_ps(cb[g][i]);
                transpose16(r);   // [key][query] -> [query][key]
                for (int i = 0; i < nq; i++) {
                    float *o = s + i * lds + jg;
                    if (d0) r[i] = _mm512_add_ps(r[i], _mm512_maskz_loadu_ps(mk, o));
                    _mm512_mask_storeu_ps(o, mk, r[i]);
                }
            }
        }
    }
    _tile_release();
}
#undef AB_SCORE5

// ---- mixes: y = x C, x float rows, C F16 rows ----

#define AB_XK 512   // x values per pass (C rows)
#define AB_MIN_N 8  // fewer x rows: the AVX-512 kernel (the tiles' 16 rows would be mostly padding)
#define AB_XB 4     // blocks of 16 x rows sharing each split of C

// B tiles of C rows k .. k + 31 (rows past K zero) and columns j .. j + 16 nt - 1 (past m zero): per tile t,
// [pair p][column] = (C[k + 2p][col], C[k + 2p + 1][col]) as the h and l bf16 of an F16 value.
PERI_INLINE void ab_c_tiles(uint32_t (*bh)[16][16], uint32_t (*bl)[16][16], const char *c, size_t cs, int64_t k,
                            int64_t K, int64_t j, int64_t m, int nt) {
    for (int p = 0; p < 16; p++) {
        const int64_t k0 = k + 2 * p, k1 = k0 + 1;   // rows past K are zero, not read
        const uint16_t *r0 = k0 < K ? (const uint16_t *)(c + (size_t)k0 * cs) : NULL;
        const uint16_t *r1 = k1 < K ? (const uint16_t *)(c + (size_t)k1 * cs) : NULL;
        for (int t = 0; t < nt; t++) {
            const int64_t jc = j + 16 * t;
            const __mmask16 mk = first_lanes16(m - jc);
            const __m512 a = r0 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, r0 + jc)) : _mm512_setzero_ps();
            const __m512 b = r1 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, r1 + jc)) : _mm512_setzero_ps();
            const __m512 ah = ab_trunc(a), bh_ = ab_trunc(b);
            const __m512i al = _mm512_castps_si512(_mm512_sub_ps(a, ah)), blo = _mm512_castps_si512(_mm512_sub_ps(b, bh_));
            // (b's bf16 << 16) | a's bf16: b keeps its high half, a's moves down (both low halves are zero)
            _mm512_store_si512(bh[t][p], _mm512_or_si512(_mm512_castps_si512(bh_), _mm512_srli_epi32(_mm512_castps_si512(ah), 16)));
            _mm512_store_si512(bl[t][p], _mm512_or_si512(blo, _mm512_srli_epi32(al, 16)));
        }
    }
}

// The five tile products of x tiles 3-5 (h, m, l) and C tiles 6-7 (h, l) into accumulator tile T.
#define AB_MIX5(T)                                                                                             \
    do {                                                                                                       \
        _tile_dpbf16ps(T, 3, 6);                                                                               \
        _tile_dpbf16ps(T, 3, 7);                                                                               \
        _tile_dpbf16ps(T, 4, 6);                                                                               \
        _tile_dpbf16ps(T, 4, 7);                                                                               \
        _tile_dpbf16ps(T, 5, 6);                                                                               \
    } while (0)

// peri_matmul_nn's contract for F16 C (fewer than AB_MIN_N x rows: the AVX-512 kernel). x rows go in blocks of 16
// (a tile's rows), up to AB_XB blocks at a time: their parts are split once per pass over K, and each column group's
// C tiles once for all of them (the first block's products run while they are split, the others reuse them).
void peri_amx_mm_f16_nn(float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, size_t cs, int64_t K,
                        int64_t m, int64_t n) {
    if (n < AB_MIN_N) {
        peri_kset_avx512.mm_nn[PERI_TYPE_F16](y, ldy, x, ldx, c, cs, K, m, n);
        return;
    }
    _Alignas(64) uint16_t xp[AB_XB][3][16][AB_XK];                 // the rows' h, m, l parts (192 KB)
    // C tiles h, l of a pass's steps, 3 columns (96 KB; one block of x rows: two steps, the current and the next)
    _Alignas(64) uint32_t bt[AB_XK / 32][2][3][16][16];
    _Alignas(64) float cb[16][16];
    const __m512i idx = _mm512_loadu_si512(ab_hi_idx);
    ab_config();
    for (int64_t i0 = 0; i0 < n; i0 += 16 * AB_XB) {
        const int nrb = (int)((n - i0 + 15) / 16 < AB_XB ? (n - i0 + 15) / 16 : AB_XB);
        for (int64_t k0 = 0; k0 < K; k0 += AB_XK) {
            const int64_t kc = K - k0 < AB_XK ? K - k0 : AB_XK, nst = (kc + 31) / 32;
            for (int rb = 0; rb < nrb; rb++)
                for (int i = 0; i < 16; i++)
                    for (int64_t e = 0; e < nst * 32; e += 32) {
                        __m512i h = _mm512_setzero_si512(), mm = h, l = h;
                        const int64_t row = i0 + 16 * rb + i;
                        if (row < n) {
                            const float *xr = x + row * ldx + k0 + e;
                            ab_split3(idx, _mm512_maskz_loadu_ps(first_lanes16(kc - e), xr),
                                      _mm512_maskz_loadu_ps(first_lanes16(kc - e - 16), xr + 16), &h, &mm, &l);
                        }
                        _mm512_store_si512(&xp[rb][0][i][e], h);
                        _mm512_store_si512(&xp[rb][1][i][e], mm);
                        _mm512_store_si512(&xp[rb][2][i][e], l);
                    }
            const char *cr = (const char *)c + (size_t)k0 * cs;
            for (int64_t j = 0; j < m; j += 48) {
                const int nt = m - j >= 48 ? 3 : (int)((m - j + 15) / 16);
                for (int rb = 0; rb < nrb; rb++) {
                    _tile_zero(0);   // (tile numbers are immediates)
                    _tile_zero(1);
                    _tile_zero(2);
                    if (rb == 0) ab_c_tiles(bt[0][0], bt[0][1], cr, cs, 0, kc, j, m, nt);
                    for (int64_t st = 0; st < nst; st++) {
                        const int64_t b = nrb > 1 ? st : st & 1, bn = nrb > 1 ? st + 1 : (st + 1) & 1;
                        _tile_loadd(3, &xp[rb][0][0][st * 32], AB_XK * 2);
                        _tile_loadd(4, &xp[rb][1][0][st * 32], AB_XK * 2);
                        _tile_loadd(5, &xp[rb][2][0][st * 32], AB_XK * 2);
                        _tile_loadd(6, bt[b][0][0], 64);
                        _tile_loadd(7, bt[b][1][0], 64);
                        AB_MIX5(0);
                        if (nt > 1) {
                            _tile_loadd(6, bt[b][0][1], 64);
                            _tile_loadd(7, bt[b][1][1], 64);
                            AB_MIX5(1);
                        }
                        if (nt > 2) {
                            _tile_loadd(6, bt[b][0][2], 64);
                            _tile_loadd(7, bt[b][1][2], 64);
                            AB_MIX5(2);
                        }
                        if (rb == 0 && st + 1 < nst)   // the next step's C rows split while these products run
                            ab_c_tiles(bt[bn][0], bt[bn][1], cr, cs, (st + 1) * 32, kc, j, m, nt);
                    }
                    const int rv = n - (i0 + 16 * rb) < 16 ? (int)(n - (i0 + 16 * rb)) : 16;
                    for (int t = 0; t < nt; t++) {
                        if (t == 0) _tile_stored(0, cb, 64);
                        else if (t == 1) _tile_stored(1, cb, 64);
                        else _tile_stored(2, cb, 64);
                        const __mmask16 mk = first_lanes16(m - j - 16 * t);
                        for (int i = 0; i < rv; i++) {
                            float *o = y + (i0 + 16 * rb + i) * ldy + j + 16 * t;
                            __m512 v = _mm512_load_ps(cb[i]);
                            if (k0) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o));
                            _mm512_mask_storeu_ps(o, mk, v);
                        }
                    }
                }
            }
        }
    }
    _tile_release();
}
#undef AB_MIX5

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
typedef int peri_avx512amx_bf16_unused; // ISO C wants a non-empty translation unit
#endif
