// Persistent thread pool (pthreads + C11 atomics). A job is published by bumping a generation counter;
// workers spin on it for a short while (jobs come in bursts of hundreds per token), then sleep on a
// futex. The caller runs share 0 itself and waits for a pending counter to reach zero the same way, so
// a job costs no mutex round-trip and no system call while the threads are busy.
#include "runtime/pool.h"

#include "core/error.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#define PERI_POOL_MAX_THREADS 256
#define PERI_POOL_SPIN_US_DEFAULT 200
#define PERI_POOL_PURE_SPIN_NS 20000

struct peri_pool {
    int n;
    pthread_t *threads;
    long spin_ns;               // how long to spin before sleeping
    peri_task_fn fn;            // written by the caller before `gen` is bumped (release), read after it (acquire)
    void *arg;
    atomic_int stop;
    atomic_flag busy;           // set while a job runs: a second concurrent caller runs its job inline
    // Scratch lent to one caller at a time (peri_pool_scratch_acquire): the matmul's quantized activations.
    void *scratch;
    size_t scratch_size;
    atomic_flag scratch_busy;
    // Separate cache lines: workers hammer `gen` while spinning and `pending` when finishing.
    _Alignas(64) atomic_uint gen;        // futex word for the workers
    atomic_int n_sleeping;               // workers blocked (or about to block) on `gen`
    _Alignas(64) atomic_uint pending;    // futex word for the caller: workers still running the job
    atomic_int caller_waiting;
};

static _Thread_local int t_in_pool; // set inside a job: nested peri_pool_run calls run inline

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// Blocks while *addr == val (may return spuriously: callers re-check).
static void futex_wait(atomic_uint *addr, unsigned val) {
#if defined(__linux__)
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
#else
    (void)addr, (void)val;
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
#endif
}

static void futex_wake(atomic_uint *addr, int n) {
#if defined(__linux__)
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
#else
    (void)addr, (void)n;
#endif
}

// Waits until *word != val, spinning for up to spin_ns first. `sleepers` counts threads that may be
// blocked so that the waking side only makes a system call when someone sleeps. Both sides use
// sequentially consistent operations (sleeper: increment then re-read; waker: change then read sleepers)
// so at least one of them sees the other and no wake-up is lost.
static unsigned wait_change(atomic_uint *word, unsigned val, long spin_ns, atomic_int *sleepers,
                            atomic_int *flag) {
    unsigned v = atomic_load_explicit(word, memory_order_acquire);
    if (v != val) return v;
    long start = spin_ns > 0 ? now_ns() : 0, t = start;
    for (unsigned i = 1;; i++) {
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v != val) return v;
        if ((i & 31) == 0 && start) t = now_ns();
        if (start && t - start < spin_ns) {
            // Pure spinning for the first few microseconds; after that yield between polls, so that on an
            // oversubscribed machine the thread we wait for can run.
            if (t - start < PERI_POOL_PURE_SPIN_NS) cpu_relax();
            else sched_yield();
            continue;
        }
        if (sleepers) atomic_fetch_add(sleepers, 1);
        if (flag) atomic_store(flag, 1);
        v = atomic_load(word);
        if (v == val) futex_wait(word, val);
        if (sleepers) atomic_fetch_sub(sleepers, 1);
        if (flag) atomic_store(flag, 0);
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v != val) return v;
    }
}

struct worker_arg { peri_pool *p; int ith; };

static void *worker_main(void *v) {
    struct worker_arg wa = *(struct worker_arg *)v;
    free(v);
    peri_pool *p = wa.p;
    t_in_pool = 1;
    unsigned seen = 0;
    for (;;) {
        seen = wait_change(&p->gen, seen, p->spin_ns, &p->n_sleeping, NULL);
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
        p->fn(p->arg, wa.ith, p->n);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_waiting))
            futex_wake(&p->pending, 1);
    }
}

// CPUs this process may run on.
static int online_cpus(void) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int n = online > 0 ? (int)online : 1;
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int allowed = CPU_COUNT(&set);
        if (allowed > 0 && allowed < n) n = allowed;
    }
#endif
    return n;
}

int peri_physical_cores(void) {
    // Distinct (physical id, core id) pairs in /proc/cpuinfo (hyper-threads share a core and only slow
    // each other down on these kernels), capped by the CPUs this process may run on.
    int n = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        int phys = 0;
        static const int cap = 1024;
        int seen[1024][2];
        int nseen = 0;
        while (fgets(line, sizeof line, f)) {
            char *colon = strchr(line, ':');
            if (!colon) continue;
            if (!strncmp(line, "physical id", 11)) phys = atoi(colon + 1);
            else if (!strncmp(line, "core id", 7)) {
                int core = atoi(colon + 1);
                int dup = 0;
                for (int i = 0; i < nseen && !dup; i++) dup = seen[i][0] == phys && seen[i][1] == core;
                if (!dup && nseen < cap) {
                    seen[nseen][0] = phys;
                    seen[nseen][1] = core;
                    nseen++;
                }
            }
        }
        fclose(f);
        n = nseen;
    }
    int cpus = online_cpus();
    if (n <= 0 || n > cpus) n = cpus;
    return n;
}

peri_pool *peri_pool_new(int n_threads) {
    if (n_threads <= 0) n_threads = peri_physical_cores();
    if (n_threads > PERI_POOL_MAX_THREADS) n_threads = PERI_POOL_MAX_THREADS;
    peri_pool *p = aligned_alloc(64, (sizeof(peri_pool) + 63) / 64 * 64);
    if (!p) {
        peri_fail(PERI_E_NOMEM, "out of memory creating a thread pool of %d threads", n_threads);
        return NULL;
    }
    memset(p, 0, sizeof *p);
    atomic_init(&p->stop, 0);
    atomic_flag_clear(&p->busy);
    atomic_flag_clear(&p->scratch_busy);
    atomic_init(&p->gen, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->caller_waiting, 0);
    // More threads than CPUs: a spinning thread would take the CPU from the one it waits for.
    long spin_us = n_threads > online_cpus() ? 0 : PERI_POOL_SPIN_US_DEFAULT;
    const char *env = getenv("PERI_POOL_SPIN_US"); // 0: sleep at once (for machines shared with others)
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == 0 && v >= 0 && v <= 1000000) spin_us = v;
    }
    p->spin_ns = spin_us * 1000;
    p->n = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        peri_fail(PERI_E_NOMEM, "out of memory creating a thread pool of %d threads", n_threads);
        return NULL;
    }
    // The kernels keep their tiles on the stack (the AMX ones up to about 300 KB a call), more than some C libraries
    // give a thread by default (musl: 128 KB); glibc's default is the stack rlimit, usually 8 MiB.
    pthread_attr_t attr;
    const bool attr_ok = pthread_attr_init(&attr) == 0;
    if (attr_ok) pthread_attr_setstacksize(&attr, (size_t)8 << 20);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (struct worker_arg){p, i};
        if (!wa || pthread_create(&p->threads[i], attr_ok ? &attr : NULL, worker_main, wa) != 0) {
            // Run with the threads we have: the workers read p->n only after a job is published.
            free(wa);
            p->n = i;
            break;
        }
    }
    if (attr_ok) pthread_attr_destroy(&attr);
    return p;
}

void peri_pool_free(peri_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex_wake(&p->gen, PERI_POOL_MAX_THREADS);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p->scratch);
    free(p);
}

int peri_pool_reserve(peri_pool *p, size_t bytes) {
    if (!p) return PERI_OK;
    if (bytes > ((size_t)1 << 40))
        return peri_fail(PERI_E_NOMEM, "pool scratch of %zu bytes requested: beyond the 1 TiB limit", bytes);
    if (atomic_flag_test_and_set_explicit(&p->scratch_busy, memory_order_acquire))
        return peri_fail(PERI_E_ARG, "peri_pool_reserve called while the pool's scratch is in use by a matmul; "
                                     "reserve at set-up, before running the model");
    int rc = PERI_OK;
    if (bytes > p->scratch_size) {
        size_t sz = (bytes + 63) / 64 * 64;
        void *n = aligned_alloc(64, sz);
        if (!n) {
            rc = peri_fail(PERI_E_NOMEM, "out of memory for %zu bytes of pool scratch", sz);
        } else {
            free(p->scratch);
            p->scratch = n;
            p->scratch_size = sz;
        }
    }
    atomic_flag_clear_explicit(&p->scratch_busy, memory_order_release);
    return rc;
}

size_t peri_pool_scratch_size(const peri_pool *p) { return p ? p->scratch_size : 0; }

void *peri_pool_scratch_acquire(peri_pool *p, size_t bytes) {
    if (!p || bytes > p->scratch_size) return NULL;
    if (atomic_flag_test_and_set_explicit(&p->scratch_busy, memory_order_acquire)) return NULL;
    return p->scratch;
}

void peri_pool_scratch_release(peri_pool *p) {
    if (p) atomic_flag_clear_explicit(&p->scratch_busy, memory_order_release);
}

int peri_pool_size(const peri_pool *p) { return p ? p->n : 1; }

void peri_pool_run(peri_pool *p, peri_task_fn fn, void *arg) {
    if (!p || p->n == 1 || t_in_pool || atomic_flag_test_and_set_explicit(&p->busy, memory_order_acquire)) {
        int was = t_in_pool;
        t_in_pool = 1;
        fn(arg, 0, 1);
        t_in_pool = was;
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, (unsigned)(p->n - 1), memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); // seq_cst: publishes fn/arg/pending, ordered before reading n_sleeping
    if (atomic_load(&p->n_sleeping) > 0) futex_wake(&p->gen, PERI_POOL_MAX_THREADS);
    t_in_pool = 1;
    fn(arg, 0, p->n);
    t_in_pool = 0;
    unsigned left = atomic_load_explicit(&p->pending, memory_order_acquire);
    while (left != 0) left = wait_change(&p->pending, left, p->spin_ns, NULL, &p->caller_waiting);
    atomic_flag_clear_explicit(&p->busy, memory_order_release);
}
