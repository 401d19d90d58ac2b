// Read-bandwidth probe: what a memory-bound kernel (the n == 1 matmul) can hope for on this machine.
#include "kernels/ops.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bw_job {
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

typedef float v4f __attribute__((vector_size(16)));

// Sums STREAMS interleaved streams of `len` floats, `stride` apart, as the decode matmul reads several
// weight rows at once: one sequential stream alone does not keep enough reads in flight. Plain 16-byte
// vectors (baseline on x86-64 and AArch64) already load faster than memory delivers.
enum { STREAMS = 8 };
static float sum_streams(const float *p, long len, long stride) {
    v4f a[STREAMS];
    memset(a, 0, sizeof a);
    for (long o = 0; o + 4 <= len; o += 4)
        for (int k = 0; k < STREAMS; k++) a[k] += *(const v4f *)(p + k * stride + o);
    v4f t = a[0];
    for (int k = 1; k < STREAMS; k++) t += a[k];
    return t[0] + t[1] + t[2] + t[3];
}

static void bw_read(void *arg, int ith, int nth) {
    struct bw_job *j = arg;
    long lo, hi;
    peri_split((long)j->n, ith, nth, &lo, &hi);
    lo = (lo + 15) / 16 * 16; // keep the 16-byte loads aligned
    long len = hi > lo ? (hi - lo) / STREAMS / 16 * 16 : 0;
    float s = len ? sum_streams(j->buf + lo, len, len) : 0.0f;
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
    j->buf = buf;
    j->n = (int64_t)(bytes / sizeof(float));
    peri_pool_run(pool, bw_fill, j);
    double best = 0;
    // Bytes actually read per run (each thread drops its last few floats to keep whole streams).
    double read = 0;
    for (int t = 0; t < peri_pool_size(pool); t++) {
        long lo, hi;
        peri_split((long)j->n, t, peri_pool_size(pool), &lo, &hi);
        lo = (lo + 15) / 16 * 16;
        read += hi > lo ? (double)((hi - lo) / STREAMS / 16 * 16 * STREAMS) * sizeof(float) : 0;
    }
    volatile float sink = 0;
    for (int run = 0; run < 5; run++) {
        double t0 = seconds();
        peri_pool_run(pool, bw_read, j);
        double t = seconds() - t0;
        for (int i = 0; i < peri_pool_size(pool) && i < 256; i++) sink += j->partial[i * 16];
        if (t > 0 && read / t > best) best = read / t;
    }
    (void)sink;
    free(buf);
    free(j);
    return best / 1e9;
}
