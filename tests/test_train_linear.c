// The trainer's threaded linear backward (both paths: axpy rows for few tokens, transposed peri_matmul for
// many) against the scalar float32 reference of tops.h, on odd sizes with and without each output.
#include "test.h"

#include "train/tops.h"
#include "train/train.h"

#include <stdlib.h>

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void check(peri_pool *pool, int64_t n, int64_t K, int64_t M, bool want_dx, bool want_dw) {
    unsigned s = (unsigned)(n * 131 + K * 7 + M);
    float *X = malloc(sizeof(float) * n * K), *W = malloc(sizeof(float) * M * K), *G = malloc(sizeof(float) * n * M);
    float *dX1 = calloc(n * K, 4), *dX2 = calloc(n * K, 4), *dW1 = calloc(M * K, 4), *dW2 = calloc(M * K, 4);
    float *dB1 = calloc(M, 4), *dB2 = calloc(M, 4);
    for (int64_t i = 0; i < n * K; i++) X[i] = frand(&s);
    for (int64_t i = 0; i < M * K; i++) W[i] = frand(&s);
    for (int64_t i = 0; i < n * M; i++) G[i] = frand(&s);
    // gradients accumulate: start both from the same non-zero values
    for (int64_t i = 0; i < n * K; i++) dX1[i] = dX2[i] = 0.25f;
    for (int64_t i = 0; i < M * K; i++) dW1[i] = dW2[i] = -0.5f;
    peri_tr_lin_bwd(pool, want_dx ? dX1 : NULL, want_dw ? dW1 : NULL, dB1, G, X, W, n, K, M);
    peri_tr_linear_bwd(want_dx ? dX2 : NULL, want_dw ? dW2 : NULL, dB2, G, X, W, n, K, M);
    // sums of up to max(n, M) products of values in [-1, 1]: float32 rounding grows with the length
    double tol = 1e-6 * (double)(n > M ? n : M) + 1e-5;
    double ex = test_max_abs_diff(dX1, dX2, (size_t)(n * K)), ew = test_max_abs_diff(dW1, dW2, (size_t)(M * K));
    double eb = test_max_abs_diff(dB1, dB2, (size_t)M);
    CHECKF(ex < tol && ew < tol && eb < tol, "lin_bwd n=%lld K=%lld M=%lld: dx %.3g dW %.3g db %.3g (tol %.3g)",
           (long long)n, (long long)K, (long long)M, ex, ew, eb, tol);
    free(X); free(W); free(G); free(dX1); free(dX2); free(dW1); free(dW2); free(dB1); free(dB2);
}

int main(void) {
    peri_pool *pool = peri_pool_new(2);
    CHECK(pool != NULL);
    check(pool, 5, 7, 6, true, true);       // few rows: the axpy path
    check(NULL, 5, 7, 6, true, true);
    check(pool, 67, 33, 45, true, true);    // the transposed-matmul path, sizes off the SIMD widths
    check(pool, 67, 33, 45, false, true);
    check(pool, 67, 33, 45, true, false);
    check(NULL, 130, 64, 257, true, true);
    check(pool, 256, 96, 300, true, true);
    peri_pool_free(pool);
    return TEST_END();
}
