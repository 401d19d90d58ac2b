// Scalar reference kernels: the readable definition every SIMD version is tested against.
#include "kernels/ops.h"
#include "kernels/kernels_impl.h"
#include "tensor/repack.h"

#include <math.h>
#include <string.h>

float peri_dot_ref(const float *a, const float *b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void peri_layernorm_ref(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    // two-pass mean/variance in float32 as torch.nn.LayerNorm on CPU (biased variance)
    float mean = 0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    float var = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        var += d * d;
    }
    var /= (float)n;
    float rs = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * rs;
        y[i] = v * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
    }
}

void peri_rmsnorm_ref(float *y, const float *x, const float *w, int64_t n, float eps) {
    float ss = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float rs = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * rs * (w ? w[i] : 1.0f);
}

void peri_softmax_ref(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float s = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    float inv = 1.0f / s;
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void peri_rope_table(float *cos_tab, float *sin_tab, int64_t n_pos, int n_rot, double theta) {
    // As torchtune / HF: inv_freq = 1 / theta^(2i/d) in float32, angle = float32(pos) * inv_freq in float32,
    // then cos/sin of the float32 angle.
    int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        float inv_freq = (float)(1.0 / pow(theta, (double)(2 * i) / (double)n_rot));
        for (int64_t p = 0; p < n_pos; p++) {
            float ang = (float)p * inv_freq;
            cos_tab[p * half + i] = cosf(ang);
            sin_tab[p * half + i] = sinf(ang);
        }
    }
}

void peri_rope_apply(float *x, int n_rot, const float *c, const float *s, int interleaved) {
    int half = n_rot / 2;
    if (interleaved) {
        for (int i = 0; i < half; i++) {
            float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * c[i] - x1 * s[i];
            x[2 * i + 1] = x1 * c[i] + x0 * s[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            float x0 = x[i], x1 = x[i + half];
            x[i] = x0 * c[i] - x1 * s[i];
            x[i + half] = x1 * c[i] + x0 * s[i];
        }
    }
}

void peri_gemm_f32_ref(float *C, const float *A, const float *B, int m, int n, int k, int accumulate) {
    for (int i = 0; i < m; i++) {
        float *c = C + (int64_t)i * n;
        if (!accumulate) memset(c, 0, sizeof(float) * (size_t)n);
        for (int p = 0; p < k; p++) {
            float a = A[(int64_t)i * k + p];
            const float *b = B + (int64_t)p * n;
            for (int j = 0; j < n; j++) c[j] += a * b[j];
        }
    }
}

void peri_matmul_nn_ref(float *y, int64_t ldy, const float *x, int64_t ldx, int type, const void *c, size_t cs,
                        int64_t K, int64_t m, int64_t n) {
    const struct peri_type_traits *tt = peri_type_traits(type);
    if (type != PERI_TYPE_F32 && type != PERI_TYPE_F16 && type != PERI_TYPE_BF16) {
        // block types: the reference dequantizer, a chunk of columns at a time
        float buf[PERI_NN_CHUNK];
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) y[i * ldy + j] = 0.0f;
        if (!tt || !tt->to_float) return;
        for (int64_t j0 = 0; j0 < m; j0 += PERI_NN_CHUNK) {
            const int64_t w = m - j0 < PERI_NN_CHUNK ? m - j0 : PERI_NN_CHUNK;
            for (int64_t k = 0; k < K; k++) {
                tt->to_float((const char *)c + (size_t)k * cs + peri_row_size(type, j0), buf, w);
                for (int64_t i = 0; i < n; i++)
                    for (int64_t j = 0; j < w; j++) y[i * ldy + j0 + j] += x[i * ldx + k] * buf[j];
            }
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float *yi = y + i * ldy;
        for (int64_t j = 0; j < m; j++) yi[j] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const char *row = (const char *)c + (size_t)k * cs;
            const float a = x[i * ldx + k];
            for (int64_t j = 0; j < m; j++) {
                float v = type == PERI_TYPE_F32 ? ((const float *)row)[j]
                        : type == PERI_TYPE_F16 ? peri_f16_to_f32(((const uint16_t *)row)[j])
                                                : peri_bf16_to_f32(((const uint16_t *)row)[j]);
                yi[j] += a * v;
            }
        }
    }
}

// Weight row c0 + j's input k, from the layout's definition (tensor/repack.h), summed in input order.
static float t_value(int t_type, const char *c, int64_t mw, int64_t j, int64_t k) {
    const int64_t G = peri_t_group(t_type), i = k % G;
    const int kind = peri_t_kind(t_type);
    const char *grp = c + (size_t)(k / G) * peri_t_group_bytes(t_type, mw);
    const uint8_t *code = (const uint8_t *)grp + peri_t_codes_offset(kind, mw) + (size_t)i * peri_t_code_stride(kind, mw);
    if (kind == PERI_T_Q8_0) {
        uint16_t h;
        memcpy(&h, grp + 2 * j, 2);
        return peri_f16_to_f32(h) * (float)((const int8_t *)code)[j];
    }
    if (kind == PERI_T_Q4_K) {
        float sc, mn;
        peri_q4_k_t_scale(grp, mw, j, (int)(i / 32), &sc, &mn);
        return sc * (float)peri_t_nibble(code, j) - mn;
    }
    const int q = peri_t_nibble(code, j) | peri_t_crumb(code + mw / 2, j) << 4;
    return peri_q6_k_t_scale(grp, mw, j, (int)(i / 16)) * (float)(q - 32);
}

void peri_t_nn_ref(int t_type, float *y, int64_t ldy, const float *x, int64_t ldx, const void *c, int64_t mw,
                   int64_t c0, int64_t m, int64_t G, int64_t n) {
    const int64_t K = G * peri_t_group(t_type);
    for (int64_t j = 0; j < m; j++)
        for (int64_t i = 0; i < n; i++) {
            float t = 0;
            for (int64_t k = 0; k < K; k++) t += x[i * ldx + k] * t_value(t_type, c, mw, c0 + j, k);
            y[i * ldy + j] += t;
        }
}

void peri_get_row_ref(const peri_tensor *W, int64_t r, float *out) {
    int64_t K = W->shape[W->n_dims - 1];
    size_t rs = peri_row_size(W->type, K);
    peri_type_traits(W->type)->to_float((const char *)W->data + (size_t)r * rs, out, K);
}

// ---- matmul -------------------------------------------------------------------------------------------------

struct matmul_args {
    float *y;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    const peri_tensor *W;
    int64_t row0, M, n;
    const float *bias;
};

static void matmul_ref_task(void *arg, int ith, int nth) {
    const struct matmul_args *a = arg;
    int64_t K = a->W->shape[a->W->n_dims - 1];
    size_t rs = peri_row_size(a->W->type, K);
    peri_dot_f32_fn dot = peri_type_traits(a->W->type)->dot_f32;
    long lo, hi;
    peri_split((long)a->M, ith, nth, &lo, &hi);
    for (int64_t j = lo; j < hi; j++) {
        const void *row = (const char *)a->W->data + (size_t)(a->row0 + j) * rs;
        float b = a->bias ? a->bias[j] : 0.0f;
        for (int64_t i = 0; i < a->n; i++) a->y[i * a->ldy + j] = dot(row, a->x + i * a->ldx, K) + b;
    }
}

void peri_matmul_ex_ref(peri_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, const peri_tensor *W,
                        int64_t row0, int64_t M, const float *bias, int64_t n) {
    struct matmul_args a = {y, ldy, x, ldx, W, row0, M, n, bias};
    peri_pool_run(pool, matmul_ref_task, &a);
}

void peri_matmul_ref(peri_pool *pool, float *y, const float *x, const peri_tensor *W, const float *bias, int64_t n) {
    int64_t M = W->shape[0], K = W->shape[W->n_dims - 1];
    for (int d = 1; d < W->n_dims - 1; d++) M *= W->shape[d];
    peri_matmul_ex_ref(pool, y, M, x, K, W, 0, M, bias, n);
}

// ---- the reference kernel set -------------------------------------------------------------------------------

void peri_axpy_ref(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void peri_silu_row_ref(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = peri_silu(x[i]);
}

void peri_swiglu_ref(float *y, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = peri_silu(a[i]) * b[i];
}

float peri_sum8_ref(const float *p, int64_t len, int64_t stride) {
    float s = 0;
    for (int r = 0; r < 8; r++)
        for (int64_t i = 0; i < len; i++) s += p[r * stride + i];
    return s;
}

void peri_attn_scores_ref(float *s, int64_t lds, const float *q, int64_t ldq, int64_t nq, int ktype, const void *k,
                          size_t krs, int64_t nk, int64_t D) {
    for (int64_t j = 0; j < nk; j++) {
        const char *row = (const char *)k + (size_t)j * krs;
        for (int64_t i = 0; i < nq; i++) {
            float acc = 0.0f;
            for (int64_t d = 0; d < D; d++) {
                float kv;
                if (ktype == PERI_TYPE_F16) {
                    uint16_t h;
                    memcpy(&h, row + 2 * d, 2);
                    kv = peri_f16_to_f32(h);
                } else {
                    memcpy(&kv, row + 4 * d, 4);
                }
                acc += q[i * ldq + d] * kv;
            }
            s[i * lds + j] = acc;
        }
    }
}

// All mm entries NULL: the dispatcher's generic path then calls each type's dot_f32, the reference.
void peri_f16_to_f32_row_ref(float *y, const uint16_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = peri_f16_to_f32(x[i]);
}

const struct peri_kernel_set peri_kset_ref = {
    .name = "ref",
    .level = PERI_KERNELS_REF,
    .row_align = 1,
    .dot = peri_dot_ref,
    .axpy = peri_axpy_ref,
    .layernorm = peri_layernorm_ref,
    .rmsnorm = peri_rmsnorm_ref,
    .softmax = peri_softmax_ref,
    .silu_row = peri_silu_row_ref,
    .swiglu = peri_swiglu_ref,
    .sum8 = peri_sum8_ref,
};
