// PLDR-LLM (power law graph attention), as the Hugging Face fork models/pldrllm computes it.
// Spec: ../shared/specs/pldr.md. One token's path, top to bottom:
//   x = LN_emb(Emb[id] * sqrt(D))
//   per layer (post-norm):
//     q,k,v = x W^T + b; RoPE(q,k) at the token's position
//     [prefill only] A = learner(LN_A(sum_s q_s q_s^T)); A_LM = iSwiGLU(W@A+b)+1e-9; G = a@(A_LM^pw)+ba
//     o = softmax((q G) K^T / sqrt(d) + mask) V;  h = LN1(x + dense(o));  x = LN2(h + GLU(h))
//   logits = final_layer(x)
// G depends on the whole prompt, so it is computed once at prefill and cached (the G-cache) per sequence.
#include "core/error.h"
#include "formats/safetensors.h"
#include "kernels/ops.h"
#include "runtime/model.h"
#include "tensor/repack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- weights ---------------------------------------------------------------------------------------------

enum pldr_custom_g { G_LEARNED = 0, G_IDENTITY, G_RANDOM, G_EXTERNAL };

typedef struct {
    const peri_tensor *w1, *w2, *w3;   // gluw1, gluw2 [hidden, in], gluw3 [out, hidden]
    float *b1, *b2, *b3;               // [hidden], [hidden], [out]; NULL without glu_bias
} pldr_glu;

typedef struct {
    const peri_tensor *wq, *wk, *wv, *dense; // [D, D] each
    float *bq, *bk, *bv, *bdense;            // [D] (NULL without attention_bias)
    // power law graph attention, learned G only
    float *W, *b, *pw, *a, *ba;              // [H, d, d] each
    float *lnA_w, *lnA_b;                    // mha1.layernorm1 [d]
    pldr_glu *res_glu;                       // [n_res * n_dense] metric learner GLUs (d -> A_dff -> d)
    float **res_ln_w, **res_ln_b;            // [n_res] layernormA [d]
    pldr_glu ffn;                            // D -> F -> D
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;    // [D]
} pldr_layer;

typedef struct {
    // hyper-parameters (config.json, PldrllmConfig)
    int V, D, L, H, d, F, A_dff, n_res, n_dense, n_pos;
    float eps;
    double rope_theta;
    int reference_rope;                      // 1: GPT-J interleaved pairs, 0: NeoX half split
    int attention_bias, glu_bias, final_bias, tie;
    int custom_g;                            // enum pldr_custom_g
    // weights
    const peri_tensor *emb;                  // decoder.embedding.weight [V, D]
    float *ln_emb_w, *ln_emb_b;              // decoder.layernorm1 [D]
    pldr_layer *layers;                      // [L]
    const peri_tensor *head;                 // final_layer.weight [V, D] (or emb when tied)
    float *head_b;                           // final_layer.bias [V]
    float *fixed_G;                          // custom G: [L, H, d, d] (A and A_LM cached as given)
    float *fixed_A, *fixed_A_LM;             // custom G: [L, H, d, d]
    float *rope_cos, *rope_sin;              // [n_pos, d/2]
} pldr_model;

// A float32 copy viewed as a 2-D weight, so the learner's small matrices go through peri_matmul too.
static const peri_tensor *f32_weight(peri_model *m, const peri_tensor *src) {
    peri_tensor *t = peri_model_alloc(m, sizeof *t);
    float *f = t ? peri_model_f32_copy(m, src) : NULL;
    if (!f) return NULL;
    *t = *src;
    t->type = PERI_TYPE_F32;
    t->data = f;
    t->nbytes = sizeof(float) * (size_t)peri_tensor_nelem(src);
    return t;
}

// A weight's view flagged PERI_TENSOR_FLOAT_SUMS (data shared): the reference computes in float32, and the power-law
// attention magnifies half-precision sums (about 0.05 on the BF16 fixture's logits, tolerance 1e-3).
static const peri_tensor *float_sums(peri_model *m, const peri_tensor *src) {
    peri_tensor *t = src ? peri_model_alloc(m, sizeof *t) : NULL;
    if (!t) return NULL;
    *t = *src;
    t->flags |= PERI_TENSOR_FLOAT_SUMS;
    return t;
}

static int cfg_int(const json_value *cfg, const char *key, int64_t def, int required, int *out) {
    const json_value *v = json_get(cfg, key);
    if (required && (!v || v->type == JSON_NULL))
        return peri_fail(PERI_E_FORMAT, "config.json has no '%s'; it is required for PldrllmConfig", key);
    int64_t x;
    if (!json_get_int(cfg, key, def, &x)) return PERI_E_FORMAT;
    if (x < 0 || x > (1 << 28)) return peri_fail(PERI_E_FORMAT, "config.json: '%s' = %lld is out of range", key, (long long)x);
    *out = (int)x;
    return PERI_OK;
}

static int cfg_bool(const json_value *cfg, const char *key, bool def, int *out) {
    bool b;
    if (!json_get_bool(cfg, key, def, &b)) return PERI_E_FORMAT;
    *out = b;
    return PERI_OK;
}

// Reads PldrllmConfig. Defaults are the class defaults (PLDR-LLM-v51-110M-3).
static int pldr_read_config(const json_value *cfg, pldr_model *p) {
    int rc = 0;
    rc = rc ? rc : cfg_int(cfg, "vocab_size", 32000, 0, &p->V);
    rc = rc ? rc : cfg_int(cfg, "num_hidden_layers", 5, 0, &p->L);
    rc = rc ? rc : cfg_int(cfg, "num_attention_heads", 14, 0, &p->H);
    rc = rc ? rc : cfg_int(cfg, "head_dim", 64, 0, &p->d);
    rc = rc ? rc : cfg_int(cfg, "hidden_size", (int64_t)p->H * p->d, 0, &p->D);
    rc = rc ? rc : cfg_int(cfg, "intermediate_size", (int64_t)(p->H * p->d * 8) / 3, 0, &p->F);
    rc = rc ? rc : cfg_int(cfg, "A_dff", 170, 0, &p->A_dff);
    rc = rc ? rc : cfg_int(cfg, "num_reslayerA", 8, 0, &p->n_res);
    rc = rc ? rc : cfg_int(cfg, "num_denseA", 2, 0, &p->n_dense);
    rc = rc ? rc : cfg_int(cfg, "max_position_embeddings", 1024, 0, &p->n_pos);
    rc = rc ? rc : cfg_bool(cfg, "reference_rope", true, &p->reference_rope);
    rc = rc ? rc : cfg_bool(cfg, "attention_bias", true, &p->attention_bias);
    rc = rc ? rc : cfg_bool(cfg, "glu_bias", true, &p->glu_bias);
    rc = rc ? rc : cfg_bool(cfg, "final_bias", true, &p->final_bias);
    rc = rc ? rc : cfg_bool(cfg, "tie_word_embeddings", false, &p->tie);
    if (rc) return rc;
    double eps, theta;
    if (!json_get_num(cfg, "layer_norm_eps", 1e-6, &eps) || !json_get_num(cfg, "rope_theta", 10000.0, &theta))
        return PERI_E_FORMAT;
    p->eps = (float)eps;
    p->rope_theta = theta;
    const char *act, *gtype;
    if (!json_get_str(cfg, "hidden_act", "silu", &act) || !json_get_str(cfg, "custom_G_type", NULL, &gtype))
        return PERI_E_FORMAT;
    if (strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0)
        return peri_fail(PERI_E_UNSUPPORTED, "config.json: hidden_act '%s' is not supported (PLDR-LLM uses silu)", act);
    const json_value *rs = json_get(cfg, "rope_scaling");
    if (rs && rs->type != JSON_NULL)
        return peri_fail(PERI_E_UNSUPPORTED, "config.json: rope_scaling is set; peri supports PLDR-LLM's plain RoPE only (rope_scaling null)");
    if (!gtype) p->custom_g = G_LEARNED;
    else if (!strcmp(gtype, "identity")) p->custom_g = G_IDENTITY;
    else if (!strcmp(gtype, "random")) p->custom_g = G_RANDOM;
    else if (!strcmp(gtype, "external")) p->custom_g = G_EXTERNAL;
    else return peri_fail(PERI_E_FORMAT, "config.json: custom_G_type '%s' is not one of null, identity, random, external", gtype);
    if (p->V <= 0 || p->L <= 0 || p->H <= 0 || p->d <= 0 || p->F <= 0 || p->n_pos <= 0 || (p->d & 1))
        return peri_fail(PERI_E_FORMAT, "config.json: vocab_size, num_hidden_layers, num_attention_heads, intermediate_size, "
                         "max_position_embeddings must be positive and head_dim positive and even");
    if (p->D != p->H * p->d)
        return peri_fail(PERI_E_FORMAT, "config.json: hidden_size %d != num_attention_heads %d x head_dim %d; "
                         "PLDR-LLM splits d_model into heads", p->D, p->H, p->d);
    if (p->custom_g == G_LEARNED && (p->A_dff <= 0 || p->n_res < 0 || p->n_dense <= 0))
        return peri_fail(PERI_E_FORMAT, "config.json: A_dff and num_denseA must be positive for a learned G");
    return PERI_OK;
}

static int bind_glu(peri_model *m, pldr_model *p, const char *prefix, int in, int hidden, int out, int f32, pldr_glu *g) {
    char n[256];
    int64_t s_up[2] = {hidden, in}, s_dn[2] = {out, hidden}, s_h[1] = {hidden}, s_o[1] = {out};
    int rc;
    const peri_tensor *t;
    snprintf(n, sizeof n, "%s.gluw1.weight", prefix);
    if ((rc = peri_model_get(m, n, 2, s_up, &t))) return rc;
    g->w1 = f32 ? f32_weight(m, t) : float_sums(m, t);
    snprintf(n, sizeof n, "%s.gluw2.weight", prefix);
    if ((rc = peri_model_get(m, n, 2, s_up, &t))) return rc;
    g->w2 = f32 ? f32_weight(m, t) : float_sums(m, t);
    snprintf(n, sizeof n, "%s.gluw3.weight", prefix);
    if ((rc = peri_model_get(m, n, 2, s_dn, &t))) return rc;
    g->w3 = f32 ? f32_weight(m, t) : float_sums(m, t);
    if (!g->w1 || !g->w2 || !g->w3) return PERI_E_NOMEM;
    if (p->glu_bias) {
        snprintf(n, sizeof n, "%s.gluw1.bias", prefix);
        if ((rc = peri_model_get_f32(m, n, 1, s_h, &g->b1))) return rc;
        snprintf(n, sizeof n, "%s.gluw2.bias", prefix);
        if ((rc = peri_model_get_f32(m, n, 1, s_h, &g->b2))) return rc;
        snprintf(n, sizeof n, "%s.gluw3.bias", prefix);
        if ((rc = peri_model_get_f32(m, n, 1, s_o, &g->b3))) return rc;
    }
    return PERI_OK;
}

static int bind_ln(peri_model *m, const char *prefix, int n_, float **w, float **b) {
    char n[256];
    int64_t s[1] = {n_};
    int rc;
    snprintf(n, sizeof n, "%s.weight", prefix);
    if ((rc = peri_model_get_f32(m, n, 1, s, w))) return rc;
    snprintf(n, sizeof n, "%s.bias", prefix);
    return peri_model_get_f32(m, n, 1, s, b);
}

static int bind_linear(peri_model *m, const char *prefix, int out, int in, int bias, const peri_tensor **w, float **b) {
    char n[256];
    int64_t s[2] = {out, in}, sb[1] = {out};
    int rc;
    snprintf(n, sizeof n, "%s.weight", prefix);
    if ((rc = peri_model_get(m, n, 2, s, w))) return rc;
    if (!(*w = float_sums(m, *w))) return PERI_E_NOMEM;
    *b = NULL;
    if (!bias) return PERI_OK;
    snprintf(n, sizeof n, "%s.bias", prefix);
    return peri_model_get_f32(m, n, 1, sb, b);
}

static int pldr_match(const peri_weights *w) {
    if (w->gguf) {
        gguf_str s;
        return peri_gguf_get_str(w->gguf, "general.architecture", &s) && s.len == 7 && !memcmp(s.s, "pldrllm", 7);
    }
    const char *mt;
    return w->config && json_get_str(w->config, "model_type", "", &mt) && !strcmp(mt, "pldrllm");
}

static int pldr_load(peri_model *m) {
    if (m->w.gguf && !m->w.config) {
        // arch "pldrllm" GGUF (src/models/pldr_gguf.c): the config.json tree from pldrllm.config.* keys, owned
        // (and freed) by the weights; tensors keep their Hugging Face names.
        int peri_pldr_config_from_gguf(const peri_gguf *g, json_value **out);
        int grc = peri_pldr_config_from_gguf(m->w.gguf, &m->w.config);
        if (grc) return grc;
    }
    pldr_model *p = peri_model_alloc(m, sizeof *p);
    if (!p) return PERI_E_NOMEM;
    m->arch = p;
    int rc = pldr_read_config(m->w.config, p);
    if (rc) return rc;
    const int D = p->D, H = p->H, d = p->d;
    int64_t pad, bos, eos;
    if (!json_get_int(m->w.config, "pad_token_id", 0, &pad) || !json_get_int(m->w.config, "bos_token_id", 2, &bos) ||
        !json_get_int(m->w.config, "eos_token_id", 3, &eos))
        return PERI_E_FORMAT;
    m->n_vocab = p->V;
    m->n_embd = D;
    m->n_layer = p->L;
    m->n_ctx_train = p->n_pos;
    // PldrllmConfig defaults pad to 0 when the key is missing; an explicit null means the model has none
    const json_value *pv = json_get(m->w.config, "pad_token_id");
    m->pad = pv && pv->type == JSON_NULL ? -1 : (peri_token)pad;
    m->bos = (peri_token)bos;
    m->eos = (peri_token)eos;

    int64_t s_emb[2] = {p->V, D};
    if ((rc = peri_model_get(m, "decoder.embedding.weight", 2, s_emb, &p->emb))) return rc;
    if (!(p->emb = float_sums(m, p->emb))) return PERI_E_NOMEM; // also the tied output matrix
    if ((rc = bind_ln(m, "decoder.layernorm1", D, &p->ln_emb_w, &p->ln_emb_b))) return rc;
    p->layers = peri_model_alloc(m, sizeof(pldr_layer) * (size_t)p->L);
    if (!p->layers) return PERI_E_NOMEM;
    char pre[256], n[256];
    for (int l = 0; l < p->L; l++) {
        pldr_layer *ly = &p->layers[l];
        snprintf(pre, sizeof pre, "decoder.dec_layers.%d.", l);
#define NAME(suffix) (snprintf(n, sizeof n, "%s%s", pre, suffix), n)
        if ((rc = bind_linear(m, NAME("mha1.wq"), D, D, p->attention_bias, &ly->wq, &ly->bq))) return rc;
        if ((rc = bind_linear(m, NAME("mha1.wk"), D, D, p->attention_bias, &ly->wk, &ly->bk))) return rc;
        if ((rc = bind_linear(m, NAME("mha1.wv"), D, D, p->attention_bias, &ly->wv, &ly->bv))) return rc;
        if ((rc = bind_linear(m, NAME("mha1.dense"), D, D, p->attention_bias, &ly->dense, &ly->bdense))) return rc;
        if (p->custom_g == G_LEARNED) {
            int64_t s3[3] = {H, d, d};
            if ((rc = peri_model_get_f32(m, NAME("mha1.plgatt_layer.Wlst"), 3, s3, &ly->W))) return rc;
            if ((rc = peri_model_get_f32(m, NAME("mha1.plgatt_layer.blst"), 3, s3, &ly->b))) return rc;
            if ((rc = peri_model_get_f32(m, NAME("mha1.plgatt_layer.pwlst"), 3, s3, &ly->pw))) return rc;
            if ((rc = peri_model_get_f32(m, NAME("mha1.plgatt_layer.alst"), 3, s3, &ly->a))) return rc;
            if ((rc = peri_model_get_f32(m, NAME("mha1.plgatt_layer.balst"), 3, s3, &ly->ba))) return rc;
            if ((rc = bind_ln(m, NAME("mha1.layernorm1"), d, &ly->lnA_w, &ly->lnA_b))) return rc;
            ly->res_glu = peri_model_alloc(m, sizeof(pldr_glu) * (size_t)(p->n_res * p->n_dense) + 1);
            ly->res_ln_w = peri_model_alloc(m, sizeof(float *) * (size_t)p->n_res + 1);
            ly->res_ln_b = peri_model_alloc(m, sizeof(float *) * (size_t)p->n_res + 1);
            if (!ly->res_glu || !ly->res_ln_w || !ly->res_ln_b) return PERI_E_NOMEM;
            for (int r = 0; r < p->n_res; r++) {
                for (int g = 0; g < p->n_dense; g++) {
                    char gp[256];
                    snprintf(gp, sizeof gp, "%smha1.reslayerAs.%d.denseAs.%d", pre, r, g);
                    if ((rc = bind_glu(m, p, gp, d, p->A_dff, d, 1, &ly->res_glu[r * p->n_dense + g]))) return rc;
                }
                char lp[256];
                snprintf(lp, sizeof lp, "%smha1.reslayerAs.%d.layernormA", pre, r);
                if ((rc = bind_ln(m, lp, d, &ly->res_ln_w[r], &ly->res_ln_b[r]))) return rc;
            }
        }
        char fp[256];
        snprintf(fp, sizeof fp, "%sffn", pre);
        if ((rc = bind_glu(m, p, fp, D, p->F, D, 0, &ly->ffn))) return rc;
        if ((rc = bind_ln(m, NAME("layernorm1"), D, &ly->ln1_w, &ly->ln1_b))) return rc;
        if ((rc = bind_ln(m, NAME("layernorm2"), D, &ly->ln2_w, &ly->ln2_b))) return rc;
#undef NAME
    }
    if (m->head != PERI_HEAD_LM) {
        // a task-head checkpoint (runtime/heads.c binds score / qa_outputs): no LM head
    } else if (p->tie && !peri_weights_find(&m->w, "final_layer.weight")) {
        p->head = p->emb;
        p->head_b = NULL;
        if (p->final_bias) {
            int64_t sb[1] = {p->V};
            if ((rc = peri_model_get_f32(m, "final_layer.bias", 1, sb, &p->head_b))) return rc;
        }
    } else if ((rc = bind_linear(m, "final_layer", p->V, D, p->final_bias, &p->head, &p->head_b))) {
        return rc;
    }

    // Custom G: HF keeps (A, A_LM, G) per layer in the persistent buffer decoder.past_G_values
    // [L, 3, 1, H, d, d]. identity: G = I whatever the buffer says (A = A_LM = 0).
    if (p->custom_g != G_LEARNED) {
        size_t n1 = (size_t)p->L * H * d * d;
        p->fixed_G = peri_model_alloc(m, sizeof(float) * n1);
        p->fixed_A = peri_model_alloc(m, sizeof(float) * n1);
        p->fixed_A_LM = peri_model_alloc(m, sizeof(float) * n1);
        if (!p->fixed_G || !p->fixed_A || !p->fixed_A_LM) return PERI_E_NOMEM;
        const peri_tensor *pg = peri_weights_find(&m->w, "decoder.past_G_values");
        if (pg && p->custom_g != G_IDENTITY) {
            int64_t s[6] = {p->L, 3, 1, H, d, d};
            float *buf;
            if ((rc = peri_model_get_f32(m, "decoder.past_G_values", 6, s, &buf))) return rc;
            for (int l = 0; l < p->L; l++) {
                memcpy(p->fixed_A + (size_t)l * H * d * d, buf + ((size_t)l * 3 + 0) * H * d * d, sizeof(float) * H * d * d);
                memcpy(p->fixed_A_LM + (size_t)l * H * d * d, buf + ((size_t)l * 3 + 1) * H * d * d, sizeof(float) * H * d * d);
                memcpy(p->fixed_G + (size_t)l * H * d * d, buf + ((size_t)l * 3 + 2) * H * d * d, sizeof(float) * H * d * d);
            }
        } else if (p->custom_g == G_RANDOM && !pg) {
            return peri_fail(PERI_E_FORMAT, "custom_G_type 'random' needs the saved decoder.past_G_values buffer, "
                             "which the weights lack");
        } else {
            for (size_t lh = 0; lh < (size_t)p->L * H; lh++)
                for (int i = 0; i < d; i++) p->fixed_G[lh * d * d + (size_t)i * d + i] = 1.0f;
        }
    }
    p->rope_cos = peri_model_alloc(m, sizeof(float) * (size_t)p->n_pos * (size_t)(d / 2));
    p->rope_sin = peri_model_alloc(m, sizeof(float) * (size_t)p->n_pos * (size_t)(d / 2));
    if (!p->rope_cos || !p->rope_sin) return PERI_E_NOMEM;
    peri_rope_table(p->rope_cos, p->rope_sin, p->n_pos, d, p->rope_theta);
    return PERI_OK;
}

static void pldr_free(peri_model *m) { (void)m; /* everything is owned by the model's allocations */ }

static void pldr_describe(const peri_model *m, peri_strbuf *sb) {
    const pldr_model *p = m->arch;
    static const char *gnames[] = {"learned", "identity", "random", "external"};
    peri_sb_printf(sb, "pldrllm: D %d, heads %d x %d, FFN %d, A_dff %d, learner %d x %d GLUs, LayerNorm eps %g\n",
                   p->D, p->H, p->d, p->F, p->A_dff, p->n_res, p->n_dense, p->eps);
    peri_sb_printf(sb, "pldrllm: RoPE %s, theta %g; G %s; biases attention %d glu %d final %d; tied %d\n",
                   p->reference_rope ? "GPT-J interleaved (reference_rope)" : "NeoX half split", p->rope_theta,
                   gnames[p->custom_g], p->attention_bias, p->glu_bias, p->final_bias, p->tie);
}

// ---- context: caches and scratch -------------------------------------------------------------------------

// Query rows of one head attended together (attn_task): a block's scores are one matmul against the head's keys.
#define PLDR_ABLOCK 32

typedef struct {
    // KV-cache: post-RoPE k and v per sequence, layer and head: [S_max][L][H][n_ctx][d] (a head's keys contiguous, so
    // that its scores and value mix are matmuls over them)
    float *k_cache, *v_cache;
    int8_t *key_ok;          // [S_max][n_ctx]: 0 for padding keys (never attended)
    // G-cache per sequence: [S_max][L][H][d][d] each
    float *g_A_raw, *g_A, *g_A_LM, *g_A_P, *g_G;
    int8_t *g_ready;         // [S_max]
    // scratch for N = n_seq_max * n_batch tokens
    int N;
    float *x, *h, *q, *k, *v, *o, *t, *f1, *f2;   // [N][D] (f1, f2: [N][F])
    int32_t *pos;                                  // [N]
    // learner scratch for R = n_seq_max * H * d rows of d
    float *lA, *lin, *lg1, *lg2, *lt;              // [R][d], [R][d], [R][A_dff], [R][A_dff], [R][d]
    // per-thread attention scratch: scores [PLDR_ABLOCK][n_ctx] + qG [PLDR_ABLOCK][d]
    float *att;
    size_t att_stride;
    // per-thread scratch for A_raw: a head's q columns, transposed ([d][n_batch])
    float *tq;
    size_t tq_stride;
    float *logit_x;                                // [n_seq_max][D] rows for the LM head
} pldr_ctx;

#define CTX_ALLOC(ptr, count)                                                                          \
    do {                                                                                               \
        (ptr) = calloc((size_t)(count), sizeof(*(ptr)));                                               \
        if (!(ptr)) return peri_fail(PERI_E_NOMEM, "out of memory allocating the PLDR-LLM context (%s)", #ptr); \
    } while (0)

static void pldr_ctx_free(peri_context *c) {
    pldr_ctx *x = c->arch;
    if (!x) return;
    free(x->k_cache); free(x->v_cache); free(x->key_ok);
    free(x->g_A_raw); free(x->g_A); free(x->g_A_LM); free(x->g_A_P); free(x->g_G); free(x->g_ready);
    free(x->x); free(x->h); free(x->q); free(x->k); free(x->v); free(x->o); free(x->t); free(x->f1); free(x->f2);
    free(x->pos);
    free(x->lA); free(x->lin); free(x->lg1); free(x->lg2); free(x->lt);
    free(x->att); free(x->tq); free(x->logit_x);
    free(x);
    c->arch = NULL;
}

static int pldr_ctx_init(peri_context *c) {
    const pldr_model *p = c->model->arch;
    pldr_ctx *x = calloc(1, sizeof *x);
    if (!x) return peri_fail(PERI_E_NOMEM, "out of memory");
    c->arch = x;
    const size_t S = (size_t)c->params.n_seq_max, T = (size_t)c->params.n_ctx, D = (size_t)p->D;
    const size_t gsz = (size_t)p->L * p->H * p->d * p->d;
    CTX_ALLOC(x->k_cache, S * p->L * T * D);
    CTX_ALLOC(x->v_cache, S * p->L * T * D);
    CTX_ALLOC(x->key_ok, S * T);
    CTX_ALLOC(x->g_A_raw, S * gsz);
    CTX_ALLOC(x->g_A, S * gsz);
    CTX_ALLOC(x->g_A_LM, S * gsz);
    CTX_ALLOC(x->g_A_P, S * gsz);
    CTX_ALLOC(x->g_G, S * gsz);
    CTX_ALLOC(x->g_ready, S);
    x->N = (int)(S * (size_t)c->params.n_batch);
    const size_t N = (size_t)x->N;
    CTX_ALLOC(x->x, N * D); CTX_ALLOC(x->h, N * D); CTX_ALLOC(x->q, N * D); CTX_ALLOC(x->k, N * D);
    CTX_ALLOC(x->v, N * D); CTX_ALLOC(x->o, N * D); CTX_ALLOC(x->t, N * D);
    CTX_ALLOC(x->f1, N * (size_t)p->F); CTX_ALLOC(x->f2, N * (size_t)p->F);
    CTX_ALLOC(x->pos, N);
    if (p->custom_g == G_LEARNED) {
        const size_t R = S * p->H * p->d;
        CTX_ALLOC(x->lA, R * p->d); CTX_ALLOC(x->lin, R * p->d); CTX_ALLOC(x->lt, R * p->d);
        CTX_ALLOC(x->lg1, R * p->A_dff); CTX_ALLOC(x->lg2, R * p->A_dff);
    }
    x->att_stride = PLDR_ABLOCK * (T + (size_t)p->d) + 16;
    CTX_ALLOC(x->att, (size_t)peri_pool_size(c->pool) * x->att_stride);
    CTX_ALLOC(x->logit_x, S * D);
    if (p->custom_g == G_LEARNED) {
        x->tq_stride = (size_t)p->d * (size_t)c->params.n_batch;
        CTX_ALLOC(x->tq, (size_t)peri_pool_size(c->pool) * x->tq_stride);
    }
    if (p->custom_g != G_LEARNED)
        for (size_t s = 0; s < S; s++) {
            memcpy(x->g_A + s * gsz, p->fixed_A, sizeof(float) * gsz);
            memcpy(x->g_A_LM + s * gsz, p->fixed_A_LM, sizeof(float) * gsz);
            memcpy(x->g_G + s * gsz, p->fixed_G, sizeof(float) * gsz);
        }
    // Scratch for the matmuls' quantized activations, so the forward allocates nothing (docs/kernels.md).
    return peri_matmul_reserve(c->pool, p->F > p->D ? p->F : p->D, x->N, 0);
}

static void pldr_seq_clear(peri_context *c, int32_t seq) {
    pldr_ctx *x = c->arch;
    const pldr_model *p = c->model->arch;
    if (p->custom_g == G_LEARNED) x->g_ready[seq] = 0; // custom G stays: it is a model constant
}

// ---- forward pieces ---------------------------------------------------------------------------------------

static void emit(const peri_context *c, const char *name, int32_t seq, const float *data, int nd, int64_t a, int64_t b,
                 int64_t cc) {
    if (!c->params.tensor_cb) return;
    int64_t shape[3] = {a, b, cc};
    c->params.tensor_cb(name, seq, data, nd, shape, c->params.tensor_cb_data);
}

struct swiglu_job {
    float *y;
    const float *a, *b;
    int64_t n;
};

static void swiglu_task(void *arg, int ith, int nth) {
    const struct swiglu_job *j = arg;
    long lo, hi;
    peri_split((long)((j->n + 15) / 16), ith, nth, &lo, &hi);
    int64_t e0 = (int64_t)lo * 16, e1 = (int64_t)hi * 16 < j->n ? (int64_t)hi * 16 : j->n;
    if (e0 < e1) peri_swiglu(j->y + e0, j->a + e0, j->b + e0, e1 - e0);
}

// GLU over n rows: out = W3 (silu(W1 x + b1) * (W2 x + b2)) + b3.
static void glu_forward(peri_pool *pool, const pldr_glu *g, float *out, const float *in, float *t1, float *t2,
                        int64_t n, int64_t hidden) {
    peri_matmul(pool, t1, in, g->w1, g->b1, n);
    peri_matmul(pool, t2, in, g->w2, g->b2, n);
    struct swiglu_job sj = {t1, t1, t2, n * hidden};
    if (n * hidden >= 32768) peri_pool_run(pool, swiglu_task, &sj);   // else not worth waking the threads
    else swiglu_task(&sj, 0, 1);
    peri_matmul(pool, out, t1, g->w3, g->b3, n);
}

// The learner's row work (LayerNorms and residual adds over rows of d), split over the threads.
struct lrows_job {
    peri_context *c;
    int l, ns, r;          // r < 0: A = LN_A(A_raw); else: residual unit r's A = LN_r(A + A_in)
    const int *seqs;
};

static void lrows_task(void *arg, int ith, int nth) {
    const struct lrows_job *J = arg;
    const pldr_model *p = J->c->model->arch;
    pldr_ctx *x = J->c->arch;
    const pldr_layer *ly = &p->layers[J->l];
    const int d = p->d;
    const int64_t per = (int64_t)p->H * d;   // rows per sequence
    const size_t hdd = (size_t)per * d, gsz = (size_t)p->L * hdd;
    long lo, hi;
    peri_split((long)(J->ns * per), ith, nth, &lo, &hi);
    for (long i = lo; i < hi; i++) {
        float *row = x->lA + (size_t)i * d;
        if (J->r < 0) {
            const float *raw = x->g_A_raw + (size_t)J->seqs[i / per] * gsz + (size_t)J->l * hdd + (size_t)(i % per) * d;
            peri_layernorm(row, raw, ly->lnA_w, ly->lnA_b, d, p->eps);
        } else {
            peri_axpy(row, 1.0f, x->lin + (size_t)i * d, d);
            peri_layernorm(row, row, ly->res_ln_w[J->r], ly->res_ln_b[J->r], d, p->eps);
        }
    }
}

// PLGA for one (sequence, head) per work item: A_LM = iSwiGLU(W@A + b) + 1e-9, A_P = A_LM^pw, G = a@A_P + ba.
static void plga_task(void *arg, int ith, int nth) {
    const struct lrows_job *J = arg;
    const pldr_model *p = J->c->model->arch;
    pldr_ctx *x = J->c->arch;
    const pldr_layer *ly = &p->layers[J->l];
    const int H = p->H, d = p->d;
    const size_t hdd = (size_t)H * d * d, gsz = (size_t)p->L * hdd;
    long lo, hi;
    peri_split((long)J->ns * H, ith, nth, &lo, &hi);
    for (long item = lo; item < hi; item++) {
        const int s = (int)(item / H), h = (int)(item % H);
        const size_t off = (size_t)J->seqs[s] * gsz + (size_t)J->l * hdd, ho = (size_t)h * d * d;
        float *A = x->g_A + off + ho, *ALM = x->g_A_LM + off + ho, *AP = x->g_A_P + off + ho, *G = x->g_G + off + ho;
        memcpy(A, x->lA + (size_t)s * hdd + ho, sizeof(float) * (size_t)d * d);
        peri_matmul_nn(ALM, d, ly->W + ho, d, PERI_TYPE_F32, A, sizeof(float) * (size_t)d, d, d, d);   // W @ A
        for (int i = 0; i < d * d; i++) {
            float z = ALM[i] + ly->b[ho + i];
            ALM[i] = z * peri_silu(z) + 1e-9f;
            AP[i] = powf(ALM[i], ly->pw[ho + i]);
        }
        peri_matmul_nn(G, d, ly->a + ho, d, PERI_TYPE_F32, AP, sizeof(float) * (size_t)d, d, d, d);   // a @ A_P
        for (int i = 0; i < d * d; i++) G[i] += ly->ba[ho + i];
    }
}

// The metric learner and PLGA for `ns` sequences that are prefilling in this call, from their A_raw:
// fills A, A_LM, A_P, G of layer l in each listed sequence's G-cache.
static void learn_G(peri_context *c, int l, const int *seqs, int ns) {
    const pldr_model *p = c->model->arch;
    pldr_ctx *x = c->arch;
    const pldr_layer *ly = &p->layers[l];
    const int H = p->H, d = p->d;
    const int64_t R = (int64_t)ns * H * d;   // rows of length d
    struct lrows_job job = {c, l, ns, -1, seqs};
    peri_pool_run(c->pool, lrows_task, &job);   // A = LN_A(A_raw)
    // residual units: A = LN_r(GLU_n(...GLU_1(A)) + A)
    for (int r = 0; r < p->n_res; r++) {
        memcpy(x->lin, x->lA, sizeof(float) * (size_t)R * d);
        float *cur = x->lA;
        for (int g = 0; g < p->n_dense; g++) {
            glu_forward(c->pool, &ly->res_glu[r * p->n_dense + g], x->lt, cur, x->lg1, x->lg2, R, p->A_dff);
            memcpy(x->lA, x->lt, sizeof(float) * (size_t)R * d);
            cur = x->lA;
        }
        job.r = r;
        peri_pool_run(c->pool, lrows_task, &job);
    }
    peri_pool_run(c->pool, plga_task, &job);
}

// A_raw of layer l for each prefilling row: the sum over all S positions (padding included) of q q^T per head,
// one (row, head) per work item as a d x d matmul of the head's q columns with themselves.
struct araw_job {
    peri_context *c;
    int l, S, n_rows;
    const int *rows;        // batch rows that prefill
    const int32_t *seq;     // sequence of each batch row
};

static void araw_task(void *arg, int ith, int nth) {
    const struct araw_job *J = arg;
    const pldr_model *p = J->c->model->arch;
    pldr_ctx *x = J->c->arch;
    const int H = p->H, d = p->d, D = p->D, S = J->S;
    const size_t hdd = (size_t)H * d * d, gsz = (size_t)p->L * hdd;
    float *qt = x->tq + (size_t)ith * x->tq_stride;   // [d][S]
    long lo, hi;
    peri_split((long)J->n_rows * H, ith, nth, &lo, &hi);
    for (long item = lo; item < hi; item++) {
        const int r = J->rows[item / H], h = (int)(item % H);
        peri_transpose_elems(qt, x->q + (size_t)r * S * D + (size_t)h * d, S, d, D, sizeof(float));
        peri_tensor qv = {.name = "q columns", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {d, S}, .data = qt,
                          .nbytes = sizeof(float) * (size_t)d * (size_t)S};
        float *raw = x->g_A_raw + (size_t)J->seq[r] * gsz + (size_t)J->l * hdd + (size_t)h * d * d;
        peri_matmul(NULL, raw, qt, &qv, NULL, d);
    }
}

struct attn_job {
    peri_context *c;
    const struct peri_batch *b;
    int l;
    int S;                 // new tokens per row
    const int32_t *seq;    // [n_seq] sequence of each row
    const float *Gsrc;     // cache_first_G: the G-cache to use for every row (else NULL)
};

// One (row, head) pair per work item: scores = (q G) K^T / sqrt(d) over the keys the query may see. Blocks of up to
// PLDR_ABLOCK query rows: qG = Q G, the scores against all keys of this call (a later row's keys too, masked
// below), the masked softmax per row, then the rows' outputs = P V; three matmuls on the caller's thread (the
// pool runs the work items), which at decode replaced a dot and an axpy call per key (13% of a 110M-shape decode).
static void attn_task(void *arg, int ith, int nth) {
    const struct attn_job *J = arg;
    peri_context *c = J->c;
    const pldr_model *p = c->model->arch;
    pldr_ctx *x = c->arch;
    const int H = p->H, d = p->d, D = p->D, S = J->S, l = J->l;
    const size_t T_max = (size_t)c->params.n_ctx, hdd = (size_t)H * d * d, gsz = (size_t)p->L * hdd;
    const float scale = 1.0f / sqrtf((float)d);
    float *sc = x->att + (size_t)ith * x->att_stride;   // [PLDR_ABLOCK][n_all]
    float *qg = sc + PLDR_ABLOCK * T_max;                // [PLDR_ABLOCK][d]
    long lo, hi;
    peri_split((long)J->b->n_seq * H, ith, nth, &lo, &hi);
    for (long item = lo; item < hi; item++) {
        int r = (int)(item / H), h = (int)(item % H);
        int32_t s = J->seq[r];
        const int past = c->seq_len[s], n_all = past + S;   // row i sees keys 0..past+i
        const size_t head = (((size_t)s * p->L + l) * H + h) * T_max * d;
        const float *Kh = x->k_cache + head, *Vh = x->v_cache + head;   // [n_ctx][d]
        const int8_t *ok = x->key_ok + (size_t)s * T_max;
        const float *G = (J->Gsrc ? J->Gsrc : x->g_G + (size_t)s * gsz) + (size_t)l * hdd + (size_t)h * d * d;
        const peri_tensor kt = {.name = "keys", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {n_all, d}, .data = Kh,
                                .nbytes = sizeof(float) * (size_t)n_all * (size_t)d};
        for (int i0 = 0; i0 < S; i0 += PLDR_ABLOCK) {
            const int B = S - i0 < PLDR_ABLOCK ? S - i0 : PLDR_ABLOCK;
            const size_t t0 = (size_t)r * S + i0;
            // qG[i][b] = sum_a q_i[a] G[a][b]
            peri_matmul_nn(qg, d, x->q + t0 * D + (size_t)h * d, D, PERI_TYPE_F32, G, sizeof(float) * (size_t)d, d, d, B);
            peri_matmul_ex(NULL, sc, n_all, qg, d, &kt, 0, n_all, NULL, B);
            for (int i = 0; i < B; i++) {
                float *row = sc + (size_t)i * n_all;
                const int n_keys = past + i0 + i + 1;
                float mx = -INFINITY;
                int any = 0;
                for (int j = 0; j < n_keys; j++)
                    if (ok[j]) {
                        row[j] *= scale;
                        if (row[j] > mx) mx = row[j];
                        any = 1;
                    }
                if (!any) {
                    // A query that may see no key (a padding row). sdpa: output 0. eager: finfo.min everywhere
                    // gives a uniform softmax over all keys of this call, future and padding keys included.
                    const float u = c->params.attn == PERI_ATTN_EAGER ? 1.0f / (float)n_all : 0.0f;
                    for (int j = 0; j < n_all; j++) row[j] = u;
                    continue;
                }
                float sum = 0;
                for (int j = 0; j < n_keys; j++) {
                    row[j] = ok[j] ? expf(row[j] - mx) : 0.0f;
                    sum += row[j];
                }
                const float inv = 1.0f / sum;
                for (int j = 0; j < n_keys; j++) row[j] *= inv;
                for (int j = n_keys; j < n_all; j++) row[j] = 0.0f;   // later rows' keys
            }
            peri_matmul_nn(x->o + t0 * D + (size_t)h * d, D, sc, n_all, PERI_TYPE_F32, Vh, sizeof(float) * (size_t)d,
                           n_all, d, B);
        }
    }
}

static int pldr_decode(peri_context *c, const struct peri_batch *b) {
    const pldr_model *p = c->model->arch;
    pldr_ctx *x = c->arch;
    const int n_seq = b->n_seq, S = b->n_tokens, D = p->D, H = p->H, d = p->d;
    const int64_t N = (int64_t)n_seq * S;
    const size_t T_max = (size_t)c->params.n_ctx, hdd = (size_t)H * d * d, gsz = (size_t)p->L * hdd;
    int32_t seq[4096];
    int prefill[4096], prefill_row[4096], n_prefill = 0;   // sequences that prefill in this call, and their rows
    for (int r = 0; r < n_seq; r++) {
        seq[r] = b->seq_ids ? b->seq_ids[r] : r;
        if (p->custom_g == G_LEARNED && !x->g_ready[seq[r]]) {
            if (c->seq_len[seq[r]] != 0)
                return peri_fail(PERI_E_ARG, "sequence %d has cached tokens but no G; clear it and prefill the "
                                 "whole prompt in one call", seq[r]);
            prefill_row[n_prefill] = r;
            prefill[n_prefill++] = seq[r];
        }
    }
    // positions and key validity
    for (int r = 0; r < n_seq; r++)
        for (int i = 0; i < S; i++) {
            const size_t t = (size_t)r * S + i;
            x->pos[t] = b->pos ? b->pos[t] : c->seq_len[seq[r]] + i;
            x->key_ok[(size_t)seq[r] * T_max + c->seq_len[seq[r]] + i] = b->mask ? (b->mask[t] != 0) : 1;
        }

    // x = LN_emb(Emb[id] * sqrt(D))
    const float emb_scale = sqrtf((float)D);
    for (int64_t t = 0; t < N; t++) {
        float *row = x->x + t * D;
        peri_get_row(p->emb, b->tokens[t], row);
        for (int i = 0; i < D; i++) row[i] *= emb_scale;
        peri_layernorm(row, row, p->ln_emb_w, p->ln_emb_b, D, p->eps);
    }
    for (int r = 0; r < n_seq; r++) emit(c, "embed_ln", seq[r], x->x + (size_t)r * S * D, 2, S, D, 0);

    for (int l = 0; l < p->L; l++) {
        const pldr_layer *ly = &p->layers[l];
        peri_matmul(c->pool, x->q, x->x, ly->wq, ly->bq, N);
        peri_matmul(c->pool, x->k, x->x, ly->wk, ly->bk, N);
        peri_matmul(c->pool, x->v, x->x, ly->wv, ly->bv, N);
        for (int64_t t = 0; t < N; t++) {
            const float *cs = p->rope_cos + (size_t)x->pos[t] * (d / 2), *sn = p->rope_sin + (size_t)x->pos[t] * (d / 2);
            for (int h = 0; h < H; h++) {
                peri_rope_apply(x->q + t * D + (size_t)h * d, d, cs, sn, p->reference_rope);
                peri_rope_apply(x->k + t * D + (size_t)h * d, d, cs, sn, p->reference_rope);
            }
        }
        if (c->params.tensor_cb) {
            char nm[64];
            for (int r = 0; r < n_seq; r++) {
                snprintf(nm, sizeof nm, "q_rope.%d", l);
                emit(c, nm, seq[r], x->q + (size_t)r * S * D, 3, S, H, d);
                snprintf(nm, sizeof nm, "k_rope.%d", l);
                emit(c, nm, seq[r], x->k + (size_t)r * S * D, 3, S, H, d);
            }
        }
        // append k, v to the caches, head by head
        for (int r = 0; r < n_seq; r++)
            for (int h = 0; h < H; h++) {
                const size_t at = ((((size_t)seq[r] * p->L + l) * H + h) * T_max + (size_t)c->seq_len[seq[r]]) * d;
                for (int i = 0; i < S; i++) {
                    const size_t src = ((size_t)r * S + i) * D + (size_t)h * d;
                    memcpy(x->k_cache + at + (size_t)i * d, x->k + src, sizeof(float) * (size_t)d);
                    memcpy(x->v_cache + at + (size_t)i * d, x->v + src, sizeof(float) * (size_t)d);
                }
            }
        // G for prefilling sequences: A_raw = sum over all S positions (padding included) of q q^T per head
        if (n_prefill) {
            struct araw_job aj = {c, l, S, n_prefill, prefill_row, seq};
            peri_pool_run(c->pool, araw_task, &aj);
            learn_G(c, l, prefill, n_prefill);
            // cache_first_G: the cache holds the first row's G for every sequence of this batch
            if (c->params.cache_first_G)
                for (int k = 0; k < n_prefill; k++)
                    if (prefill[k] != seq[0]) {
                        size_t dst = (size_t)prefill[k] * gsz + (size_t)l * hdd, src = (size_t)seq[0] * gsz + (size_t)l * hdd;
                        memcpy(x->g_A + dst, x->g_A + src, sizeof(float) * hdd);
                        memcpy(x->g_A_LM + dst, x->g_A_LM + src, sizeof(float) * hdd);
                        memcpy(x->g_A_P + dst, x->g_A_P + src, sizeof(float) * hdd);
                    }
        }
        // attention (at prefill each row uses its own G, also with cache_first_G)
        struct attn_job job = {c, b, l, S, seq, NULL};
        if (c->params.cache_first_G && !n_prefill) job.Gsrc = x->g_G + (size_t)seq[0] * gsz;
        peri_pool_run(c->pool, attn_task, &job);
        if (c->params.cache_first_G && n_prefill && l == p->L - 1) {
            // after the last layer's attention, make the cached G of every prefilled row the first row's
            for (int k = 0; k < n_prefill; k++)
                if (prefill[k] != seq[0])
                    memcpy(x->g_G + (size_t)prefill[k] * gsz, x->g_G + (size_t)seq[0] * gsz, sizeof(float) * gsz);
        }
        // h = LN1(x + dense(o)); x = LN2(h + GLU(h))
        peri_matmul(c->pool, x->t, x->o, ly->dense, ly->bdense, N);
        for (int64_t t = 0; t < N; t++) {
            float *hr = x->h + t * D;
            const float *xr = x->x + t * D, *ar = x->t + t * D;
            for (int i = 0; i < D; i++) hr[i] = xr[i] + ar[i];
            peri_layernorm(hr, hr, ly->ln1_w, ly->ln1_b, D, p->eps);
        }
        glu_forward(c->pool, &ly->ffn, x->t, x->h, x->f1, x->f2, N, p->F);
        for (int64_t t = 0; t < N; t++) {
            float *xr = x->x + t * D;
            const float *hr = x->h + t * D, *fr = x->t + t * D;
            for (int i = 0; i < D; i++) xr[i] = hr[i] + fr[i];
            peri_layernorm(xr, xr, ly->ln2_w, ly->ln2_b, D, p->eps);
        }
        if (c->params.tensor_cb) {
            char nm[64];
            snprintf(nm, sizeof nm, "hidden.%d", l);
            for (int r = 0; r < n_seq; r++) emit(c, nm, seq[r], x->x + (size_t)r * S * D, 2, S, D, 0);
        }
    }
    for (int k = 0; k < n_prefill; k++) x->g_ready[prefill[k]] = 1;

    // LM head: every row, or each row's last token
    if (b->logits_all) {
        peri_model_output(c, c->logits, x->x, N, p->head, p->head_b);
    } else {
        for (int r = 0; r < n_seq; r++)
            memcpy(x->logit_x + (size_t)r * D, x->x + ((size_t)r * S + S - 1) * D, sizeof(float) * D);
        peri_model_output(c, c->logits, x->logit_x, n_seq, p->head, p->head_b);
    }
    return PERI_OK;
}

// ---- deductive outputs -------------------------------------------------------------------------------------

static int pldr_get_state(const peri_context *c, const char *name, int32_t seq, const float **data, int32_t *n_dims,
                          int64_t shape[4]) {
    const pldr_model *p = c->model->arch;
    const pldr_ctx *x = c->arch;
    const size_t hdd = (size_t)p->H * p->d * p->d, gsz = (size_t)p->L * hdd;
    char kind[16];
    int l = -1, used = 0;
    if (sscanf(name, "%15[A-Za-z_].%d%n", kind, &l, &used) != 2 || name[used] != 0 || l < 0 || l >= p->L)
        return peri_fail(PERI_E_ARG, "no state '%s': names are A_raw.L, A.L, A_LM.L, A_P.L, G_LM.L, pw.L, a.L, ba.L "
                         "with L in 0..%d", name, p->L - 1);
    const float *base = NULL;
    size_t off = (size_t)seq * gsz + (size_t)l * hdd;
    if (!strcmp(kind, "A_raw")) base = x->g_A_raw + off;
    else if (!strcmp(kind, "A")) base = x->g_A + off;
    else if (!strcmp(kind, "A_LM")) base = x->g_A_LM + off;
    else if (!strcmp(kind, "A_P")) base = x->g_A_P + off;
    else if (!strcmp(kind, "G_LM")) base = x->g_G + off;
    else if (!strcmp(kind, "pw") || !strcmp(kind, "a") || !strcmp(kind, "ba")) {
        if (p->custom_g != G_LEARNED)
            return peri_fail(PERI_E_ARG, "'%s': this model has a custom G (no power-law parameters)", name);
        const pldr_layer *ly = &p->layers[l];
        base = !strcmp(kind, "pw") ? ly->pw : !strcmp(kind, "a") ? ly->a : ly->ba;
    } else {
        return peri_fail(PERI_E_ARG, "no state '%s'", name);
    }
    *data = base;
    *n_dims = 3;
    shape[0] = p->H;
    shape[1] = p->d;
    shape[2] = p->d;
    shape[3] = 1;
    return PERI_OK;
}

// log(tr(expm(M))) for a non-negative d x d matrix, in double, without overflow: scaling and squaring with
// the scale factor kept as a logarithm.
static double log_trace_expm(const double *M, int d, double *w1, double *w2, double *w3) {
    double norm = 0;
    for (int i = 0; i < d; i++) {
        double rs = 0;
        for (int j = 0; j < d; j++) rs += fabs(M[i * d + j]);
        if (rs > norm) norm = rs;
    }
    int s = 0;
    while (norm > 0.5 && s < 1100) { norm /= 2; s++; }
    double scale = ldexp(1.0, -s);
    // Taylor series of expm(M / 2^s) to convergence (the norm is <= 0.5)
    double *E = w1, *term = w2, *tmp = w3;
    for (int i = 0; i < d * d; i++) { E[i] = 0; term[i] = 0; }
    for (int i = 0; i < d; i++) { E[i * d + i] = 1; term[i * d + i] = 1; }
    for (int k = 1; k < 30; k++) {
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) {
                double acc = 0;
                for (int q = 0; q < d; q++) acc += term[i * d + q] * M[q * d + j];
                tmp[i * d + j] = acc * scale / k;
            }
        double mx = 0;
        for (int i = 0; i < d * d; i++) { term[i] = tmp[i]; E[i] += tmp[i]; mx = fmax(mx, fabs(tmp[i])); }
        if (mx < 1e-18) break;
    }
    // square s times, renormalising by the largest entry each time
    double logf_ = 0;
    for (int k = 0; k < s; k++) {
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) {
                double acc = 0;
                for (int q = 0; q < d; q++) acc += E[i * d + q] * E[q * d + j];
                tmp[i * d + j] = acc;
            }
        double mx = 0;
        for (int i = 0; i < d * d; i++) mx = fmax(mx, fabs(tmp[i]));
        if (mx == 0) mx = 1;
        for (int i = 0; i < d * d; i++) E[i] = tmp[i] / mx;
        logf_ = 2 * logf_ + log(mx);
    }
    double tr = 0;
    for (int i = 0; i < d; i++) tr += E[i * d + i];
    return log(tr) + logf_;
}

static int pldr_dag(const peri_context *c, int32_t seq, double out[3]) {
    const pldr_model *p = c->model->arch;
    const pldr_ctx *x = c->arch;
    if (seq < 0 || seq >= c->params.n_seq_max) return peri_fail(PERI_E_ARG, "no sequence %d", seq);
    if (p->custom_g == G_LEARNED && !x->g_ready[seq])
        return peri_fail(PERI_E_ARG, "sequence %d has no G yet: run a prefill first", seq);
    const int d = p->d;
    const size_t hdd = (size_t)p->H * d * d, gsz = (size_t)p->L * hdd;
    double *buf = malloc(sizeof(double) * (size_t)d * d * 4);
    if (!buf) return peri_fail(PERI_E_NOMEM, "out of memory");
    const float *srcs[3] = {x->g_A_LM, x->g_A_P, x->g_G};
    for (int k = 0; k < 3; k++) {
        double acc = 0;
        for (int l = 0; l < p->L; l++)
            for (int h = 0; h < p->H; h++) {
                const float *M = srcs[k] + (size_t)seq * gsz + (size_t)l * hdd + (size_t)h * d * d;
                for (int i = 0; i < d * d; i++) buf[i] = (double)M[i] * (double)M[i];
                double lt = log_trace_expm(buf, d, buf + d * d, buf + 2 * d * d, buf + 3 * d * d);
                acc += fabs(lt - log((double)d));
            }
        out[k] = acc / (p->L * p->H);
    }
    free(buf);
    return PERI_OK;
}

// Decode reads every projection and FFN matrix once, plus the LM head; the learner does not run.
static int64_t pldr_decode_bytes(const peri_model *m) {
    const pldr_model *p = m->arch;
    int64_t n = p->head ? (int64_t)p->head->nbytes + (int64_t)p->V * 4 : 0;
    for (int l = 0; l < p->L; l++) {
        const pldr_layer *ly = &p->layers[l];
        n += (int64_t)(ly->wq->nbytes + ly->wk->nbytes + ly->wv->nbytes + ly->dense->nbytes + ly->ffn.w1->nbytes +
                       ly->ffn.w2->nbytes + ly->ffn.w3->nbytes);
    }
    return n;
}

// ---- random init (`peri init`) --------------------------------------------------------------------------

int peri_pldr_init_random(const json_value *cfg, uint64_t seed, const char *out_dir);

const struct peri_arch_ops peri_arch_pldr = {
    .name = "pldrllm",
    .model_type = "pldrllm",
    .match = pldr_match,
    .load = pldr_load,
    .free = pldr_free,
    .describe = pldr_describe,
    .ctx_init = pldr_ctx_init,
    .ctx_free = pldr_ctx_free,
    .decode = pldr_decode,
    .seq_clear = pldr_seq_clear,
    .get_state = pldr_get_state,
    .dag = pldr_dag,
    .init_random = peri_pldr_init_random,
    .decode_bytes = pldr_decode_bytes,
};

// ---- external G -------------------------------------------------------------------------------------------

int peri_pldr_load_external_G(peri_model *m, const char *path) {
    if (!m || m->ops != &peri_arch_pldr) return peri_fail(PERI_E_ARG, "an external G applies to PLDR-LLM models only");
    pldr_model *p = m->arch;
    if (p->custom_g == G_LEARNED)
        return peri_fail(PERI_E_ARG, "this model learns its G (custom_G_type null); an external G needs a model "
                         "with custom_G_type \"external\" in config.json");
    peri_safetensors st;
    int rc = peri_safetensors_open(&st, path, true);
    if (rc) return rc;
    const size_t hdd = (size_t)p->H * p->d * p->d;
    float *G = malloc(sizeof(float) * hdd * (size_t)p->L);
    if (!G) { peri_safetensors_close(&st); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    const peri_tensor *t;
    const struct peri_type_traits *tr;
    if ((t = peri_safetensors_find(&st, "decoder.past_G_values"))) {
        int64_t want[6] = {p->L, 3, 1, p->H, p->d, p->d};
        int ok = t->n_dims == 6 && (tr = peri_type_traits(t->type)) && tr->to_float;
        for (int i = 0; ok && i < 6; i++) ok = t->shape[i] == want[i];
        if (!ok) rc = peri_fail(PERI_E_FORMAT, "'%s': decoder.past_G_values must be [%d, 3, 1, %d, %d, %d] floats", path, p->L, p->H, p->d, p->d);
        for (int l = 0; ok && l < p->L; l++)
            tr->to_float((const char *)t->data + ((size_t)l * 3 + 2) * hdd * peri_row_size(t->type, 1), G + l * hdd, (int64_t)hdd);
    } else if ((t = peri_safetensors_find(&st, "G_LM"))) {
        int ok = t->n_dims == 4 && t->shape[0] == p->L && t->shape[1] == p->H && t->shape[2] == p->d && t->shape[3] == p->d &&
                 (tr = peri_type_traits(t->type)) && tr->to_float;
        if (!ok) rc = peri_fail(PERI_E_FORMAT, "'%s': G_LM must be [%d, %d, %d, %d] floats", path, p->L, p->H, p->d, p->d);
        else tr->to_float(t->data, G, (int64_t)hdd * p->L);
    } else {
        for (int l = 0; l < p->L && !rc; l++) {
            char n[32];
            snprintf(n, sizeof n, "G_LM.%d", l);
            t = peri_safetensors_find(&st, n);
            int ok = t && t->n_dims == 3 && t->shape[0] == p->H && t->shape[1] == p->d && t->shape[2] == p->d &&
                     (tr = peri_type_traits(t->type)) && tr->to_float;
            if (!ok) rc = peri_fail(PERI_E_FORMAT, "'%s' has no usable G: give decoder.past_G_values [L,3,1,H,d,d], G_LM "
                                    "[L,H,d,d] or G_LM.{l} [H,d,d] for l = 0..%d (H = %d, d = %d)", path, p->L - 1, p->H, p->d);
            else tr->to_float(t->data, G + l * hdd, (int64_t)hdd);
        }
    }
    if (!rc) memcpy(p->fixed_G, G, sizeof(float) * hdd * (size_t)p->L);
    free(G);
    peri_safetensors_close(&st);
    return rc;
}
