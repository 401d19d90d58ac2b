// CPU feature detection with cpuid/xgetbv on x86-64 and the auxiliary vector on AArch64.
#include "runtime/cpu.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

static struct peri_cpu g_cpu;
static pthread_once_t g_cpu_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    // Raw opcode of xgetbv so that no target attribute is needed to assemble it.
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

static void detect(void) {
    struct peri_cpu c;
    memset(&c, 0, sizeof c);
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, cx, d;
    if (__get_cpuid(1, &a, &b, &cx, &d)) {
        c.sse42 = (cx >> 20) & 1;
        bool osxsave = (cx >> 27) & 1;
        // The OS must save the YMM (and for AVX-512 the opmask/ZMM) state, otherwise the
        // instructions fault even though cpuid lists them.
        unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
        bool os_avx = (xcr0 & 0x6) == 0x6;
        bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;
        c.avx = os_avx && ((cx >> 28) & 1);
        c.fma = c.avx && ((cx >> 12) & 1);
        c.f16c = c.avx && ((cx >> 29) & 1);
        unsigned max_leaf = __get_cpuid_max(0, NULL);
        if (max_leaf >= 7) {
            __cpuid_count(7, 0, a, b, cx, d);
            c.avx2 = c.avx && ((b >> 5) & 1);
            c.avx512f = os_avx512 && ((b >> 16) & 1);
            c.avx512dq = c.avx512f && ((b >> 17) & 1);
            c.avx512bw = c.avx512f && ((b >> 30) & 1);
            c.avx512vl = c.avx512f && ((b >> 31) & 1);
            c.avx512vnni = c.avx512f && ((cx >> 11) & 1);
            c.avx512fp16 = c.avx512f && ((d >> 23) & 1);
            // AMX-TILE, AMX-INT8; XCR0 bits 17-18: XTILECFG, XTILEDATA
            c.amx_int8 = c.avx512f && ((d >> 24) & 1) && ((d >> 25) & 1) && (xcr0 & 0x60000) == 0x60000;
            c.amx_bf16 = c.avx512f && ((d >> 24) & 1) && ((d >> 22) & 1) && (xcr0 & 0x60000) == 0x60000;
            c.avx512vbmi = c.avx512f && ((cx >> 1) & 1);
            unsigned max_sub = a;
            if (max_sub >= 1) {
                __cpuid_count(7, 1, a, b, cx, d);
                c.avx512bf16 = c.avx512f && ((a >> 5) & 1);
            }
        }
    }
#elif defined(__aarch64__)
    c.neon = true; // Advanced SIMD is mandatory on AArch64
#if defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP);
    c.neon_fp16 = (hw >> 10) & 1;     // HWCAP_ASIMDHP
    c.neon_dotprod = (hw >> 20) & 1;  // HWCAP_ASIMDDP
#endif
#endif
    g_cpu = c;
}

const struct peri_cpu *peri_cpu(void) {
    pthread_once(&g_cpu_once, detect);
    return &g_cpu;
}

const char *peri_cpu_describe(char *buf, size_t size) {
    const struct peri_cpu *c = peri_cpu();
    struct { bool on; const char *name; } f[] = {
        {c->sse42, "sse4.2"}, {c->avx, "avx"}, {c->avx2, "avx2"}, {c->fma, "fma"}, {c->f16c, "f16c"},
        {c->avx512f, "avx512f"}, {c->avx512dq, "avx512dq"}, {c->avx512bw, "avx512bw"},
        {c->avx512vl, "avx512vl"}, {c->avx512vnni, "avx512vnni"}, {c->avx512bf16, "avx512bf16"},
        {c->avx512fp16, "avx512fp16"}, {c->amx_int8, "amx-int8"}, {c->amx_bf16, "amx-bf16"}, {c->neon, "neon"}, {c->neon_dotprod, "dotprod"},
        {c->neon_fp16, "fp16"},
    };
    if (!size) return buf;
    buf[0] = 0;
    size_t len = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (!f[i].on) continue;
        int w = snprintf(buf + len, size - len, "%s%s", len ? " " : "", f[i].name);
        if (w < 0 || (size_t)w >= size - len) break;
        len += (size_t)w;
    }
    return buf;
}
