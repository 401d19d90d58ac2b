// A persistent pthread pool: one job at a time runs on every thread (the caller is thread 0), each taking
// its share of rows by (ith, nth), as ggml does. Threads spin briefly, then sleep, between jobs.
#ifndef PERI_RUNTIME_POOL_H
#define PERI_RUNTIME_POOL_H

#include <stddef.h>

typedef struct peri_pool peri_pool;
typedef void (*peri_task_fn)(void *arg, int ith, int nth);

// n_threads <= 0: physical cores. Returns NULL (with an error set) on failure.
peri_pool *peri_pool_new(int n_threads);
void peri_pool_free(peri_pool *p);
int peri_pool_size(const peri_pool *p);
// Runs fn(arg, ith, nth) for ith = 0..nth-1 in parallel and returns when all are done.
// p == NULL runs it on the calling thread alone (nth = 1).
void peri_pool_run(peri_pool *p, peri_task_fn fn, void *arg);
// Scratch memory owned by the pool, for callers that must not allocate while the model runs (the matmul's
// quantized activations and dequantized weight rows). peri_pool_reserve grows it to at least `bytes` (call it
// at set-up: PERI_OK, or PERI_E_NOMEM / PERI_E_ARG with an error set; p == NULL is a no-op).
int peri_pool_reserve(peri_pool *p, size_t bytes);
size_t peri_pool_scratch_size(const peri_pool *p);
// Lends the scratch if it holds `bytes` and no other caller has it; NULL otherwise (the caller then uses a
// fallback that does not allocate). Give it back with peri_pool_scratch_release.
void *peri_pool_scratch_acquire(peri_pool *p, size_t bytes);
void peri_pool_scratch_release(peri_pool *p);

// Physical cores of this machine (at least 1).
int peri_physical_cores(void);

// Splits [0, n) into nth nearly equal ranges; thread ith gets [*lo, *hi).
static inline void peri_split(long n, int ith, int nth, long *lo, long *hi) {
    long per = (n + nth - 1) / nth;
    *lo = per * ith;
    *hi = *lo + per;
    if (*lo > n) *lo = n;
    if (*hi > n) *hi = n;
}

#endif
