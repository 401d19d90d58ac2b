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
