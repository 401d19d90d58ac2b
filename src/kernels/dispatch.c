// Run-time kernel dispatch: picks the kernel set for the CPU (or PERI_KERNELS), and runs matmuls over the
// pool with each thread taking an aligned range of weight rows.
#include "kernels/kernels_impl.h"

#include "core/error.h"
#include "runtime/cpu.h"
#include "tensor/repack.h"

#define QK_K_RESERVE 256 // the largest activation block (Q8_K)

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if PERI_HAVE_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif

static const struct peri_kernel_set *g_sets[PERI_KERNELS_LEVELS];
static _Atomic(const struct peri_kernel_set *) g_cur;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_info[256];

static const char *const g_level_names[PERI_KERNELS_LEVELS] = {
    "ref", "avx2", "avx512", "neon", "avx512vnni", "neondot", "avx512fp16", "avx512amx",
};
static atomic_bool g_exact;
#if defined(__x86_64__) || defined(__aarch64__)
// A level that is another level's set with some matmul entries laid over it: avx512vnni over avx512 (vpdpbusd),
// avx512fp16 over avx512vnni (vfmadd231ph), avx512amx over avx512fp16 (tile products), neondot over neon (vdotq_s32).
// Storage for three such levels.
static struct peri_kernel_set g_overlay_sets[3];

// An entry whose x is not float32 keeps the base's float32-x kernel of its type as the exact-mode (and small-n)
// fallback, where the base has no other.
static const struct peri_kernel_set *overlay_set(int slot, const struct peri_kernel_set *base, const char *name,
                                                 int level, const struct peri_mm_kernel mm[PERI_TYPE_COUNT]) {
    struct peri_kernel_set *o = &g_overlay_sets[slot];
    *o = *base;
    o->name = name;
    o->level = level;
    for (int t = 0; t < PERI_TYPE_COUNT; t++) {
        if (!mm[t].fn) continue;
        if (mm[t].x_type != PERI_TYPE_F32 && !o->mm_exact[t].fn && base->mm[t].x_type == PERI_TYPE_F32)
            o->mm_exact[t] = base->mm[t];
        o->mm[t] = mm[t];
    }
    return o;
}
#endif

static void update_info(const struct peri_kernel_set *ks) {
    char feats[160];
    snprintf(g_info, sizeof g_info, "%s (cpu: %s)", ks->name, peri_cpu_describe(feats, sizeof feats));
}

#if PERI_HAVE_AMX
// Linux (5.16 on) hands the 8 KiB of tile state only to a process that asks for it; a tile instruction without it
// faults. The grant is for the whole process, so asking once here covers the pool's threads too.
static bool amx_permission(void) {
    const long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
}
#endif

static void kernels_init(void) {
    g_sets[PERI_KERNELS_REF] = &peri_kset_ref;
#if defined(__x86_64__)
    const struct peri_cpu *c = peri_cpu();
    if (c->avx2 && c->fma && c->f16c) g_sets[PERI_KERNELS_AVX2] = &peri_kset_avx2;
    if (g_sets[PERI_KERNELS_AVX2] && c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq)
        g_sets[PERI_KERNELS_AVX512] = &peri_kset_avx512;
    if (g_sets[PERI_KERNELS_AVX512] && c->avx512vnni)
        g_sets[PERI_KERNELS_AVX512VNNI] =
            overlay_set(0, &peri_kset_avx512, "avx512vnni", PERI_KERNELS_AVX512VNNI, peri_qmm_avx512vnni);
#if PERI_HAVE_AVX512FP16
    if (g_sets[PERI_KERNELS_AVX512VNNI] && c->avx512fp16)
        g_sets[PERI_KERNELS_AVX512FP16] = overlay_set(1, g_sets[PERI_KERNELS_AVX512VNNI], "avx512fp16",
                                                      PERI_KERNELS_AVX512FP16, peri_mm_avx512fp16);
#endif
#if PERI_HAVE_AMX
    if (g_sets[PERI_KERNELS_AVX512FP16] && c->amx_int8 && amx_permission()) {
        g_sets[PERI_KERNELS_AVX512AMX] = overlay_set(2, g_sets[PERI_KERNELS_AVX512FP16], "avx512amx",
                                                     PERI_KERNELS_AVX512AMX, peri_qmm_avx512amx);
        g_overlay_sets[2].q8t_qmm = peri_amx_q8t_qmm;
        if (c->amx_bf16 && c->avx512bf16 && c->avx512vbmi) {
            g_overlay_sets[2].attn_scores = peri_amx_attn_scores;
            g_overlay_sets[2].mm_nn[PERI_TYPE_F16] = peri_amx_mm_f16_nn;
        }
    }
#endif
#endif
#if defined(__aarch64__)
    g_sets[PERI_KERNELS_NEON] = &peri_kset_neon;
    if (peri_cpu()->neon_dotprod)
        g_sets[PERI_KERNELS_NEON_DOTPROD] =
            overlay_set(0, &peri_kset_neon, "neondot", PERI_KERNELS_NEON_DOTPROD, peri_qmm_neon_dotprod);
#endif
    int want = PERI_KERNELS_LEVELS - 1;
    const char *env = getenv("PERI_KERNELS");
    if (env && *env && strcmp(env, "auto") != 0) {
        for (int l = 0; l < PERI_KERNELS_LEVELS; l++)
            if (!strcmp(env, g_level_names[l])) want = l;
    }
    while (want > 0 && !g_sets[want]) want--;
    // NEON and the x86 levels never coexist, so "below" always lands on the same architecture or ref.
    const char *ex = getenv("PERI_KERNELS_EXACT");
    if (ex && *ex && strcmp(ex, "0") != 0) atomic_store(&g_exact, true);
    atomic_store(&g_cur, g_sets[want]);
    update_info(g_sets[want]);
}

const struct peri_kernel_set *peri_kernels_current(void) {
    const struct peri_kernel_set *ks = atomic_load_explicit(&g_cur, memory_order_acquire);
    if (ks) return ks;
    pthread_once(&g_once, kernels_init);
    return atomic_load_explicit(&g_cur, memory_order_acquire);
}

bool peri_kernels_has_mm(int type) {
    return type >= 0 && type < PERI_TYPE_COUNT && peri_kernels_current()->mm[type].fn != NULL;
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

void peri_kernels_set_exact(bool exact) {
    peri_kernels_current();
    atomic_store(&g_exact, exact);
}

bool peri_kernels_exact(void) {
    peri_kernels_current();
    return atomic_load(&g_exact);
}

const char *peri_kernels_info(void) {
    peri_kernels_current();
    return g_info;
}

// ---- row helpers ------------------------------------------------------------------------------------------

float peri_dot(const float *a, const float *b, int64_t n) { return peri_kernels_current()->dot(a, b, n); }
void peri_axpy(float *y, float a, const float *x, int64_t n) { peri_kernels_current()->axpy(y, a, x, n); }
void peri_sum_parts(float *out, const float *part, int64_t stride, int nth, int64_t n) {
    memcpy(out, part, sizeof(float) * (size_t)n);
    for (int t = 1; t < nth; t++) peri_axpy(out, 1.0f, part + (int64_t)t * stride, n);
}
void peri_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    peri_kernels_current()->layernorm(y, x, w, b, n, eps);
}
void peri_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    peri_kernels_current()->rmsnorm(y, x, w, n, eps);
}
void peri_softmax(float *x, int64_t n) { peri_kernels_current()->softmax(x, n); }
void peri_silu_row(float *y, const float *x, int64_t n) { peri_kernels_current()->silu_row(y, x, n); }
void peri_swiglu(float *y, const float *a, const float *b, int64_t n) { peri_kernels_current()->swiglu(y, a, b, n); }
void peri_f16_to_f32_row(float *y, const uint16_t *x, int64_t n) {
    peri_to_float_fn f = peri_kernels_current()->to_float[PERI_TYPE_F16];
    if (f) f(x, y, n);
    else peri_f16_to_f32_row_ref(y, x, n);
}

void peri_f32_to_f16_row(uint16_t *y, const float *x, int64_t n) {
    peri_from_float_fn f = peri_kernels_current()->quantize_x[PERI_TYPE_F16];
    (f ? f : peri_type_traits(PERI_TYPE_F16)->from_float)(x, y, n);
}

void peri_attn_scores(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                      size_t krs, int64_t nk, int64_t D) {
    if (nq <= 0 || nk <= 0) return;
    if (D <= 0) {   // empty sums
        for (int64_t i = 0; i < nq; i++) memset(s + i * lds, 0, sizeof(float) * (size_t)nk);
        return;
    }
    if (ktype != PERI_TYPE_F32 && ktype != PERI_TYPE_F16) {
        peri_fail(PERI_E_UNSUPPORTED, "attention scores: keys of type %s (F32 or F16 only)", peri_type_name(ktype));
        for (int64_t i = 0; i < nq; i++)
            for (int64_t j = 0; j < nk; j++) s[i * lds + j] = NAN;
        return;
    }
    const struct peri_kernel_set *ks = peri_kernels_current();
    for (int64_t i0 = 0; i0 < nq; i0 += 16) {   // the kernels take 16 queries at a time
        const int64_t qn = nq - i0 < 16 ? nq - i0 : 16;
        if (ks->attn_scores) ks->attn_scores(s + i0 * lds, lds, q + i0 * ldq, ldq, qn, ktype, k, krs, nk, D);
        else peri_attn_scores_ref(s + i0 * lds, lds, q + i0 * ldq, ldq, qn, ktype, k, krs, nk, D);
    }
}

void peri_matmul_nn(float *y, int64_t ldy, const float *x, int64_t ldx, int type, const void *c, size_t cs, int64_t K,
                    int64_t m, int64_t n) {
    if (K <= 0 || m <= 0 || n <= 0) return;
    const struct peri_kernel_set *ks = peri_kernels_current();
    if (type < 0 || type >= PERI_TYPE_COUNT) return;
    if (ks->mm_nn[type]) {
        ks->mm_nn[type](y, ldy, x, ldx, c, cs, K, m, n);
        return;
    }
    const struct peri_type_traits *tt = peri_type_traits(type);
    if (type == PERI_TYPE_F32 || type == PERI_TYPE_F16 || type == PERI_TYPE_BF16 || !tt || !tt->to_float || !ks->axpy) {
        peri_matmul_nn_ref(y, ldy, x, ldx, type, c, cs, K, m, n);
        return;
    }
    // A block type without a kernel: each C row converted once per chunk of columns by the level's dequantizer,
    // then added to every y row with the level's axpy.
    peri_to_float_fn to_float = ks->to_float[type] ? ks->to_float[type] : tt->to_float;
    _Alignas(64) float buf[PERI_NN_CHUNK];
    for (int64_t j0 = 0; j0 < m; j0 += PERI_NN_CHUNK) {
        const int64_t w = m - j0 < PERI_NN_CHUNK ? m - j0 : PERI_NN_CHUNK;
        const size_t off = peri_row_size(type, j0);
        for (int64_t i = 0; i < n; i++) memset(y + i * ldy + j0, 0, sizeof(float) * (size_t)w);
        for (int64_t k = 0; k < K; k++) {
            to_float((const char *)c + (size_t)k * cs + off, buf, w);
            for (int64_t i = 0; i < n; i++) ks->axpy(y + i * ldy + j0, x[i * ldx + k], buf, w);
        }
    }
}

void peri_get_row(const peri_tensor *W, int64_t r, float *out) {
    peri_to_float_fn f = W->type >= 0 && W->type < PERI_TYPE_COUNT ? peri_kernels_current()->to_float[W->type] : NULL;
    if (!f) {
        peri_get_row_ref(W, r, out);
        return;
    }
    int64_t K = W->shape[W->n_dims - 1];
    f((const char *)W->data + (size_t)r * peri_row_size(W->type, K), out, K);
}

// ---- matmul -----------------------------------------------------------------------------------------------

// Below this many multiply-adds the pool's wake-up costs more than it saves (per-head slices, tiny
// projections): run on the caller alone.
#define PERI_MM_MIN_PARALLEL (1 << 16)
// Rows dequantized at a time by the generic prefill path.
#define PERI_MM_GENERIC_ROWS 16
// Stack fallbacks when the pool has no (free or large enough) scratch: quantized x rows on the caller's stack,
// dequantized weight rows on each thread's stack. 32 KiB each: well within any thread's stack.
#define PERI_MM_STACK_BYTES 32768

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
    float *wbuf;            // generic path: per-thread float rows from the pool's scratch (NULL: stack)
    int64_t wbuf_rows;      // rows of K floats per thread in wbuf
    atomic_long next_unit;  // decode: the next unit of the shared tail (mm_task)
};

static void mm_generic_rows(const struct mm_job *j, int64_t lo, int64_t hi, float *buf, int64_t rows) {
    const struct peri_type_traits *tt = peri_type_traits(j->wtype);
    peri_mm_fn f32 = j->ks->mm[PERI_TYPE_F32].fn;
    if (j->n == 1 || !f32 || !tt->to_float || rows < 1) {
        for (int64_t r = lo; r < hi; r++) {
            const void *row = j->w + (size_t)r * j->wstride;
            float b = j->bias ? j->bias[r] : 0.0f;
            for (int64_t i = 0; i < j->n; i++)
                j->y[i * j->ldy + r] = tt->dot_f32(row, (const float *)(j->x + (size_t)i * j->xstride), j->K) + b;
        }
        return;
    }
    // the level's dequantizer where it has one (bit for bit the reference's values)
    peri_to_float_fn to_float = j->ks->to_float[j->wtype] ? j->ks->to_float[j->wtype] : tt->to_float;
    for (int64_t r0 = lo; r0 < hi; r0 += rows) {
        int64_t m = hi - r0 < rows ? hi - r0 : rows;
        for (int64_t r = 0; r < m; r++) to_float(j->w + (size_t)(r0 + r) * j->wstride, buf + r * j->K, j->K);
        f32(j->y + r0, j->ldy, j->x, j->xstride, buf, (size_t)j->K * sizeof(float), j->K, m, j->n,
            j->bias ? j->bias + r0 : NULL);
    }
}

// Generic path: n == 1 (or no F32 kernel) uses the type's reference dot; n > 1 dequantizes a few rows
// to float and reuses them across all x rows with the level's F32 kernel.
static void mm_generic(const struct mm_job *j, int64_t lo, int64_t hi, int ith) {
    if (j->wbuf) {
        mm_generic_rows(j, lo, hi, j->wbuf + (size_t)ith * (size_t)(j->wbuf_rows * j->K), j->wbuf_rows);
        return;
    }
    _Alignas(64) float buf[PERI_MM_STACK_BYTES / sizeof(float)];
    int64_t rows = (int64_t)(sizeof buf / sizeof(float)) / j->K;
    mm_generic_rows(j, lo, hi, buf, rows < PERI_MM_GENERIC_ROWS ? rows : PERI_MM_GENERIC_ROWS);
}

static void mm_rows(struct mm_job *j, int64_t lo, int64_t hi, int ith) {
    if (hi > j->M) hi = j->M;
    if (lo >= hi) return;
    if (j->fn)
        j->fn(j->y + lo, j->ldy, j->x, j->xstride, j->w + (size_t)lo * j->wstride, j->wstride, j->K, hi - lo, j->n,
              j->bias ? j->bias + lo : NULL);
    else
        mm_generic(j, lo, hi, ith);
}

// Units of the decode tail per thread (see mm_task), and the most weight bytes in one.
#define PERI_MM_TAIL_UNITS 4
#define PERI_MM_TAIL_BYTES ((size_t)256 << 10)

static void mm_task(void *arg, int ith, int nth) {
    struct mm_job *j = arg;
    // Split rows in units of row_align so each thread's range starts on a tile boundary.
    int64_t align = j->ks->row_align > 0 ? j->ks->row_align : 1;
    int64_t units = (j->M + align - 1) / align;
    long ulo, uhi;
    if (nth > 1 && j->n <= 4 && units >= 64 * nth) {
        // Decode is bound by memory: equal shares finish at different times when the cores run at different
        // speeds (a shared machine), and the early thread would wait. Each thread takes 3/4 of an equal share
        // as one range (long runs of rows for the hardware prefetchers), then units of the last quarter go to
        // whichever thread is free, in a fixed number of pieces.
        // Pieces of the tail: PERI_MM_TAIL_UNITS per thread, but at most PERI_MM_TAIL_BYTES of weights, so that the
        // threads' finishing times differ by less than a piece even on the output matrix (hundreds of MB).
        const long tail = (long)units / 4, head = (long)units - tail;
        const long cap = (long)(PERI_MM_TAIL_BYTES / ((size_t)align * j->wstride));
        long piece = (tail + nth * PERI_MM_TAIL_UNITS - 1) / (nth * PERI_MM_TAIL_UNITS);
        if (piece > cap) piece = cap > 0 ? cap : 1;
        peri_split(head, ith, nth, &ulo, &uhi);
        mm_rows(j, ulo * align, uhi * align, ith);
        for (;;) {
            long u = atomic_fetch_add_explicit(&j->next_unit, piece, memory_order_relaxed);
            if (u >= tail) break;
            long e = u + piece < tail ? u + piece : tail;
            mm_rows(j, (head + u) * align, (head + e) * align, ith);
        }
        return;
    }
    peri_split((long)units, ith, nth, &ulo, &uhi);
    mm_rows(j, ulo * align, uhi * align, ith);
}

static void mm_run(peri_pool *pool, struct mm_job *j) {
    if (!pool || (double)j->M * (double)j->K * (double)j->n < PERI_MM_MIN_PARALLEL) mm_task(j, 0, 1);
    else peri_pool_run(pool, mm_task, j);
}

// x rows -> the kernel's activation type, rows split over the threads.
struct qx_job {
    peri_from_float_fn from_float;
    const float *x;
    int64_t ldx, K, n;
    char *dst;
    size_t xrs;
};

static void qx_task(void *arg, int ith, int nth) {
    const struct qx_job *q = arg;
    long lo, hi;
    peri_split((long)q->n, ith, nth, &lo, &hi);
    for (long i = lo; i < hi; i++) q->from_float(q->x + i * q->ldx, q->dst + (size_t)i * q->xrs, q->K);
}

static void quantize_x(peri_pool *pool, const struct qx_job *q) {
    if (!pool || q->n < 4 || (double)q->n * (double)q->K < PERI_MM_MIN_PARALLEL) qx_task((void *)q, 0, 1);
    else peri_pool_run(pool, qx_task, (void *)q);
}

// The matmul entry for weight type `type`, n x rows: the integer-dot / half-precision entry unless exact mode, fewer
// rows than it wants, or an operand that asks for float32 sums where the entry would sum in half precision.
static const struct peri_mm_kernel *choose_kernel(const struct peri_kernel_set *ks, int type, int64_t n, unsigned flags) {
    const struct peri_mm_kernel *e = &ks->mm[type];
    if (e->fn && e->x_type != PERI_TYPE_F32 &&
        (n < e->min_n || ((flags & PERI_TENSOR_FLOAT_SUMS) && e->x_type == PERI_TYPE_F16) ||
         atomic_load_explicit(&g_exact, memory_order_relaxed)))
        e = &ks->mm_exact[type];
    else if (e->fn && e->f32_from_n && n >= e->f32_from_n && ks->mm_exact[type].fn)
        e = &ks->mm_exact[type];
    return e;
}

static size_t generic_bytes(int nth, int64_t K) {
    return (size_t)nth * PERI_MM_GENERIC_ROWS * (size_t)K * sizeof(float);
}

// peri_matmul_t's scratch: x quantized (xbytes), then a chunk of the base type's rows (T_CHUNK_ROWS of them, K long)
// per thread, 64-byte aligned; or for few rows (and peri_matmul_by_inputs's) the threads' partial sums,
// pass_rows rows of m floats each (run_split_inputs).
static size_t split_bytes(int nth, int64_t pass_rows, int64_t m) {
    return (size_t)nth * (size_t)pass_rows * (size_t)m * sizeof(float);
}
static size_t t_align(size_t b) { return (b + 63) / 64 * 64; }
// Weight rows a thread turns back at a time for the prefill: several panels, so that the level's kernel runs once
// over them (x, up to 256 rows of 8192 floats in PLM, is read once per chunk instead of once per 32-row panel) and
// the conversion reads each line of the code rows once (peri_t_rows walks the groups outermost). A multiple of every
// layout's panel.
#define T_CHUNK_ROWS 256
static size_t t_panel_bytes(int t_type, int64_t K) {
    return (size_t)T_CHUNK_ROWS * peri_row_size(peri_t_base(t_type), K);
}
static size_t t_prefill_bytes(int nth, size_t xbytes, size_t panel) {
    return t_align(xbytes) + (size_t)nth * t_align(panel);
}

unsigned peri_by_inputs_bit(int type) {
    const int kind = peri_t_kind(type);
    return 1u << (kind >= 0 ? kind : PERI_T_KINDS);
}

int peri_matmul_reserve(peri_pool *pool, int64_t max_K, int64_t max_n, unsigned by_inputs) {
    if (!pool || max_K <= 0 || max_n <= 0) return PERI_OK;
    if (max_K > ((int64_t)1 << 32) || max_n > ((int64_t)1 << 32))
        return peri_fail(PERI_E_NOMEM, "peri_matmul_reserve(K=%lld, n=%lld): beyond the size limits",
                         (long long)max_K, (long long)max_n);
    int64_t Kr = (max_K + QK_K_RESERVE - 1) / QK_K_RESERVE * QK_K_RESERVE; // every activation type's block
    size_t xb = 0;
    const int xts[] = {PERI_TYPE_Q8_0, PERI_TYPE_Q8_1, PERI_TYPE_Q8_K, PERI_TYPE_F16};
    for (size_t t = 0; t < sizeof xts / sizeof xts[0]; t++) {
        size_t rs = peri_row_size(xts[t], Kr);
        if (rs > xb) xb = rs;
    }
    const int nth = peri_pool_size(pool);
    double need = (double)xb * (double)max_n, gen = (double)generic_bytes(nth, max_K);
    if (gen > need) need = gen;
    // peri_matmul_t: quantized x plus a chunk of rows per thread, or the threads' partial sums
    size_t panel = 0;
    for (int t = PERI_TYPE_Q8_0_T; t <= PERI_TYPE_Q6_K_T; t++)
        if ((by_inputs & peri_by_inputs_bit(t)) && t_panel_bytes(t, Kr) > panel) panel = t_panel_bytes(t, Kr);
    if (panel) {
        const double tp = (double)t_prefill_bytes(nth, xb * (size_t)max_n, panel);
        if (tp > need) need = tp;
    }
    // the threads' partial sums of a few rows (outputs up to max_K): peri_matmul_t, peri_matmul_by_inputs
    int64_t pass = by_inputs & peri_by_inputs_bit(PERI_TYPE_F32) ? PERI_NN_SPARSE_ROWS : 0;
    if (panel && PERI_T_DECODE_ROWS > pass) pass = PERI_T_DECODE_ROWS;
    if (by_inputs && (double)split_bytes(nth, pass, max_K) > need) need = (double)split_bytes(nth, pass, max_K);
    if (need > (double)((size_t)1 << 40))
        return peri_fail(PERI_E_NOMEM, "peri_matmul_reserve(K=%lld, n=%lld) would need %.3g bytes of scratch",
                         (long long)max_K, (long long)max_n, need);
    return peri_pool_reserve(pool, (size_t)need);
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
    const struct peri_mm_kernel *e = choose_kernel(ks, W->type, n, W->flags);
    struct mm_job j = {
        .ks = ks, .fn = e->fn, .wtype = W->type, .y = y, .ldy = ldy, .x = (const char *)x,
        .xstride = (size_t)ldx * sizeof(float), .w = (const char *)W->data + (size_t)row0 * rs, .wstride = rs,
        .K = K, .M = M, .n = n, .bias = bias,
    };
    int xt = e->x_type;
    const struct peri_type_traits *xtt = j.fn && xt != PERI_TYPE_F32 ? peri_type_traits(xt) : NULL;
    size_t xrs = xtt && xtt->from_float ? peri_row_size(xt, K) : 0;
    if (j.fn && xt != PERI_TYPE_F32 && !xrs) j.fn = NULL; // cannot happen with the tables; stay correct anyway
    if (!j.fn) {
        // Generic path: for n > 1, per-thread rows of dequantized weights from the pool's scratch if it has room.
        void *buf = n > 1 ? peri_pool_scratch_acquire(pool, generic_bytes(peri_pool_size(pool), K)) : NULL;
        j.wbuf = buf;
        j.wbuf_rows = PERI_MM_GENERIC_ROWS;
        mm_run(pool, &j);
        if (buf) peri_pool_scratch_release(pool);
        return;
    }
    if (!xrs) {
        mm_run(pool, &j);
        return;
    }
    // The kernel wants x quantized (integer dot products): once for all threads, into the pool's scratch, or
    // in chunks of rows through a stack buffer.
    struct qx_job q = {.from_float = ks->quantize_x[xt] ? ks->quantize_x[xt] : xtt->from_float, .x = x, .ldx = ldx,
                       .K = K, .xrs = xrs};
    char *buf = peri_pool_scratch_acquire(pool, xrs * (size_t)n);
    if (buf) {
        q.n = n;
        q.dst = buf;
        quantize_x(pool, &q);
        j.x = buf;
        j.xstride = xrs;
        mm_run(pool, &j);
        peri_pool_scratch_release(pool);
        return;
    }
    _Alignas(64) char sbuf[PERI_MM_STACK_BYTES];
    int64_t chunk = (int64_t)(sizeof sbuf / xrs);
    if (chunk < 1) { // rows longer than the stack buffer: float activations
        const struct peri_mm_kernel *fe = &ks->mm_exact[W->type];
        j.fn = fe->fn;
        mm_run(pool, &j);
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
        int64_t c = n - i0 < chunk ? n - i0 : chunk;
        q.x = x + i0 * ldx;
        q.n = c;
        q.dst = sbuf;
        quantize_x(pool, &q);
        struct mm_job jc = j;
        jc.y = y + i0 * ldy;
        jc.x = sbuf;
        jc.xstride = xrs;
        jc.n = c;
        mm_run(pool, &jc);
    }
}

void peri_matmul(peri_pool *pool, float *y, const float *x, const peri_tensor *W, const float *bias, int64_t n) {
    int64_t M = W->shape[0], K = W->shape[W->n_dims - 1];
    for (int d = 1; d < W->n_dims - 1; d++) M *= W->shape[d];
    peri_matmul_ex(pool, y, M, x, K, W, 0, M, bias, n);
}

// ---- the T layouts (PLM's sparse down projection) --------------------------------------------------------

// The kernel takes T_ROWS x rows at a time; rounding x goes a chunk of T_ROUND inputs at a time through a stack
// buffer of that many rows.
#define T_ROWS 4
#define T_ROUND 2048

void peri_t_nn(int t_type, float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, int64_t mw, int64_t c0,
               int64_t m, int64_t G, int64_t n, int x_type) {
    if (m <= 0 || n <= 0) return;
    const struct peri_kernel_set *ks = peri_kernels_current();
    const int kind = peri_t_kind(t_type);
    void (*kern)(float *, int64_t, const float *, int64_t, const void *, int64_t, int64_t, int64_t, int64_t, int64_t) =
        kind >= 0 ? ks->t_nn[kind] : NULL;
    const int64_t gi = peri_t_group(t_type), gchunk = T_ROUND / gi;
    const size_t gs = peri_t_group_bytes(t_type, mw);
    const struct peri_type_traits *qt = peri_type_traits(x_type);
    peri_from_float_fn quant = x_type == PERI_TYPE_F32 ? NULL : ks->quantize_x[x_type] ? ks->quantize_x[x_type] : qt->from_float;
    peri_to_float_fn deq = x_type == PERI_TYPE_F32 ? NULL : ks->to_float[x_type] ? ks->to_float[x_type] : qt->to_float;
    void (*kq)(float *, int64_t, const void *, size_t, const void *, int64_t, int64_t, int64_t, int64_t, int64_t) =
        kind >= 0 && x_type == PERI_TYPE_Q8_K && c0 % 32 == 0 && m % 32 == 0 ? ks->t_nn_q8k[kind] : NULL;
    for (int64_t i0 = 0; i0 < n; i0 += T_ROWS) {
        const int64_t nr = n - i0 < T_ROWS ? n - i0 : T_ROWS;
        for (int64_t i = 0; i < nr; i++) memset(y + (i0 + i) * ldy, 0, sizeof(float) * (size_t)m);
        if (G <= 0) continue;
        if (quant && kq) {   // integer sums, one x row at a time
            _Alignas(64) block_q8_K xq[T_ROUND / QK_K];
            for (int64_t i = 0; i < nr; i++)
                for (int64_t g0 = 0; g0 < G; g0 += gchunk) {
                    const int64_t gn = G - g0 < gchunk ? G - g0 : gchunk;
                    quant(x + (i0 + i) * ldx + g0 * gi, xq, gn * gi);
                    kq(y + (i0 + i) * ldy, ldy, xq, 0, (const char *)c + (size_t)g0 * gs, mw, c0, m, gn, 1);
                }
            continue;
        }
        if (!quant || !deq) {
            if (kern) kern(y + i0 * ldy, ldy, x + i0 * ldx, ldx, c, mw, c0, m, G, nr);
            else peri_t_nn_ref(t_type, y + i0 * ldy, ldy, x + i0 * ldx, ldx, c, mw, c0, m, G, nr);
            continue;
        }
        _Alignas(64) float xr[T_ROWS][T_ROUND];
        _Alignas(64) char qb[T_ROUND / QK_K * sizeof(block_q8_K) + T_ROUND / QK8_0 * sizeof(block_q8_0)];
        for (int64_t g0 = 0; g0 < G; g0 += gchunk) {
            const int64_t gn = G - g0 < gchunk ? G - g0 : gchunk;
            for (int64_t i = 0; i < nr; i++) {
                quant(x + (i0 + i) * ldx + g0 * gi, qb, gn * gi);
                deq(qb, xr[i], gn * gi);
            }
            const char *cg = (const char *)c + (size_t)g0 * gs;
            if (kern) kern(y + i0 * ldy, ldy, xr[0], T_ROUND, cg, mw, c0, m, gn, nr);
            else peri_t_nn_ref(t_type, y + i0 * ldy, ldy, xr[0], T_ROUND, cg, mw, c0, m, gn, nr);
        }
    }
}

int64_t peri_t_sparse_rows(int t_type) {
    return t_type == PERI_TYPE_Q6_K_T ? PERI_T_SPARSE_ROWS_Q6_K : PERI_T_SPARSE_ROWS;
}

// ---- few rows of a weight stored by its inputs: the inputs split over the threads ------------------------------

// Rows i0 .. i0 + nr - 1 of y (m floats a row, out[i] for row i0 + i) from the inputs' units lo .. hi - 1 only,
// overwritten (lo == hi never reaches it).
typedef void (*split_part_fn)(const void *arg, float *out, int64_t i0, int64_t nr, long lo, long hi);

struct split_job {
    split_part_fn fn;
    const void *arg;
    float *part;   // [nth][nr][m]
    int64_t m, i0, nr;
    long units;
};

static void split_task(void *arg, int ith, int nth) {
    const struct split_job *j = arg;
    long lo, hi;
    peri_split(j->units, ith, nth, &lo, &hi);
    float *out = j->part + (size_t)ith * (size_t)(j->nr * j->m);
    if (lo == hi) memset(out, 0, sizeof(float) * (size_t)(j->nr * j->m));   // fewer units than threads
    else j->fn(j->arg, out, j->i0, j->nr, lo, hi);
}

// y[n x m] as the sum over the inputs' units 0 .. units - 1 of fn: for the few rows whose kernel reads only the
// weight rows of inputs non-zero in some x row (the sparse down projections), where splitting the outputs would have
// every thread walk every non-zero input. Each thread takes a share of the units for pass_rows rows at a time, its
// partial sums in the pool's scratch (split_bytes; peri_matmul_reserve sizes it), added after. One thread, or no
// scratch: fn on the caller, straight into y.
static void run_split_inputs(peri_pool *pool, float *y, int64_t m, int64_t n, int64_t pass_rows, long units,
                             split_part_fn fn, const void *arg) {
    const int nth = peri_pool_size(pool);
    float *part = nth > 1 ? peri_pool_scratch_acquire(pool, split_bytes(nth, pass_rows, m)) : NULL;
    if (!part) {
        if (units > 0) fn(arg, y, 0, n, 0, units);
        else memset(y, 0, sizeof(float) * (size_t)(n * m));
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += pass_rows) {
        struct split_job j = {.fn = fn, .arg = arg, .part = part, .m = m, .i0 = i0, .units = units,
                              .nr = n - i0 < pass_rows ? n - i0 : pass_rows};
        peri_pool_run(pool, split_task, &j);
        for (int64_t i = 0; i < j.nr; i++) peri_sum_parts(y + (i0 + i) * m, part + i * m, j.nr * m, nth, m);
    }
    peri_pool_scratch_release(pool);
}

struct t_job {
    const struct peri_mm_kernel *e;   // prefill: the level's entry for the base type and n rows (fn NULL: the reference)
    int t_type, base;
    float *y;
    const float *x;
    const char *xq;                   // prefill: x as e wants it (xrs bytes a row)
    size_t xrs;
    const char *c;
    int64_t m, K, n;
    int x_type;                       // up to peri_t_sparse_rows: what x is rounded to (peri_t_nn)
    void (*gemm)(float *, int64_t, const float *, int64_t, const void *, int64_t, int64_t, int64_t, int64_t, int64_t);
    void (*qgemm)(float *, int64_t, const void *, size_t, const void *, int64_t, int64_t, int64_t, int64_t, int64_t);
    char *panels;                     // prefill: per thread, a chunk of T_CHUNK_ROWS of the base type's rows
    size_t pstride;
};

// Few rows: input groups lo .. hi - 1 (run_split_inputs).
static void t_part(const void *arg, float *out, int64_t i0, int64_t nr, long lo, long hi) {
    const struct t_job *j = arg;
    const int64_t gi = peri_t_group(j->t_type);
    peri_t_nn(j->t_type, out, j->m, j->x + i0 * j->K + lo * gi, j->K,
              j->c + (size_t)lo * peri_t_group_bytes(j->t_type, j->m), j->m, 0, j->m, hi - lo, nr, j->x_type);
}

// More rows: panels of weight rows (outputs) split over the threads.
static void t_task(void *arg, int ith, int nth) {
    const struct t_job *j = arg;
    const int64_t m = j->m, K = j->K, n = j->n, P = peri_t_panel(j->t_type);
    long lo, hi;
    peri_split((long)((m + P - 1) / P), ith, nth, &lo, &hi);
    if (j->gemm) {   // straight from the layout
        const int64_t j0 = (int64_t)lo * P, j1 = (int64_t)hi * P < m ? hi * P : m;
        if (j0 < j1) j->gemm(j->y + j0, m, j->x, K, j->c, m, j0, j1 - j0, K, n);
        return;
    }
    if (j->qgemm) {   // straight from the layout, x quantized
        const int64_t j0 = (int64_t)lo * P, j1 = (int64_t)hi * P < m ? hi * P : m;
        if (j0 < j1) j->qgemm(j->y + j0, m, j->xq, j->xrs, j->c, m, j0, j1 - j0, K, n);
        return;
    }
    char *panel = j->panels + (size_t)ith * j->pstride;
    const size_t prs = peri_row_size(j->base, K);
    const int64_t end = (int64_t)hi * P < m ? (int64_t)hi * P : m;
    for (int64_t j0 = (int64_t)lo * P; j0 < end; j0 += T_CHUNK_ROWS) {
        const int64_t rows = end - j0 < T_CHUNK_ROWS ? end - j0 : T_CHUNK_ROWS;
        peri_t_rows(j->t_type, panel, j->c, m, K, j0, rows);
        if (j->e->fn) {
            j->e->fn(j->y + j0, m, j->xq, j->xrs, panel, prs, K, rows, n, NULL);
        } else {
            const peri_tensor Pt = {.name = "T layout panel", .type = j->base, .n_dims = 2, .shape = {rows, K},
                                    .data = panel, .nbytes = prs * (size_t)rows};
            peri_matmul_ex_ref(NULL, j->y + j0, m, j->x, K, &Pt, 0, rows, NULL, n);
        }
    }
}

struct by_inputs_job {
    const peri_tensor *C;
    float *y;
    const float *x;
    int64_t n;
};

// Few rows: inputs lo .. hi - 1 (run_split_inputs).
static void by_inputs_part(const void *arg, float *out, int64_t i0, int64_t nr, long lo, long hi) {
    const struct by_inputs_job *j = arg;
    const int64_t K = j->C->shape[0], m = j->C->shape[1];
    const size_t rs = peri_row_size(j->C->type, m);
    peri_matmul_nn(out, m, j->x + i0 * K + lo, K, j->C->type, (const char *)j->C->data + (size_t)lo * rs, rs, hi - lo,
                   m, nr);
}

// More rows: the outputs split, in whole 64s, for peri_matmul_nn's GEMM.
static void by_inputs_task(void *arg, int ith, int nth) {
    const struct by_inputs_job *j = arg;
    const int64_t K = j->C->shape[0], m = j->C->shape[1];
    const size_t rs = peri_row_size(j->C->type, m), esz = rs / (size_t)m;
    long lo, hi;
    peri_split((long)((m + 63) / 64), ith, nth, &lo, &hi);
    const int64_t j0 = (int64_t)lo * 64, j1 = (int64_t)hi * 64 < m ? (int64_t)hi * 64 : m;
    if (j0 < j1)
        peri_matmul_nn(j->y + j0, m, j->x, K, j->C->type, (const char *)j->C->data + (size_t)j0 * esz, rs, K, j1 - j0,
                       j->n);
}

void peri_matmul_by_inputs(peri_pool *pool, float *y, const float *x, const peri_tensor *C, int64_t n) {
    const int64_t K = C->shape[0], m = C->n_dims == 2 ? C->shape[1] : 0;
    if (n <= 0 || K <= 0) return;
    if (m <= 0 || (C->type != PERI_TYPE_F32 && C->type != PERI_TYPE_F16 && C->type != PERI_TYPE_BF16)) {
        peri_fail(PERI_E_UNSUPPORTED, "matmul_by_inputs: '%s' is not a K x m float matrix (type %s, %d dims)",
                  C->name ? C->name : "?", peri_type_name(C->type), C->n_dims);
        for (int64_t i = 0; i < n * (m > 0 ? m : 0); i++) y[i] = NAN;
        return;
    }
    struct by_inputs_job j = {.C = C, .y = y, .x = x, .n = n};
    if (n <= PERI_NN_SPARSE_ROWS) run_split_inputs(pool, y, m, n, PERI_NN_SPARSE_ROWS, (long)K, by_inputs_part, &j);
    else peri_pool_run(pool, by_inputs_task, &j);
}

void peri_matmul_t(peri_pool *pool, float *y, const float *x, const peri_tensor *W, int64_t n) {
    const int64_t m = W->shape[0], K = W->n_dims == 2 ? W->shape[1] : 0;
    if (m <= 0 || n <= 0) return;
    const int base = peri_t_base(W->type);
    if (base < 0 || peri_t_layout(base, m, K) != W->type) {
        peri_fail(PERI_E_UNSUPPORTED, "matmul_t: weight '%s' is not an m x K matrix in a T layout (type %s, %lld x %lld)",
                  W->name ? W->name : "?", peri_type_name(W->type), (long long)m, (long long)K);
        for (int64_t i = 0; i < n * m; i++) y[i] = NAN;
        return;
    }
    const struct peri_kernel_set *ks = peri_kernels_current();
    const int nth = peri_pool_size(pool);
    struct t_job j = {.t_type = W->type, .base = base, .y = y, .x = x, .c = W->data, .m = m, .K = K, .n = n};
    j.e = choose_kernel(ks, base, n, W->flags);
    j.x_type = j.e->fn ? j.e->x_type : PERI_TYPE_F32;
    if (n <= peri_t_sparse_rows(W->type)) {
        run_split_inputs(pool, y, m, n, PERI_T_DECODE_ROWS, (long)(K / peri_t_group(W->type)), t_part, &j);
        return;
    }
    if (W->type == PERI_TYPE_Q8_0_T && j.x_type == PERI_TYPE_F32 && j.e->fn && ks->q8t_mm) {
        j.gemm = ks->q8t_mm;   // the float GEMM: no panels, no scratch
        peri_pool_run(pool, t_task, &j);
        return;
    }
    const int xt = j.x_type;
    const struct peri_type_traits *xtt = peri_type_traits(xt);
    j.xrs = xt == PERI_TYPE_F32 ? (size_t)K * sizeof(float) : peri_row_size(xt, K);
    const size_t xbytes = xt == PERI_TYPE_F32 ? 0 : j.xrs * (size_t)n;
    // Q8_0_T with Q8_0 x where the level packs the layout itself: scratch for x only
    if (W->type == PERI_TYPE_Q8_0_T && xt == PERI_TYPE_Q8_0 && j.e->fn && ks->q8t_qmm) j.qgemm = ks->q8t_qmm;
    char *buf = peri_pool_scratch_acquire(
        pool, j.qgemm ? t_align(xbytes) : t_prefill_bytes(nth, xbytes, t_panel_bytes(W->type, K)));
    if (!buf || (xt != PERI_TYPE_F32 && !xtt->from_float)) {   // no scratch: the decode kernel, 4 rows at a time
        if (buf) peri_pool_scratch_release(pool);
        peri_t_nn(W->type, y, m, x, K, W->data, m, 0, m, K / peri_t_group(W->type), n, j.x_type);
        return;
    }
    j.panels = buf + t_align(xbytes);
    j.pstride = t_align(t_panel_bytes(W->type, K));
    if (xt == PERI_TYPE_F32) {
        j.xq = (const char *)x;
    } else {
        struct qx_job q = {.from_float = ks->quantize_x[xt] ? ks->quantize_x[xt] : xtt->from_float, .x = x,
                           .ldx = K, .K = K, .n = n, .dst = buf, .xrs = j.xrs};
        quantize_x(pool, &q);
        j.xq = buf;
    }
    peri_pool_run(pool, t_task, &j);
    peri_pool_scratch_release(pool);
}
