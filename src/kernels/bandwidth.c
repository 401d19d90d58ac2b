// Read-bandwidth probe: what a memory-bound kernel (the n == 1 matmul) can hope for on this machine.
#include "kernels/kernels_impl.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

// The buffer is read as the decode matmul reads a weight: blocks of 8 rows of ROW floats read together,
// with the widest vectors the CPU has (one sequential stream, or narrow loads, reach less).
#define ROW 4096

struct bw_job {
    const struct peri_kernel_set *ks;
    float *buf;
    int64_t n;
    float partial[256 * 16]; // one cache line per thread
};

static void bw_fill(void *arg, int ith, int nth) {
    struct bw_job *j = arg;
    long lo, hi;
    peri_split((long)(j->n / (8 * ROW)), ith, nth, &lo, &hi);
    // First touch from the thread that will read it (NUMA-local pages).
    for (long i = lo * 8 * ROW; i < hi * 8 * ROW; i++) j->buf[i] = (float)(i & 7);
}

static void bw_read(void *arg, int ith, int nth) {
    struct bw_job *j = arg;
    long lo, hi;
    peri_split((long)(j->n / (8 * ROW)), ith, nth, &lo, &hi);
    float s = 0;
    for (long b = lo; b < hi; b++) s += j->ks->sum8(j->buf + b * 8 * ROW, ROW, ROW);
    j->partial[(ith & 255) * 16] = s;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double peri_measure_read_bandwidth(peri_pool *pool, size_t bytes) {
    size_t block = 8 * ROW * sizeof(float);
    if (bytes > ((size_t)1 << 40))
        return peri_fail(PERI_E_ARG, "bandwidth probe: %zu bytes is more than the 1 TB limit", bytes);
    bytes = bytes < block ? block : (bytes + block - 1) / block * block;
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
    double read = (double)(j->n / (8 * ROW)) * 8 * ROW * sizeof(float);
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
