// ARMv8.2 dot-product (vdotq_s32) integer-dot matmul kernels; AArch64 only. dispatch.c lays these entries over a
// copy of the NEON set to form the "neondot" level, chosen at run time when the CPU reports dotprod (HWCAP_ASIMDDP),
// so neither the library nor its users need -march / -mcpu flags for them.
#if defined(__aarch64__)
#include "kernels/kernels_impl.h"
#include "tensor/quants.h"

#include <arm_neon.h>
#include <string.h>

// GCC enables dotprod for this file only through its target pragma (arm_neon.h defines vdotq_s32 under its own
// pragma, whatever the command line says). Clang's arm_neon.h (up to 15 at least) declares vdotq_s32 only when
// __ARM_FEATURE_DOTPROD is set, so CMakeLists.txt compiles this one file with -march=armv8.2-a+dotprod there.
#if defined(__clang__)
#if !defined(__ARM_FEATURE_DOTPROD)
#error "compile neon_dotprod.c with -march=armv8.2-a+dotprod (CMakeLists.txt does so for clang)"
#endif
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif

#define QMM_DOTPROD 1
#include "kernels/arch/arm/qmm_neon.inc"

#if !defined(__clang__)
#pragma GCC pop_options
#endif

const struct peri_mm_kernel peri_qmm_neon_dotprod[PERI_TYPE_COUNT] = {QMM_NEON_ENTRIES};

#else
typedef int peri_neon_dotprod_unused; // ISO C wants a non-empty translation unit
#endif
