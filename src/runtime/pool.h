// A persistent pthread pool: one job at a time runs on every thread (the caller is thread 0), each taking
// its share of rows by (ith, nth), as ggml does. Threads spin briefly, then sleep, between jobs.
#ifndef PERI_RUNTIME_POOL_H
#define PERI_RUNTIME_POOL_H

typedef struct peri_pool peri_pool;
typedef void (*peri_task_fn)(void *arg, int ith, int nth);

// n_threads <= 0: physical cores. Returns NULL (with an error set) on failure.
peri_pool *peri_pool_new(int n_threads);
void peri_pool_free(peri_pool *p);
int peri_pool_size(const peri_pool *p);
// Runs fn(arg, ith, nth) for ith = 0..nth-1 in parallel and returns when all are done.
// p == NULL runs it on the calling thread alone (nth = 1).
void peri_pool_run(peri_pool *p, peri_task_fn fn, void *arg);
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
