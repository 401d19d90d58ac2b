// Every training op's backward (float64 `_ref` versions) against central finite differences of its forward,
// on tiny random shapes; the float32 versions against the float64 ones; the DAG gradient; AdamW,
// clipping and the LR schedules against their formulas.
#include "test.h"

#include "kernels/ops.h"
#include "train/tops.h"
#include "train/train.h"

#include <stdint.h>

static uint64_t rng = 88172645463325252ull;
static double urand(void) {   // xorshift64, uniform in [-1, 1)
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}
static double *rnd(int n, double lo, double hi) {
    double *x = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) x[i] = lo + (hi - lo) * (urand() + 1) / 2;
    return x;
}
static double *zeros(int n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

// The test loss is <c, y> for a fixed random c, so dL/dy = c.
typedef struct op op;
struct op {
    const char *name;
    int n_in;
    double *in[4];
    int len[4];
    double *grad[4];
    int n_out;
    double *c;
    void (*fwd)(op *o, double *y);
    void (*bwd)(op *o, const double *dy);
    int ival[4];
    const float *cs, *sn;
};

static double loss_of(op *o) {
    double *y = zeros(o->n_out);
    o->fwd(o, y);
    double s = 0;
    for (int i = 0; i < o->n_out; i++) s += o->c[i] * y[i];
    free(y);
    return s;
}

static void fd_check(op *o) {
    o->c = rnd(o->n_out, -1, 1);
    for (int k = 0; k < o->n_in; k++) o->grad[k] = zeros(o->len[k]);
    o->bwd(o, o->c);
    double worst = 0;
    for (int k = 0; k < o->n_in; k++)
        for (int i = 0; i < o->len[k]; i++) {
            double save = o->in[k][i], h = 1e-6 * fmax(1, fabs(save));
            o->in[k][i] = save + h;
            double lp = loss_of(o);
            o->in[k][i] = save - h;
            double lm = loss_of(o);
            o->in[k][i] = save;
            double fd = (lp - lm) / (2 * h), err = fabs(fd - o->grad[k][i]) / fmax(1, fabs(fd));
            if (err > worst) worst = err;
        }
    CHECKF(worst < 1e-6, "%s: worst FD error %.3g", o->name, worst);
    printf("  %-22s FD error %.1e\n", o->name, worst);
    for (int k = 0; k < o->n_in; k++) { free(o->in[k]); free(o->grad[k]); }
    free(o->c);
}

enum { NR = 3, K = 5, M = 4 };
static void lin_f(op *o, double *y) { peri_tr_linear_fwd_ref(y, o->in[0], o->in[1], o->in[2], NR, K, M); }
static void lin_b(op *o, const double *dy) { peri_tr_linear_bwd_ref(o->grad[0], o->grad[1], o->grad[2], dy, o->in[0], o->in[1], NR, K, M); }
static void mm_f(op *o, double *y) { peri_tr_mm_fwd_ref(y, o->in[0], o->in[1], NR, M, K); }
static void mm_b(op *o, const double *dy) { peri_tr_mm_bwd_ref(o->grad[0], o->grad[1], dy, o->in[0], o->in[1], NR, M, K); }
static void ln_f(op *o, double *y) {
    double m[NR], r[NR];
    peri_tr_layernorm_fwd_ref(y, m, r, o->in[0], o->in[1], o->in[2], NR, K, 1e-6);
}
static void ln_b(op *o, const double *dy) {
    double m[NR], r[NR], y[NR * K];
    peri_tr_layernorm_fwd_ref(y, m, r, o->in[0], o->in[1], o->in[2], NR, K, 1e-6);
    peri_tr_layernorm_bwd_ref(o->grad[0], o->grad[1], o->grad[2], dy, o->in[0], m, r, o->in[1], NR, K);
}
static void rms_f(op *o, double *y) { double r[NR]; peri_tr_rmsnorm_fwd_ref(y, r, o->in[0], o->in[1], NR, K, 1e-6); }
static void rms_b(op *o, const double *dy) {
    double r[NR], y[NR * K];
    peri_tr_rmsnorm_fwd_ref(y, r, o->in[0], o->in[1], NR, K, 1e-6);
    peri_tr_rmsnorm_bwd_ref(o->grad[0], o->grad[1], dy, o->in[0], r, o->in[1], NR, K);
}
static void rope_f(op *o, double *y) {
    memcpy(y, o->in[0], sizeof(double) * 8);
    peri_tr_rope_ref(y, 6, o->cs, o->sn, o->ival[0], 0);   // 6 of 8 dims rotated: the tail passes through
}
static void rope_b(op *o, const double *dy) {
    double g[8];
    memcpy(g, dy, sizeof g);
    peri_tr_rope_ref(g, 6, o->cs, o->sn, o->ival[0], 1);
    for (int i = 0; i < 8; i++) o->grad[0][i] += g[i];
}
static void swi_f(op *o, double *y) { peri_tr_swiglu_fwd_ref(y, o->in[0], o->in[1], o->len[0]); }
static void swi_b(op *o, const double *dy) { peri_tr_swiglu_bwd_ref(o->grad[0], o->grad[1], dy, o->in[0], o->in[1], o->len[0]); }
static void isw_f(op *o, double *y) { peri_tr_iswiglu_fwd_ref(y, o->in[0], o->len[0]); }
static void isw_b(op *o, const double *dy) { peri_tr_iswiglu_bwd_ref(o->grad[0], dy, o->in[0], o->len[0]); }
static void pow_f(op *o, double *y) { peri_tr_pow_fwd_ref(y, o->in[0], o->in[1], o->len[0]); }
static void pow_b(op *o, const double *dy) {
    double y[16];
    peri_tr_pow_fwd_ref(y, o->in[0], o->in[1], o->len[0]);
    peri_tr_pow_bwd_ref(o->grad[0], o->grad[1], dy, o->in[0], o->in[1], y, o->len[0]);
}
static void relu2_f(op *o, double *y) { peri_tr_relu2_fwd_ref(y, o->in[0], o->len[0]); }
static void relu2_b(op *o, const double *dy) { peri_tr_relu2_bwd_ref(o->grad[0], dy, o->in[0], o->len[0]); }
enum { AT = 4, ADK = 3, ADV = 2 };
static const uint8_t keep_mask[AT] = {1, 0, 1, 1};
static void attn_f(op *o, double *y) {
    double P[AT * AT];
    peri_tr_attn_fwd_ref(y, P, o->in[0], o->in[1], o->in[2], o->ival[0] ? keep_mask : NULL, AT, ADK, ADV, 0.7);
}
static void attn_b(op *o, const double *dy) {
    double P[AT * AT], y[AT * ADV], tmp[AT];
    peri_tr_attn_fwd_ref(y, P, o->in[0], o->in[1], o->in[2], o->ival[0] ? keep_mask : NULL, AT, ADK, ADV, 0.7);
    peri_tr_attn_bwd_ref(o->grad[0], o->grad[1], o->grad[2], dy, P, o->in[0], o->in[1], o->in[2], AT, ADK, ADV, 0.7, tmp);
}
// cross-entropy: a scalar output (n_out 1)
static void xent_f(op *o, double *y) { y[0] = peri_tr_xent_ref(NULL, o->in[0], o->len[0], 2, 1); }
static void xent_b(op *o, const double *dy) { peri_tr_xent_ref(o->grad[0], o->in[0], o->len[0], 2, dy[0]); }
// the DAG building block: log tr(expm(X))
enum { DD = 4 };
static void lte_f(op *o, double *y) { double w[4 * DD * DD]; y[0] = peri_tr_log_trace_expm(o->in[0], DD, NULL, w); }
static void lte_b(op *o, const double *dy) {
    double w[4 * DD * DD], g[DD * DD];
    peri_tr_log_trace_expm(o->in[0], DD, g, w);
    for (int i = 0; i < DD * DD; i++) o->grad[0][i] += dy[0] * g[i];
}

static void op_tests(void) {
    float ctab[8 * 3], stab[8 * 3];
    peri_rope_table(ctab, stab, 8, 6, 10000.0);
    op o;
#define OP(nm, nin, nout, f, b) memset(&o, 0, sizeof o), o.name = nm, o.n_in = nin, o.n_out = nout, o.fwd = f, o.bwd = b
    OP("linear", 3, NR * M, lin_f, lin_b);
    o.in[0] = rnd(o.len[0] = NR * K, -1, 1); o.in[1] = rnd(o.len[1] = M * K, -1, 1); o.in[2] = rnd(o.len[2] = M, -1, 1);
    fd_check(&o);
    OP("matmul", 2, NR * M, mm_f, mm_b);
    o.in[0] = rnd(o.len[0] = NR * K, -1, 1); o.in[1] = rnd(o.len[1] = K * M, -1, 1);
    fd_check(&o);
    OP("layernorm", 3, NR * K, ln_f, ln_b);
    o.in[0] = rnd(o.len[0] = NR * K, -2, 2); o.in[1] = rnd(o.len[1] = K, -1, 1); o.in[2] = rnd(o.len[2] = K, -1, 1);
    fd_check(&o);
    OP("rmsnorm", 2, NR * K, rms_f, rms_b);
    o.in[0] = rnd(o.len[0] = NR * K, -2, 2); o.in[1] = rnd(o.len[1] = K, -1, 1);
    fd_check(&o);
    for (int style = 0; style < 2; style++) {
        OP(style ? "rope interleaved" : "rope neox", 1, 8, rope_f, rope_b);
        o.ival[0] = style;
        o.cs = ctab + 5 * 3;   // position 5 (position 0 would be the identity)
        o.sn = stab + 5 * 3;
        o.in[0] = rnd(o.len[0] = 8, -1, 1);
        fd_check(&o);
    }
    OP("swiglu", 2, 12, swi_f, swi_b);
    o.in[0] = rnd(o.len[0] = 12, -3, 3); o.in[1] = rnd(o.len[1] = 12, -3, 3);
    fd_check(&o);
    OP("iswiglu", 1, 12, isw_f, isw_b);
    o.in[0] = rnd(o.len[0] = 12, -4, 4);
    fd_check(&o);
    OP("power law", 2, 12, pow_f, pow_b);
    o.in[0] = rnd(o.len[0] = 12, 0.05, 3); o.in[1] = rnd(o.len[1] = 12, -2, 2);
    fd_check(&o);
    OP("squared relu", 1, 12, relu2_f, relu2_b);
    o.in[0] = rnd(o.len[0] = 12, -2, 2);
    for (int i = 0; i < 12; i++) if (fabs(o.in[0][i]) < 1e-3) o.in[0][i] = 0.5;   // away from the kink
    fd_check(&o);
    for (int masked = 0; masked < 2; masked++) {
        OP(masked ? "attention, key mask" : "causal attention", 3, AT * ADV, attn_f, attn_b);
        o.ival[0] = masked;
        o.in[0] = rnd(o.len[0] = AT * ADK, -1, 1); o.in[1] = rnd(o.len[1] = AT * ADK, -1, 1);
        o.in[2] = rnd(o.len[2] = AT * ADV, -1, 1);
        fd_check(&o);
    }
    OP("cross-entropy", 1, 1, xent_f, xent_b);
    o.in[0] = rnd(o.len[0] = 7, -3, 3);
    fd_check(&o);
    OP("log tr expm", 1, 1, lte_f, lte_b);
    o.in[0] = rnd(o.len[0] = DD * DD, -2, 2);
    fd_check(&o);
#undef OP
}

// float32 versions agree with the float64 ones (the model uses the float32 ones)
static void float_vs_double(void) {
    enum { R = 4, N = 16 };
    double x[R * N], w[N], b[N], dy[R * N], y[R * N], m[R], r[R], dx[R * N] = {0}, dw[N] = {0}, db[N] = {0};
    float xf[R * N], wf[N], bf[N], dyf[R * N], yf[R * N], mf[R], rf[R], dxf[R * N] = {0}, dwf[N] = {0}, dbf[N] = {0};
    for (int i = 0; i < R * N; i++) { xf[i] = (float)urand(); x[i] = xf[i]; dyf[i] = (float)urand(); dy[i] = dyf[i]; }
    for (int i = 0; i < N; i++) { wf[i] = (float)urand(); w[i] = wf[i]; bf[i] = (float)urand(); b[i] = bf[i]; }
    peri_tr_layernorm_fwd_ref(y, m, r, x, w, b, R, N, 1e-6);
    peri_tr_layernorm_bwd_ref(dx, dw, db, dy, x, m, r, w, R, N);
    peri_tr_layernorm_fwd(yf, mf, rf, xf, wf, bf, R, N, 1e-6f);
    peri_tr_layernorm_bwd(dxf, dwf, dbf, dyf, xf, mf, rf, wf, R, N);
    double e = 0;
    for (int i = 0; i < R * N; i++) e = fmax(e, fmax(fabs(y[i] - yf[i]), fabs(dx[i] - dxf[i])));
    for (int i = 0; i < N; i++) e = fmax(e, fmax(fabs(dw[i] - dwf[i]), fabs(db[i] - dbf[i])));
    CHECKF(e < 1e-5, "layernorm float vs double %.3g", e);
    // threaded linear backward vs the scalar reference
    enum { n = 5, Ki = 7, Mo = 6 };
    float X[n * Ki], W[Mo * Ki], B[Mo], G[n * Mo], dX1[n * Ki] = {0}, dW1[Mo * Ki] = {0}, dB1[Mo] = {0};
    float dX2[n * Ki] = {0}, dW2[Mo * Ki] = {0}, dB2[Mo] = {0}, Y1[n * Mo], Y2[n * Mo];
    for (int i = 0; i < n * Ki; i++) X[i] = (float)urand();
    for (int i = 0; i < Mo * Ki; i++) W[i] = (float)urand();
    for (int i = 0; i < Mo; i++) B[i] = (float)urand();
    for (int i = 0; i < n * Mo; i++) G[i] = (float)urand();
    peri_pool *pool = peri_pool_new(2);
    peri_tr_lin_fwd(pool, Y1, X, W, B, n, Ki, Mo);
    peri_tr_linear_fwd(Y2, X, W, B, n, Ki, Mo);
    peri_tr_lin_bwd(pool, dX1, dW1, dB1, G, X, W, n, Ki, Mo);
    peri_tr_linear_bwd(dX2, dW2, dB2, G, X, W, n, Ki, Mo);
    CHECK(test_max_abs_diff(Y1, Y2, n * Mo) < 1e-5);
    CHECK(test_max_abs_diff(dX1, dX2, n * Ki) < 1e-5);
    CHECK(test_max_abs_diff(dW1, dW2, Mo * Ki) < 1e-5);
    CHECK(test_max_abs_diff(dB1, dB2, Mo) < 1e-5);
    peri_pool_free(pool);
}

static void optim_tests(void) {
    // AdamW: two steps by hand in double against the float implementation
    float p[3] = {0.5f, -1.0f, 2.0f}, g1[3] = {0.1f, -0.2f, 0.0f}, g2[3] = {0.3f, 0.1f, -0.5f}, m[3] = {0}, v[3] = {0};
    double pd[3] = {0.5, -1.0, 2.0}, md[3] = {0}, vd[3] = {0};
    struct peri_adamw h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-5, .weight_decay = 0.1};
    for (int s = 1; s <= 2; s++) {
        const float *g = s == 1 ? g1 : g2;
        peri_adamw_step_ref(p, g, m, v, 3, &h, s);
        for (int i = 0; i < 3; i++) {
            pd[i] *= 1 - h.lr * h.weight_decay;
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.95 * vd[i] + 0.05 * (double)g[i] * g[i];
            double mh = md[i] / (1 - pow(0.9, s)), vh = vd[i] / (1 - pow(0.95, s));
            pd[i] -= h.lr * mh / (sqrt(vh) + h.eps);   // torch: lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        }
    }
    for (int i = 0; i < 3; i++) CHECKF(fabs(p[i] - pd[i]) < 1e-6, "adamw p[%d] %.8f vs %.8f", i, p[i], pd[i]);
    float c[4] = {3, -4, 0.5f, -0.5f};
    peri_clip_value(c, 4, 1);
    CHECK(c[0] == 1 && c[1] == -1 && c[2] == 0.5f);
    float c2[2] = {3, 4};
    double nrm = peri_clip_norm(c2, 2, 1);
    CHECK(fabs(nrm - 5) < 1e-9 && fabs(sqrt(c2[0] * c2[0] + c2[1] * c2[1]) - 1) < 1e-5);
    struct peri_schedule cs = {.kind = PERI_SCHED_COSINE, .lr = 1e-3, .min_lr = 1e-4, .warmup = 10, .total = 110};
    CHECK(fabs(peri_schedule_lr(&cs, 0) - 1e-4) < 1e-12);          // (0+1)/10 of the peak
    CHECK(fabs(peri_schedule_lr(&cs, 9) - 1e-3) < 1e-12);
    CHECK(fabs(peri_schedule_lr(&cs, 60) - 5.5e-4) < 1e-12);       // half way down the cosine
    CHECK(fabs(peri_schedule_lr(&cs, 200) - 1e-4) < 1e-12);
    struct peri_schedule ws = {.kind = PERI_SCHED_WSD, .lr = 1e-3, .min_lr = 1e-5, .warmup = 10, .total = 100, .decay = 20};
    CHECK(fabs(peri_schedule_lr(&ws, 50) - 1e-3) < 1e-12);          // stable
    CHECK(fabs(peri_schedule_lr(&ws, 90) - (1e-3 + (1e-5 - 1e-3) * 0.5)) < 1e-12);   // half way through the decay
    CHECK(fabs(peri_schedule_lr(&ws, 150) - 1e-5) < 1e-12);         // constant afterwards
}

int main(void) {
    op_tests();
    float_vs_double();
    optim_tests();
    return TEST_END();
}
