// Load-time layouts (repack.h): conversions, and the type's reference kernels through Q4_0's.
#include "tensor/repack.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

void peri_repack_q4_0_x16(const void *src, void *dst, int64_t n) {
    const block_q4_0 *s = src;
    block_q4_0_x16 *d = dst;
    for (int64_t g = 0; g < n / QK4_0_X16; g++)
        for (int j = 0; j < 16; j++) {
            d[g].d[j] = s[16 * g + j].d;
            memcpy(d[g].qs + 16 * j, s[16 * g + j].qs, 16);
        }
}

void peri_dequantize_row_q4_0_x16(const void *src, float *y, int64_t n) {
    const block_q4_0_x16 *s = src;
    for (int64_t g = 0; g < n / QK4_0_X16; g++)
        for (int j = 0; j < 16; j++) {
            block_q4_0 b;
            b.d = s[g].d[j];
            memcpy(b.qs, s[g].qs + 16 * j, 16);
            peri_dequantize_row_q4_0(&b, y + g * QK4_0_X16 + j * QK4_0, QK4_0);
        }
}

void peri_quantize_row_q4_0_x16_ref(const float *x, void *dst, int64_t n) {
    for (int64_t g = 0; g < n / QK4_0_X16; g++) {
        block_q4_0 b[16];
        peri_quantize_row_q4_0_ref(x + g * QK4_0_X16, b, QK4_0_X16);
        peri_repack_q4_0_x16(b, (block_q4_0_x16 *)dst + g, QK4_0_X16);
    }
}

PERI_QUANT_DEFINE_DOT(q4_0_x16, QK4_0_X16, block_q4_0_x16)

int peri_repack_type(int type, int64_t row_len) {
    if (type == PERI_TYPE_Q4_0 && row_len > 0 && row_len % QK4_0_X16 == 0) return PERI_TYPE_Q4_0_X16;
    return -1;
}

int peri_repack_rows(int type, void *data, int64_t row_len, int64_t n_rows) {
    if (peri_repack_type(type, row_len) != PERI_TYPE_Q4_0_X16) return PERI_OK;
    size_t rs = peri_row_size(type, row_len);
    void *tmp = malloc(rs);
    if (!tmp) return peri_fail(PERI_E_NOMEM, "repacking weights: cannot allocate one row of %zu bytes", rs);
    for (int64_t r = 0; r < n_rows; r++) {
        char *row = (char *)data + (size_t)r * rs;
        memcpy(tmp, row, rs);
        peri_repack_q4_0_x16(tmp, row, row_len);
    }
    free(tmp);
    return PERI_OK;
}

// Tiles of TB x TB elements through a buffer in L1, each side read or written a whole tile row (64 or 128 bytes) at
// a time: rows a power of two apart map to one cache set, so element-wise strided access thrashes. Elements are
// read with memcpy (plain loads): a file's tensor need not be aligned to its element size.
enum { TB = 32 };
#define TRANSPOSE_TILES(name, T)                                                                                \
    static void name(char *d, const char *s, int64_t rows, int64_t cols, int64_t ld) {                          \
        T buf[TB][TB];                                                                                          \
        for (int64_t r0 = 0; r0 < rows; r0 += TB)                                                               \
            for (int64_t c0 = 0; c0 < cols; c0 += TB) {                                                         \
                const int64_t nr = rows - r0 < TB ? rows - r0 : TB, nc = cols - c0 < TB ? cols - c0 : TB;       \
                for (int64_t i = 0; i < nr; i++) {                                                              \
                    const char *row = s + ((size_t)(r0 + i) * (size_t)ld + (size_t)c0) * sizeof(T);             \
                    for (int64_t j = 0; j < nc; j++) memcpy(&buf[j][i], row + (size_t)j * sizeof(T), sizeof(T)); \
                }                                                                                               \
                for (int64_t j = 0; j < nc; j++)                                                                \
                    memcpy(d + ((size_t)(c0 + j) * (size_t)rows + (size_t)r0) * sizeof(T), buf[j],              \
                           sizeof(T) * (size_t)nr);                                                             \
            }                                                                                                   \
    }
TRANSPOSE_TILES(transpose_tiles16, uint16_t)
TRANSPOSE_TILES(transpose_tiles32, uint32_t)
#undef TRANSPOSE_TILES

// 16 x 16 blocks of bytes transposed with 16-byte vectors (SSE2 is in every x86-64, NEON in every AArch64): 4 rounds
// of interleaving rows i and i + 8 transpose the block. Other targets move the bytes one at a time.
#if defined(__SSE2__)
#include <emmintrin.h>
typedef __m128i v16u8;
#define V16_LOAD(p) _mm_loadu_si128((const __m128i *)(p))
#define V16_STORE(p, v) _mm_storeu_si128((__m128i *)(p), v)
#define V16_ZIPLO(a, b) _mm_unpacklo_epi8(a, b)
#define V16_ZIPHI(a, b) _mm_unpackhi_epi8(a, b)
#elif defined(__aarch64__)
#include <arm_neon.h>
typedef uint8x16_t v16u8;
#define V16_LOAD(p) vld1q_u8((const uint8_t *)(p))
#define V16_STORE(p, v) vst1q_u8((uint8_t *)(p), v)
#define V16_ZIPLO(a, b) vzip1q_u8(a, b)
#define V16_ZIPHI(a, b) vzip2q_u8(a, b)
#endif

#if defined(V16_LOAD)
// r[i] byte c in, r[c] byte i out.
static inline void tr16x16_bytes(v16u8 r[16]) {
    for (int round = 0; round < 4; round++) {
        v16u8 t[16];
        for (int i = 0; i < 8; i++) t[2 * i] = V16_ZIPLO(r[i], r[i + 8]), t[2 * i + 1] = V16_ZIPHI(r[i], r[i + 8]);
        for (int i = 0; i < 16; i++) r[i] = t[i];
    }
}
#endif

// 16 rows at a time: their block g's scales, then its codes 16 x 16 bytes at a time (the last m % 16 rows one byte at
// a time).
static void q8_0_t_from(void *dst, const void *src, int64_t m, int64_t K) {
    const int64_t nb = K / QK8_0;
    const size_t rs = (size_t)nb * sizeof(block_q8_0), gs = peri_t_group_bytes_of(PERI_T_Q8_0, m);
    for (int64_t j0 = 0; j0 < m; j0 += 16) {
        const int64_t jn = m - j0 < 16 ? m - j0 : 16;
        for (int64_t g = 0; g < nb; g++) {
            char *grp = (char *)dst + (size_t)g * gs;
            int8_t *codes = (int8_t *)(grp + peri_t_codes_offset(PERI_T_Q8_0, m)) + j0;
            const block_q8_0 *b = (const block_q8_0 *)((const char *)src + (size_t)j0 * rs) + g;
            for (int64_t j = 0; j < jn; j++)
                memcpy(grp + (size_t)(j0 + j) * sizeof(peri_half), &b[j * nb].d, sizeof(peri_half));
#if defined(V16_LOAD)
            if (jn == 16) {
                for (int ib = 0; ib < QK8_0; ib += 16) {
                    v16u8 r[16];
                    for (int j = 0; j < 16; j++) r[j] = V16_LOAD(b[j * nb].qs + ib);
                    tr16x16_bytes(r);
                    for (int i = 0; i < 16; i++) V16_STORE(codes + (size_t)(ib + i) * (size_t)m, r[i]);
                }
                continue;
            }
#endif
            for (int i = 0; i < QK8_0; i++)
                for (int64_t j = 0; j < jn; j++) codes[(size_t)i * (size_t)m + (size_t)j] = b[j * nb].qs[i];
        }
    }
}

// Per group: each panel row's scale, then its 32 codes (one per code row of the group), 16 x 16 bytes at a time.
static void q8_0_t_rows(void *dst, const void *src, int64_t m, int64_t K, int64_t j0, int64_t rows) {
    const int64_t nb = K / QK8_0;
    const size_t gs = peri_t_group_bytes_of(PERI_T_Q8_0, m);
    block_q8_0 *d = dst;
#if defined(V16_LOAD)
    const int64_t r16 = rows / 16 * 16;
#else
    const int64_t r16 = 0;
#endif
    for (int64_t g = 0; g < nb; g++) {
        const char *grp = (const char *)src + (size_t)g * gs;
        const int8_t *codes = (const int8_t *)(grp + peri_t_codes_offset(PERI_T_Q8_0, m)) + j0;
        for (int64_t j = 0; j < rows; j++)
            memcpy(&d[j * nb + g].d, grp + (size_t)(j0 + j) * sizeof(peri_half), sizeof(peri_half));
#if defined(V16_LOAD)
        for (int64_t jb = 0; jb < r16; jb += 16)
            for (int ib = 0; ib < QK8_0; ib += 16) {
                v16u8 r[16];
                for (int i = 0; i < 16; i++) r[i] = V16_LOAD(codes + (size_t)(ib + i) * (size_t)m + (size_t)jb);
                tr16x16_bytes(r);
                for (int c = 0; c < 16; c++) V16_STORE(d[(jb + c) * nb + g].qs + ib, r[c]);
            }
#endif
        for (int i = 0; i < QK8_0; i++)
            for (int64_t j = r16; j < rows; j++) d[j * nb + g].qs[i] = codes[(size_t)i * (size_t)m + (size_t)j];
    }
}

void peri_transpose_elems(void *dst, const void *src, int64_t rows, int64_t cols, int64_t ld_src, size_t esz) {
    if (esz == 4) transpose_tiles32(dst, src, rows, cols, ld_src);
    else transpose_tiles16(dst, src, rows, cols, ld_src);
}

// ---- Q4_K_T and Q6_K_T ----------------------------------------------------------------------------------------
// Both go through byte tiles of 16 rows x 256 inputs: a block's codes unpacked to one byte each, 16 rows' worth
// combined into the layout's bytes (two nibbles, or four 2-bit values, per byte) and transposed to 256 inputs x 16
// bytes, 16 x 16 at a time; the conversion back undoes each step.

// dst[k * ld + i] = P[i][k] for i < 16, k < 256, and its inverse.
static void tile_out(uint8_t *dst, size_t ld, uint8_t P[16][256]) {
    for (int k0 = 0; k0 < 256; k0 += 16) {
#if defined(V16_LOAD)
        v16u8 r[16];
        for (int i = 0; i < 16; i++) r[i] = V16_LOAD(P[i] + k0);
        tr16x16_bytes(r);
        for (int c = 0; c < 16; c++) V16_STORE(dst + (size_t)(k0 + c) * ld, r[c]);
#else
        for (int c = 0; c < 16; c++)
            for (int i = 0; i < 16; i++) dst[(size_t)(k0 + c) * ld + i] = P[i][k0 + c];
#endif
    }
}
static void tile_in(uint8_t P[16][256], const uint8_t *src, size_t ld) {
    for (int k0 = 0; k0 < 256; k0 += 16) {
#if defined(V16_LOAD)
        v16u8 r[16];
        for (int c = 0; c < 16; c++) r[c] = V16_LOAD(src + (size_t)(k0 + c) * ld);
        tr16x16_bytes(r);
        for (int i = 0; i < 16; i++) V16_STORE(P[i] + k0, r[i]);
#else
        for (int c = 0; c < 16; c++)
            for (int i = 0; i < 16; i++) P[i][k0 + c] = src[(size_t)(k0 + c) * ld + i];
#endif
    }
}

// A Q4_K block's 256 codes, one per byte, and back (qs[32 c + l]: value 64 c + l low, 64 c + 32 + l high).
static void q4_k_codes(const block_q4_K *b, uint8_t q[256]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            q[64 * c + l] = b->qs[32 * c + l] & 15;
            q[64 * c + 32 + l] = b->qs[32 * c + l] >> 4;
        }
}
static void q4_k_pack(block_q4_K *b, const uint8_t q[256]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) b->qs[32 * c + l] = (uint8_t)(q[64 * c + l] | q[64 * c + 32 + l] << 4);
}
// Q6_K: value 128 h + 32 Q + l (Q < 4, l < 32) is ql[64 h + l + 32 (Q & 1)] (nibble Q >> 1) + 16 (qh[32 h + l] >> 2 Q & 3).
static void q6_k_codes(const block_q6_K *b, uint8_t q[256]) {
    for (int h = 0; h < 2; h++)
        for (int Q = 0; Q < 4; Q++)
            for (int l = 0; l < 32; l++)
                q[128 * h + 32 * Q + l] = (uint8_t)(((b->ql[64 * h + l + 32 * (Q & 1)] >> (4 * (Q >> 1))) & 15) |
                                                    (((b->qh[32 * h + l] >> (2 * Q)) & 3) << 4));
}
static void q6_k_pack(block_q6_K *b, const uint8_t q[256]) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *v = q + 128 * h + l;
            b->ql[64 * h + l] = (uint8_t)((v[0] & 15) | (v[64] & 15) << 4);
            b->ql[64 * h + 32 + l] = (uint8_t)((v[32] & 15) | (v[96] & 15) << 4);
            b->qh[32 * h + l] = (uint8_t)((v[0] >> 4) | (v[32] >> 4) << 2 | (v[64] >> 4) << 4 | (v[96] >> 4) << 6);
        }
}

// Q4_K's 12 scale bytes as 8 scales and 8 mins of 6 bits (tensor/quants_k.c get_scale_min_k4), and back.
static void k4_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63, mn[j] = q[j + 4] & 63;
        sc[j + 4] = (uint8_t)((q[j + 8] & 15) | (q[j] >> 6) << 4);
        mn[j + 4] = (uint8_t)((q[j + 8] >> 4) | (q[j + 4] >> 6) << 4);
    }
}
static void k4_pack_scales(uint8_t *q, const uint8_t sc[8], const uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        q[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        q[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

// Q4_K_T group g's header entries of row j from block b, and back.
static void q4_k_t_head(char *grp, int64_t m, int64_t j, const block_q4_K *b) {
    uint8_t sc[8], mn[8], *u = (uint8_t *)grp;
    k4_scales(b->scales, sc, mn);
    memcpy(grp + 2 * j, &b->d, 2);
    memcpy(grp + 2 * m + 2 * j, &b->dmin, 2);
    for (int p = 0; p < 4; p++) {
        u[(4 + p) * m + j] = (uint8_t)((sc[2 * p] & 15) | (sc[2 * p + 1] & 15) << 4);
        u[(8 + p) * m + j] = (uint8_t)((mn[2 * p] & 15) | (mn[2 * p + 1] & 15) << 4);
    }
    for (int q = 0; q < 2; q++) {
        uint8_t a = 0, c = 0;
        for (int t = 0; t < 4; t++) a |= (uint8_t)((sc[4 * q + t] >> 4) << 2 * t), c |= (uint8_t)((mn[4 * q + t] >> 4) << 2 * t);
        u[(12 + q) * m + j] = a, u[(14 + q) * m + j] = c;
    }
}
static void q4_k_t_unhead(block_q4_K *b, const char *grp, int64_t m, int64_t j) {
    uint8_t sc[8], mn[8];
    memcpy(&b->d, grp + 2 * j, 2);
    memcpy(&b->dmin, grp + 2 * m + 2 * j, 2);
    for (int s = 0; s < 8; s++) {
        int a, c;
        peri_q4_k_t_scale_min(grp, m, j, s, &a, &c);
        sc[s] = (uint8_t)a, mn[s] = (uint8_t)c;
    }
    k4_pack_scales(b->scales, sc, mn);
}

// Rows r0 .. r0 + 31 (Q4_K_T) or r0 .. r0 + 63 (Q6_K_T) of group g, from blocks b (row stride nb blocks) or back.
static void q4_k_t_block(char *grp, int64_t m, int64_t r0, const block_q4_K *b, int64_t nb) {
    uint8_t q[32][256], P[16][256];
    for (int r = 0; r < 32; r++) {
        q4_k_t_head(grp, m, r0 + r, b + r * nb);
        q4_k_codes(b + r * nb, q[r]);
    }
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 256; k++) P[i][k] = (uint8_t)(q[i][k] | q[16 + i][k] << 4);
    tile_out((uint8_t *)grp + peri_t_codes_offset(PERI_T_Q4_K, m) + r0 / 2, peri_t_code_stride(PERI_T_Q4_K, m), P);
}
static void q4_k_t_unblock(block_q4_K *b, int64_t nb, const char *grp, int64_t m, int64_t r0) {
    uint8_t q[32][256], P[16][256];
    tile_in(P, (const uint8_t *)grp + peri_t_codes_offset(PERI_T_Q4_K, m) + r0 / 2, peri_t_code_stride(PERI_T_Q4_K, m));
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 256; k++) q[i][k] = P[i][k] & 15, q[16 + i][k] = P[i][k] >> 4;
    for (int r = 0; r < 32; r++) {
        q4_k_t_unhead(b + r * nb, grp, m, r0 + r);
        q4_k_pack(b + r * nb, q[r]);
    }
}
static void q6_k_t_block(char *grp, int64_t m, int64_t r0, const block_q6_K *b, int64_t nb) {
    uint8_t q[64][256], P[16][256];
    for (int r = 0; r < 64; r++) {
        memcpy(grp + 2 * (r0 + r), &b[r * nb].d, 2);
        for (int s = 0; s < 16; s++) grp[(2 + s) * m + r0 + r] = (char)b[r * nb].scales[s];
        q6_k_codes(b + r * nb, q[r]);
    }
    const size_t ld = peri_t_code_stride(PERI_T_Q6_K, m);
    uint8_t *lo = (uint8_t *)grp + peri_t_codes_offset(PERI_T_Q6_K, m);
    for (int h = 0; h < 2; h++) {
        for (int i = 0; i < 16; i++)
            for (int k = 0; k < 256; k++) P[i][k] = (uint8_t)((q[32 * h + i][k] & 15) | (q[32 * h + 16 + i][k] & 15) << 4);
        tile_out(lo + r0 / 2 + 16 * h, ld, P);
    }
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 256; k++)
            P[i][k] = (uint8_t)((q[i][k] >> 4) | (q[16 + i][k] >> 4) << 2 | (q[32 + i][k] >> 4) << 4 | (q[48 + i][k] >> 4) << 6);
    tile_out(lo + m / 2 + r0 / 4, ld, P);
}
static void q6_k_t_unblock(block_q6_K *b, int64_t nb, const char *grp, int64_t m, int64_t r0) {
    uint8_t q[64][256], P[16][256];
    const size_t ld = peri_t_code_stride(PERI_T_Q6_K, m);
    const uint8_t *lo = (const uint8_t *)grp + peri_t_codes_offset(PERI_T_Q6_K, m);
    for (int h = 0; h < 2; h++) {
        tile_in(P, lo + r0 / 2 + 16 * h, ld);
        for (int i = 0; i < 16; i++)
            for (int k = 0; k < 256; k++) q[32 * h + i][k] = P[i][k] & 15, q[32 * h + 16 + i][k] = P[i][k] >> 4;
    }
    tile_in(P, lo + m / 2 + r0 / 4, ld);
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 16; i++)
            for (int k = 0; k < 256; k++) q[16 * t + i][k] |= (uint8_t)(((P[i][k] >> 2 * t) & 3) << 4);
    for (int r = 0; r < 64; r++) {
        memcpy(&b[r * nb].d, grp + 2 * (r0 + r), 2);
        for (int s = 0; s < 16; s++) b[r * nb].scales[s] = (int8_t)grp[(2 + s) * m + r0 + r];
        q6_k_pack(b + r * nb, q[r]);
    }
}

// ---- the T layouts' table ----------------------------------------------------------------------------------

int peri_t_kind(int t_type) {
    return t_type == PERI_TYPE_Q8_0_T ? PERI_T_Q8_0 : t_type == PERI_TYPE_Q4_K_T ? PERI_T_Q4_K
         : t_type == PERI_TYPE_Q6_K_T ? PERI_T_Q6_K : -1;
}

int peri_t_layout(int type, int64_t m, int64_t K) {
    if (m <= 0 || K <= 0) return -1;
    if (type == PERI_TYPE_Q8_0 && K % QK8_0 == 0) return PERI_TYPE_Q8_0_T;
    if (type == PERI_TYPE_Q4_K && K % QK_K == 0 && m % 32 == 0) return PERI_TYPE_Q4_K_T;
    if (type == PERI_TYPE_Q6_K && K % QK_K == 0 && m % 64 == 0) return PERI_TYPE_Q6_K_T;
    return -1;
}

int peri_t_base(int t_type) {
    static const int base[PERI_T_KINDS] = {PERI_TYPE_Q8_0, PERI_TYPE_Q4_K, PERI_TYPE_Q6_K};
    const int k = peri_t_kind(t_type);
    return k < 0 ? -1 : base[k];
}

int64_t peri_t_group(int t_type) { return t_type == PERI_TYPE_Q8_0_T ? QK8_0 : QK_K; }

size_t peri_t_group_bytes(int t_type, int64_t m) { return peri_t_group_bytes_of(peri_t_kind(t_type), m); }

int64_t peri_t_panel(int t_type) { return t_type == PERI_TYPE_Q6_K_T ? 64 : 32; }

void peri_t_from(int t_type, void *dst, const void *src, int64_t m, int64_t K) {
    const int64_t nb = K / peri_t_group(t_type), step = peri_t_panel(t_type);
    const size_t gs = peri_t_group_bytes(t_type, m), bs = peri_type_traits(peri_t_base(t_type))->type_size;
    if (t_type == PERI_TYPE_Q8_0_T) {
        q8_0_t_from(dst, src, m, K);
        return;
    }
    for (int64_t r0 = 0; r0 < m; r0 += step)
        for (int64_t g = 0; g < nb; g++) {
            char *grp = (char *)dst + (size_t)g * gs;
            const char *b = (const char *)src + ((size_t)r0 * (size_t)nb + (size_t)g) * bs;
            if (t_type == PERI_TYPE_Q4_K_T) q4_k_t_block(grp, m, r0, (const block_q4_K *)b, nb);
            else q6_k_t_block(grp, m, r0, (const block_q6_K *)b, nb);
        }
}

void peri_t_rows(int t_type, void *dst, const void *src, int64_t m, int64_t K, int64_t j0, int64_t rows) {
    const int64_t nb = K / peri_t_group(t_type), step = peri_t_panel(t_type);
    const size_t gs = peri_t_group_bytes(t_type, m), bs = peri_type_traits(peri_t_base(t_type))->type_size;
    if (t_type == PERI_TYPE_Q8_0_T) {
        q8_0_t_rows(dst, src, m, K, j0, rows);
        return;
    }
    for (int64_t g = 0; g < nb; g++)   // groups outermost: a group's panels share the lines of its code rows
        for (int64_t r = 0; r < rows; r += step) {
            const char *grp = (const char *)src + (size_t)g * gs;
            char *b = (char *)dst + ((size_t)r * (size_t)nb + (size_t)g) * bs;
            if (t_type == PERI_TYPE_Q4_K_T) q4_k_t_unblock((block_q4_K *)b, nb, grp, m, j0 + r);
            else q6_k_t_unblock((block_q6_K *)b, nb, grp, m, j0 + r);
        }
}
