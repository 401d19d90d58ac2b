// Training ops instantiated twice from tops_tmpl.h: float32 (the trainer) and float64 (`_ref`, for the
// finite-difference tests, where float32 rounding would hide a wrong derivative).
#include "train/tops.h"

#include "kernels/ops.h"

#include <math.h>

// The attention's inner products: the dispatched SIMD kernels in float32, plain loops in float64.
static inline double dot_d(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static inline void axpy_d(double *y, double a, const double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

#define R float
#define FN(name) name
#define EXP expf
#define LOG logf
#define POW powf
#define SQRT sqrtf
#define DOT peri_dot
#define AXPY peri_axpy
#include "train/tops_tmpl.h"
#undef R
#undef FN
#undef EXP
#undef LOG
#undef POW
#undef SQRT
#undef DOT
#undef AXPY

#define R double
#define FN(name) name##_ref
#define EXP exp
#define LOG log
#define POW pow
#define SQRT sqrt
#define DOT dot_d
#define AXPY axpy_d
#include "train/tops_tmpl.h"
