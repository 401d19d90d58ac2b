// Read-bandwidth probe: what a memory-bound kernel (the n == 1 matmul) can hope for on this machine.
#include "kernels/kernels_impl.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bw_job {
    const struct peri_kernel_set *ks;
    float *buf;
    int64_t n;
    float partial[256 * 16]; // one cache line per thread
};

static void bw_fill(void *arg, int ith, int nth) {
    struct bw_job *j = arg;
    long lo, hi;
    peri_split((long)j->n, ith, nth, &lo, &hi);
    // First touch from the thread that will read it (NUMA-local pages).
    for (long i = lo; i < hi; i++) j->buf[i] = (float)(i & 7);
}

static void bw_read(void *arg, int ith, int nth) {
    struct bw_job *j = arg;
    long lo, hi;
    peri_split((long)j->n, ith, nth, &lo, &hi);
    // Several interleaved streams per thread, as the matmul reads several weight rows at once: one
    // sequential stream alone does not keep enough reads in flight to reach the bandwidth.
    enum { STREAMS = 8, PIECE = 1024 };
    long len = (hi - lo) / STREAMS / PIECE * PIECE;
    float s = 0;
    for (long o = 0; o < len; o += PIECE)
        for (int k = 0; k < STREAMS; k++) s += j->ks->sum(j->buf + lo + k * len + o, PIECE);
    if (hi > lo + STREAMS * len) s += j->ks->sum(j->buf + lo + STREAMS * len, hi - lo - STREAMS * len);
    j->partial[(ith & 255) * 16] = s;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double peri_measure_read_bandwidth(peri_pool *pool, size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    struct bw_job *j = calloc(1, sizeof *j);
    float *buf = aligned_alloc(64, bytes);
    if (!j || !buf) {
        free(j);
        free(buf);
        return peri_fail(PERI_E_NOMEM, "bandwidth probe: cannot allocate %zu bytes; try a smaller buffer", bytes);
    }
    j->ks = peri_kernels_current();
    j->buf = buf;
    j->n = (int64_t)(bytes / sizeof(float));
    peri_pool_run(pool, bw_fill, j);
    double best = 0;
    volatile float sink = 0;
    for (int run = 0; run < 5; run++) {
        double t0 = seconds();
        peri_pool_run(pool, bw_read, j);
        double t = seconds() - t0;
        for (int i = 0; i < peri_pool_size(pool) && i < 256; i++) sink += j->partial[i * 16];
        if (t > 0 && (double)bytes / t > best) best = (double)bytes / t;
    }
    (void)sink;
    free(buf);
    free(j);
    return best / 1e9;
}
