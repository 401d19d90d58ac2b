// Training ops: forward and backward per op, float32 and float64 (`_ref`); see tops_tmpl.h for the
// conventions (row-major, backward accumulates into gradients, NULL bias = none).
#ifndef PERI_TRAIN_TOPS_H
#define PERI_TRAIN_TOPS_H

#include <stdint.h>

void peri_tr_linear_fwd(float *y, const float *x, const float *W, const float *b, int64_t n, int64_t K, int64_t M);
void peri_tr_linear_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int64_t n, int64_t K, int64_t M);
void peri_tr_mm_fwd(float *C, const float *A, const float *B, int m, int n, int k);
void peri_tr_mm_bwd(float *dA, float *dB, const float *dC, const float *A, const float *B, int m, int n, int k);
void peri_tr_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int64_t rows, int64_t n, float eps);
void peri_tr_layernorm_bwd(float *dx, float *dw, float *db, const float *dy, const float *x, const float *mean, const float *rstd, const float *w, int64_t rows, int64_t n);
void peri_tr_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t rows, int64_t n, float eps);
void peri_tr_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *rstd, const float *w, int64_t rows, int64_t n);
void peri_tr_rope(float *x, int n_rot, const float *cs, const float *sn, int interleaved, int inverse);
void peri_tr_swiglu_fwd(float *h, const float *a, const float *b, int64_t n);
void peri_tr_swiglu_bwd(float *da, float *db, const float *dh, const float *a, const float *b, int64_t n);
void peri_tr_iswiglu_fwd(float *y, const float *z, int64_t n);
void peri_tr_iswiglu_bwd(float *dz, const float *dy, const float *z, int64_t n);
void peri_tr_pow_fwd(float *y, const float *x, const float *p, int64_t n);
void peri_tr_pow_bwd(float *dx, float *dp, const float *dy, const float *x, const float *p, const float *y, int64_t n);
void peri_tr_relu2_fwd(float *y, const float *x, int64_t n);
void peri_tr_relu2_bwd(float *dx, const float *dy, const float *x, int64_t n);
void peri_tr_attn_fwd(float *O, float *P, const float *Q, const float *K, const float *V, const uint8_t *keep, int T, int dk, int dv, float scale);
void peri_tr_attn_bwd(float *dQ, float *dK, float *dV, const float *dO, const float *P, const float *Q, const float *K, const float *V, int T, int dk, int dv, float scale, float *tmp);
float peri_tr_xent(float *dz, const float *z, int64_t n, int64_t label, float w);

void peri_tr_linear_fwd_ref(double *y, const double *x, const double *W, const double *b, int64_t n, int64_t K, int64_t M);
void peri_tr_linear_bwd_ref(double *dx, double *dW, double *db, const double *dy, const double *x, const double *W, int64_t n, int64_t K, int64_t M);
void peri_tr_mm_fwd_ref(double *C, const double *A, const double *B, int m, int n, int k);
void peri_tr_mm_bwd_ref(double *dA, double *dB, const double *dC, const double *A, const double *B, int m, int n, int k);
void peri_tr_layernorm_fwd_ref(double *y, double *mean, double *rstd, const double *x, const double *w, const double *b, int64_t rows, int64_t n, double eps);
void peri_tr_layernorm_bwd_ref(double *dx, double *dw, double *db, const double *dy, const double *x, const double *mean, const double *rstd, const double *w, int64_t rows, int64_t n);
void peri_tr_rmsnorm_fwd_ref(double *y, double *rstd, const double *x, const double *w, int64_t rows, int64_t n, double eps);
void peri_tr_rmsnorm_bwd_ref(double *dx, double *dw, const double *dy, const double *x, const double *rstd, const double *w, int64_t rows, int64_t n);
void peri_tr_rope_ref(double *x, int n_rot, const float *cs, const float *sn, int interleaved, int inverse);
void peri_tr_swiglu_fwd_ref(double *h, const double *a, const double *b, int64_t n);
void peri_tr_swiglu_bwd_ref(double *da, double *db, const double *dh, const double *a, const double *b, int64_t n);
void peri_tr_iswiglu_fwd_ref(double *y, const double *z, int64_t n);
void peri_tr_iswiglu_bwd_ref(double *dz, const double *dy, const double *z, int64_t n);
void peri_tr_pow_fwd_ref(double *y, const double *x, const double *p, int64_t n);
void peri_tr_pow_bwd_ref(double *dx, double *dp, const double *dy, const double *x, const double *p, const double *y, int64_t n);
void peri_tr_relu2_fwd_ref(double *y, const double *x, int64_t n);
void peri_tr_relu2_bwd_ref(double *dx, const double *dy, const double *x, int64_t n);
void peri_tr_attn_fwd_ref(double *O, double *P, const double *Q, const double *K, const double *V, const uint8_t *keep, int T, int dk, int dv, double scale);
void peri_tr_attn_bwd_ref(double *dQ, double *dK, double *dV, const double *dO, const double *P, const double *Q, const double *K, const double *V, int T, int dk, int dv, double scale, double *tmp);
double peri_tr_xent_ref(double *dz, const double *z, int64_t n, int64_t label, double w);

#endif
