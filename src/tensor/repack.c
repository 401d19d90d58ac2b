// Load-time layouts (repack.h): conversions, and the type's reference kernels through Q4_0's.
#include "tensor/repack.h"

#include "core/error.h"

#include <stdlib.h>

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
