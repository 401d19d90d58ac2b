// Training ops instantiated twice from tops_tmpl.h: float32 (the trainer) and float64 (`_ref`, for the
// finite-difference tests, where float32 rounding would hide a wrong derivative).
#include "train/tops.h"

#include <math.h>

#define R float
#define FN(name) name
#define EXP expf
#define LOG logf
#define POW powf
#define SQRT sqrtf
#include "train/tops_tmpl.h"
#undef R
#undef FN
#undef EXP
#undef LOG
#undef POW
#undef SQRT

#define R double
#define FN(name) name##_ref
#define EXP exp
#define LOG log
#define POW pow
#define SQRT sqrt
#include "train/tops_tmpl.h"
