// CPU feature detection (run time), used to pick the SIMD level of the kernels.
#ifndef PERI_RUNTIME_CPU_H
#define PERI_RUNTIME_CPU_H

#include <stdbool.h>
#include <stddef.h>

struct peri_cpu {
    // x86-64: each flag is set only when both the CPU reports it and the OS saves the register state.
    bool sse42, avx, avx2, fma, f16c;
    bool avx512f, avx512dq, avx512bw, avx512vl, avx512vnni, avx512bf16, avx512fp16;
    // AMX-TILE and AMX-INT8 with the tile state enabled in XCR0; Linux still has to grant each process its use.
    bool amx_int8;
    bool amx_bf16, avx512vbmi;   // AMX-BF16 (with the same tile state), AVX512-VBMI
    // AArch64
    bool neon, neon_dotprod, neon_fp16;
};

// Detected once (thread-safe); never NULL.
const struct peri_cpu *peri_cpu(void);
// Space-separated names of the detected features ("avx2 fma f16c avx512f ..."), into buf; returns buf.
const char *peri_cpu_describe(char *buf, size_t size);

#endif
