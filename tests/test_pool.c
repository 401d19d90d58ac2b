// The thread pool: every share of every job runs exactly once, results are visible to the caller,
// nested and concurrent calls run inline, shutdown is clean (run under TSan too).
#include "runtime/pool.h"
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define MAXT 16

struct count_job {
    long counts[MAXT * 8]; // one cache line per thread; plain writes: the pool must order them
    atomic_int bad_nth;
    int expect_nth;
};

static void count_task(void *arg, int ith, int nth) {
    struct count_job *j = arg;
    if (nth != j->expect_nth || ith < 0 || ith >= nth) atomic_fetch_add(&j->bad_nth, 1);
    else j->counts[ith * 8] += ith + 1;
}

// Each thread fills its rows of an array; the caller then reads all of them.
struct fill_job {
    int *a;
    long n;
    int round;
};

static void fill_task(void *arg, int ith, int nth) {
    struct fill_job *j = arg;
    long lo, hi;
    peri_split(j->n, ith, nth, &lo, &hi);
    for (long i = lo; i < hi; i++) j->a[i] = j->round * 7 + (int)(i % 1000);
}

struct nested_job {
    peri_pool *p;
    atomic_int inner_calls, inner_bad;
};

static void inner_task(void *arg, int ith, int nth) {
    struct nested_job *j = arg;
    if (ith != 0 || nth != 1) atomic_fetch_add(&j->inner_bad, 1);
    atomic_fetch_add(&j->inner_calls, 1);
}

static void outer_task(void *arg, int ith, int nth) {
    struct nested_job *j = arg;
    peri_pool_run(j->p, inner_task, j); // must run inline on this thread
}

struct caller_arg {
    peri_pool *p;
    int jobs;
    long sum;
};

static void add_task(void *arg, int ith, int nth) {
    atomic_long *s = arg;
    atomic_fetch_add(s, ith + 1);
    (void)nth;
}

static void *caller_main(void *v) {
    struct caller_arg *c = v;
    for (int i = 0; i < c->jobs; i++) {
        atomic_long s = 0;
        peri_pool_run(c->p, add_task, &s);
        // All shares ran (nth of them, or one inline share when the pool was busy).
        long got = atomic_load(&s);
        int nth = peri_pool_size(c->p);
        if (got == (long)nth * (nth + 1) / 2 || got == 1) c->sum++;
    }
    return NULL;
}

static void empty_task(void *arg, int ith, int nth) { (void)arg, (void)ith, (void)nth; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_pool_size(int n, int jobs) {
    peri_pool *p = peri_pool_new(n);
    CHECK(p != NULL);
    if (!p) return;
    CHECK(peri_pool_size(p) == n);

    struct count_job *cj = calloc(1, sizeof *cj);
    cj->expect_nth = n;
    for (int i = 0; i < jobs; i++) peri_pool_run(p, count_task, cj);
    int ok = atomic_load(&cj->bad_nth) == 0;
    for (int t = 0; t < n; t++) ok &= cj->counts[t * 8] == (long)jobs * (t + 1);
    CHECKF(ok, "pool of %d: %d jobs, every share once", n, jobs);
    free(cj);

    struct fill_job fj = {.n = 10007};
    fj.a = calloc((size_t)fj.n, sizeof(int));
    int fill_ok = 1;
    for (int r = 1; r <= 50; r++) {
        fj.round = r;
        peri_pool_run(p, fill_task, &fj);
        for (long i = 0; i < fj.n; i++) fill_ok &= fj.a[i] == r * 7 + (int)(i % 1000);
    }
    CHECKF(fill_ok, "pool of %d: results visible to the caller", n);
    free(fj.a);

    struct nested_job nj = {.p = p};
    peri_pool_run(p, outer_task, &nj);
    CHECK(atomic_load(&nj.inner_calls) == n && atomic_load(&nj.inner_bad) == 0);

    // Two callers share one pool: neither deadlocks and every job completes.
    struct caller_arg ca[2] = {{p, 300, 0}, {p, 300, 0}};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, caller_main, &ca[1]) == 0);
    caller_main(&ca[0]);
    pthread_join(th, NULL);
    CHECK(ca[0].sum == 300 && ca[1].sum == 300);

    double t0 = now_s();
    int reps = 2000;
    for (int i = 0; i < reps; i++) peri_pool_run(p, empty_task, NULL);
    printf("pool of %d: %.2f us per empty job\n", n, (now_s() - t0) / reps * 1e6);
    peri_pool_free(p);
}

int main(void) {
    CHECK(peri_physical_cores() >= 1);
    CHECK(peri_pool_size(NULL) == 1);
    struct count_job *cj = calloc(1, sizeof *cj);
    cj->expect_nth = 1;
    peri_pool_run(NULL, count_task, cj);
    CHECK(cj->counts[0] == 1 && atomic_load(&cj->bad_nth) == 0);
    free(cj);
    peri_pool_free(NULL);

    peri_pool *p0 = peri_pool_new(0);
    CHECK(p0 && peri_pool_size(p0) == peri_physical_cores());
    peri_pool_free(p0);

    test_pool_size(1, 1000);
    test_pool_size(2, 20000);
    test_pool_size(3, 5000);
    // Without spinning (every wait sleeps on the futex): the wake-up paths must not lose a job.
    setenv("PERI_POOL_SPIN_US", "0", 1);
    test_pool_size(2, 5000);
    test_pool_size(5, 1000);
    setenv("PERI_POOL_SPIN_US", "3", 1);
    test_pool_size(4, 3000);
    unsetenv("PERI_POOL_SPIN_US");

    // Create and free repeatedly, also right after a job (workers still spinning).
    for (int i = 0; i < 20; i++) {
        peri_pool *p = peri_pool_new(1 + i % 4);
        if (i & 1) peri_pool_run(p, empty_task, NULL);
        peri_pool_free(p);
    }
    return TEST_END();
}
