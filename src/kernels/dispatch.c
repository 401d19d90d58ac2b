// Run-time kernel dispatch: picks the kernel set for the CPU (or PERI_KERNELS), and runs matmuls over the
// pool with each thread taking an aligned range of weight rows.
#include "kernels/kernels_impl.h"

#include "core/error.h"
#include "runtime/cpu.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct peri_kernel_set *g_sets[PERI_KERNELS_LEVELS];
static _Atomic(const struct peri_kernel_set *) g_cur;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_info[256];

static const char *const g_level_names[PERI_KERNELS_LEVELS] = {"ref", "avx2", "avx512", "neon"};

static void update_info(const struct peri_kernel_set *ks) {
    char feats[160];
    snprintf(g_info, sizeof g_info, "%s (cpu: %s)", ks->name, peri_cpu_describe(feats, sizeof feats));
}

static void kernels_init(void) {
    g_sets[PERI_KERNELS_REF] = &peri_kset_ref;
#if defined(__x86_64__)
    const struct peri_cpu *c = peri_cpu();
    if (c->avx2 && c->fma && c->f16c) g_sets[PERI_KERNELS_AVX2] = &peri_kset_avx2;
    if (g_sets[PERI_KERNELS_AVX2] && c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq)
        g_sets[PERI_KERNELS_AVX512] = &peri_kset_avx512;
#endif
#if defined(__aarch64__)
    g_sets[PERI_KERNELS_NEON] = &peri_kset_neon;
#endif
    int want = PERI_KERNELS_LEVELS - 1;
    const char *env = getenv("PERI_KERNELS");
    if (env && *env && strcmp(env, "auto") != 0) {
        for (int l = 0; l < PERI_KERNELS_LEVELS; l++)
            if (!strcmp(env, g_level_names[l])) want = l;
    }
    while (want > 0 && !g_sets[want]) want--;
    // NEON and the x86 levels never coexist, so "below" always lands on the same architecture or ref.
    atomic_store(&g_cur, g_sets[want]);
    update_info(g_sets[want]);
}

const struct peri_kernel_set *peri_kernels_current(void) {
    const struct peri_kernel_set *ks = atomic_load_explicit(&g_cur, memory_order_acquire);
    if (ks) return ks;
    pthread_once(&g_once, kernels_init);
    return atomic_load_explicit(&g_cur, memory_order_acquire);
}

bool peri_kernels_supported(int level) {
    pthread_once(&g_once, kernels_init);
    return level >= 0 && level < PERI_KERNELS_LEVELS && g_sets[level];
}

int peri_kernels_set_level(int level) {
    if (!peri_kernels_supported(level))
        return peri_fail(PERI_E_UNSUPPORTED, "kernel level %d (%s) is not supported by this CPU or build", level,
                         level >= 0 && level < PERI_KERNELS_LEVELS ? g_level_names[level] : "unknown");
    atomic_store(&g_cur, g_sets[level]);
    update_info(g_sets[level]);
    return PERI_OK;
}

int peri_kernels_level(void) { return peri_kernels_current()->level; }

const char *peri_kernels_level_name(int level) {
    return level >= 0 && level < PERI_KERNELS_LEVELS ? g_level_names[level] : "unknown";
}

const char *peri_kernels_info(void) {
    peri_kernels_current();
    return g_info;
}

// ---- row helpers ------------------------------------------------------------------------------------------

float peri_dot(const float *a, const float *b, int64_t n) { return peri_kernels_current()->dot(a, b, n); }
void peri_axpy(float *y, float a, const float *x, int64_t n) { peri_kernels_current()->axpy(y, a, x, n); }
void peri_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    peri_kernels_current()->layernorm(y, x, w, b, n, eps);
}
void peri_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    peri_kernels_current()->rmsnorm(y, x, w, n, eps);
}
void peri_softmax(float *x, int64_t n) { peri_kernels_current()->softmax(x, n); }
void peri_silu_row(float *y, const float *x, int64_t n) { peri_kernels_current()->silu_row(y, x, n); }
void peri_swiglu(float *y, const float *a, const float *b, int64_t n) { peri_kernels_current()->swiglu(y, a, b, n); }

// ---- matmul -----------------------------------------------------------------------------------------------

// Below this many multiply-adds the pool's wake-up costs more than it saves (per-head slices, tiny
// projections): run on the caller alone.
#define PERI_MM_MIN_PARALLEL (1 << 16)
// Rows dequantized at a time by the generic prefill path (rows x K floats of scratch per thread).
#define PERI_MM_GENERIC_ROWS 32

struct mm_job {
    const struct peri_kernel_set *ks;
    peri_mm_fn fn;          // NULL: generic path
    int wtype;
    float *y;
    int64_t ldy;
    const char *x;
    size_t xstride;
    const char *w;          // first row of the range
    size_t wstride;
    int64_t K, M, n;
    const float *bias;
};

// Generic path: n == 1 (or no F32 kernel) uses the type's reference dot; n > 1 dequantizes a few rows
// to float and reuses them across all x rows with the level's F32 kernel.
static void mm_generic(const struct mm_job *j, int64_t lo, int64_t hi) {
    const struct peri_type_traits *tt = peri_type_traits(j->wtype);
    peri_mm_fn f32 = j->ks->mm[PERI_TYPE_F32].fn;
    float *buf = NULL;
    if (j->n > 1 && f32 && tt->to_float)
        buf = malloc((size_t)PERI_MM_GENERIC_ROWS * (size_t)j->K * sizeof(float));
    if (!buf) {
        for (int64_t r = lo; r < hi; r++) {
            const void *row = j->w + (size_t)r * j->wstride;
            float b = j->bias ? j->bias[r] : 0.0f;
            for (int64_t i = 0; i < j->n; i++)
                j->y[i * j->ldy + r] = tt->dot_f32(row, (const float *)(j->x + (size_t)i * j->xstride), j->K) + b;
        }
        return;
    }
    for (int64_t r0 = lo; r0 < hi; r0 += PERI_MM_GENERIC_ROWS) {
        int64_t m = hi - r0 < PERI_MM_GENERIC_ROWS ? hi - r0 : PERI_MM_GENERIC_ROWS;
        for (int64_t r = 0; r < m; r++) tt->to_float(j->w + (size_t)(r0 + r) * j->wstride, buf + r * j->K, j->K);
        f32(j->y + r0, j->ldy, j->x, j->xstride, buf, (size_t)j->K * sizeof(float), j->K, m, j->n,
            j->bias ? j->bias + r0 : NULL);
    }
    free(buf);
}

static void mm_task(void *arg, int ith, int nth) {
    const struct mm_job *j = arg;
    // Split rows in units of row_align so each thread's range starts on a tile boundary.
    int64_t align = j->ks->row_align > 0 ? j->ks->row_align : 1;
    int64_t units = (j->M + align - 1) / align;
    long ulo, uhi;
    peri_split((long)units, ith, nth, &ulo, &uhi);
    int64_t lo = ulo * align, hi = uhi * align;
    if (hi > j->M) hi = j->M;
    if (lo >= hi) return;
    if (j->fn)
        j->fn(j->y + lo, j->ldy, j->x, j->xstride, j->w + (size_t)lo * j->wstride, j->wstride, j->K, hi - lo, j->n,
              j->bias ? j->bias + lo : NULL);
    else
        mm_generic(j, lo, hi);
}

void peri_matmul_ex(peri_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, const peri_tensor *W,
                    int64_t row0, int64_t M, const float *bias, int64_t n) {
    if (M <= 0 || n <= 0) return;
    int64_t K = W->shape[W->n_dims - 1];
    const struct peri_type_traits *tt = peri_type_traits(W->type);
    size_t rs = peri_row_size(W->type, K);
    if (!tt || !tt->dot_f32 || !rs) {
        // Loaders reject such weights; never read memory we cannot size. NaN makes the misuse visible.
        peri_fail(PERI_E_UNSUPPORTED, "matmul: weight '%s' has type %s, which has no kernel",
                  W->name ? W->name : "?", peri_type_name(W->type));
        for (int64_t i = 0; i < n; i++)
            for (int64_t r = 0; r < M; r++) y[i * ldy + r] = NAN;
        return;
    }
    const struct peri_kernel_set *ks = peri_kernels_current();
    struct mm_job j = {
        .ks = ks, .fn = ks->mm[W->type].fn, .wtype = W->type, .y = y, .ldy = ldy, .x = (const char *)x,
        .xstride = (size_t)ldx * sizeof(float), .w = (const char *)W->data + (size_t)row0 * rs, .wstride = rs,
        .K = K, .M = M, .n = n, .bias = bias,
    };
    void *xconv = NULL;
    int xt = ks->mm[W->type].x_type;
    if (j.fn && xt != PERI_TYPE_F32) {
        // The kernel wants x in another type (e.g. Q8_0 for integer dots): convert once for all threads.
        const struct peri_type_traits *xtt = peri_type_traits(xt);
        size_t xrs = peri_row_size(xt, K);
        xconv = xtt && xtt->from_float && xrs ? malloc(xrs * (size_t)n) : NULL;
        if (xconv) {
            for (int64_t i = 0; i < n; i++) xtt->from_float(x + i * ldx, (char *)xconv + (size_t)i * xrs, K);
            j.x = xconv;
            j.xstride = xrs;
        } else {
            j.fn = NULL;
        }
    }
    if (!pool || (double)M * (double)K * (double)n < PERI_MM_MIN_PARALLEL) mm_task(&j, 0, 1);
    else peri_pool_run(pool, mm_task, &j);
    free(xconv);
}

void peri_matmul(peri_pool *pool, float *y, const float *x, const peri_tensor *W, const float *bias, int64_t n) {
    int64_t M = W->shape[0], K = W->shape[W->n_dims - 1];
    for (int d = 1; d < W->n_dims - 1; d++) M *= W->shape[d];
    peri_matmul_ex(pool, y, M, x, K, W, 0, M, bias, n);
}
