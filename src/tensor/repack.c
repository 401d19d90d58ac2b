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
    static void name(char *d, const char *s, int64_t rows, int64_t cols) {                                      \
        T buf[TB][TB];                                                                                          \
        for (int64_t r0 = 0; r0 < rows; r0 += TB)                                                               \
            for (int64_t c0 = 0; c0 < cols; c0 += TB) {                                                         \
                const int64_t nr = rows - r0 < TB ? rows - r0 : TB, nc = cols - c0 < TB ? cols - c0 : TB;       \
                for (int64_t i = 0; i < nr; i++) {                                                              \
                    const char *row = s + ((size_t)(r0 + i) * (size_t)cols + (size_t)c0) * sizeof(T);           \
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
void peri_q8_0_t_from_q8_0(void *dst, const void *src, int64_t m, int64_t K) {
    const int64_t nb = K / QK8_0;
    const size_t rs = (size_t)nb * sizeof(block_q8_0), gs = peri_q8_0_t_group_bytes(m);
    for (int64_t j0 = 0; j0 < m; j0 += 16) {
        const int64_t jn = m - j0 < 16 ? m - j0 : 16;
        for (int64_t g = 0; g < nb; g++) {
            char *grp = (char *)dst + (size_t)g * gs;
            int8_t *codes = (int8_t *)(grp + (size_t)m * sizeof(peri_half)) + j0;
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

int peri_q8_0_t_inplace(void *data, int64_t m, int64_t K) {
    const size_t bytes = (size_t)m * peri_row_size(PERI_TYPE_Q8_0, K);
    char *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return peri_fail(PERI_E_NOMEM, "rearranging a Q8_0 weight: cannot allocate a %zu-byte copy", bytes);
    memcpy(tmp, data, bytes);
    peri_q8_0_t_from_q8_0(data, tmp, m, K);
    free(tmp);
    return PERI_OK;
}

// Per group: each panel row's scale, then its 32 codes (one per code row of the group), 16 x 16 bytes at a time.
void peri_q8_0_t_rows(void *dst, const void *src, int64_t m, int64_t K, int64_t j0, int64_t rows) {
    const int64_t nb = K / QK8_0;
    const size_t gs = peri_q8_0_t_group_bytes(m);
    block_q8_0 *d = dst;
#if defined(V16_LOAD)
    const int64_t r16 = rows / 16 * 16;
#else
    const int64_t r16 = 0;
#endif
    for (int64_t g = 0; g < nb; g++) {
        const char *grp = (const char *)src + (size_t)g * gs;
        const int8_t *codes = (const int8_t *)(grp + (size_t)m * sizeof(peri_half)) + j0;
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

void peri_transpose_elems(void *dst, const void *src, int64_t rows, int64_t cols, size_t esz) {
    if (esz == 4) transpose_tiles32(dst, src, rows, cols);
    else transpose_tiles16(dst, src, rows, cols);
}

int peri_transpose_inplace(void *data, int64_t rows, int64_t cols, size_t esz) {
    const size_t bytes = (size_t)rows * (size_t)cols * esz;
    char *tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return peri_fail(PERI_E_NOMEM, "transposing a weight: cannot allocate a %zu-byte copy", bytes);
    memcpy(tmp, data, bytes);
    peri_transpose_elems(data, tmp, rows, cols, esz);
    free(tmp);
    return PERI_OK;
}
