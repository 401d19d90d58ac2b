// PLDR-LLM training: the forward of /work/shared/specs/pldr.md section 2 in float32 keeping every
// activation, its backward, and the DAG regularizer of section 5 (in double, with its gradient).
#include "train/tcommon.h"

#include <math.h>

int peri_tr_pldr_params(peri_trainer *t, const json_value *c) {
    int64_t V, D, L, H, d, F, Fa, nr, nd, ctx;
    double theta, eps;
    bool rr, ab, gb, fb, tie;
    const char *cg = NULL;
    int64_t pad, eos, bos;
    if (!json_get_int(c, "vocab_size", 32000, &V) || !json_get_int(c, "num_hidden_layers", 5, &L) ||
        !json_get_int(c, "num_attention_heads", 14, &H) || !json_get_int(c, "head_dim", 64, &d) ||
        !json_get_int(c, "hidden_size", H * d, &D) || !json_get_int(c, "intermediate_size", (H * d * 8) / 3, &F) ||
        !json_get_int(c, "A_dff", 170, &Fa) || !json_get_int(c, "num_reslayerA", 8, &nr) ||
        !json_get_int(c, "num_denseA", 2, &nd) || !json_get_int(c, "max_position_embeddings", 1024, &ctx) ||
        !json_get_num(c, "rope_theta", 10000, &theta) || !json_get_num(c, "layer_norm_eps", 1e-6, &eps) ||
        !json_get_bool(c, "reference_rope", true, &rr) || !json_get_bool(c, "attention_bias", true, &ab) ||
        !json_get_bool(c, "glu_bias", true, &gb) || !json_get_bool(c, "final_bias", true, &fb) ||
        !json_get_bool(c, "tie_word_embeddings", false, &tie) || !json_get_str(c, "custom_G_type", NULL, &cg) ||
        !json_get_int(c, "pad_token_id", 0, &pad) || !json_get_int(c, "eos_token_id", 3, &eos) ||
        !json_get_int(c, "bos_token_id", 2, &bos))
        return peri_fail_prefix(PERI_E_FORMAT, "config.json: ");
    if (cg) return peri_fail(PERI_E_UNSUPPORTED, "config.json: custom_G_type \"%s\": training supports the learned G only", cg);
    if (tie) return peri_fail(PERI_E_UNSUPPORTED, "config.json: tied embeddings are not supported for PLDR-LLM training");
    if (V < 1 || D < 2 || L < 1 || H < 1 || d < 2 || d % 2 || D != H * d || F < 1 || Fa < 1 || nr < 0 || nd < 1 ||
        ctx < 2 || V > (1 << 22) || D > (1 << 16) || L > 1024 || F > (1 << 18) || Fa > (1 << 16) || nr > 256 ||
        nd > 64 || ctx > (1 << 20))
        return peri_fail(PERI_E_FORMAT, "config.json: PLDR-LLM sizes out of range (hidden_size must equal heads x head_dim, "
                         "head_dim even)");
    t->V = V; t->D = D; t->L = L; t->H = H; t->d = d; t->F = F; t->Fa = Fa; t->n_res = nr; t->n_dense = nd;
    t->n_ctx = ctx; t->theta = theta; t->eps = (float)eps; t->interleaved = rr;
    t->attn_bias = ab; t->glu_bias = gb; t->final_bias = fb; t->tied = false;
    t->pad_id = (int32_t)pad; t->eos_id = (int32_t)eos; t->bos_id = (int32_t)bos;
    char nm[256];
    int rc;
#define ADD(n_, ...) do { int64_t sh_[] = {__VA_ARGS__}; if ((rc = peri_tr_add_param(t, n_, (int)(sizeof sh_ / sizeof sh_[0]), sh_)) < 0) return rc; } while (0)
#define ADDF(...) do { snprintf(nm, sizeof nm, __VA_ARGS__); } while (0)
    ADD("decoder.embedding.weight", V, D);
    ADD("decoder.layernorm1.weight", D);
    ADD("decoder.layernorm1.bias", D);
    for (int64_t l = 0; l < L; l++) {
        const char *pj[4] = {"wq", "wk", "wv", "dense"};
        for (int i = 0; i < 4; i++) {
            ADDF("decoder.dec_layers.%lld.mha1.%s.weight", (long long)l, pj[i]); ADD(nm, D, D);
            if (ab) { ADDF("decoder.dec_layers.%lld.mha1.%s.bias", (long long)l, pj[i]); ADD(nm, D); }
        }
        const char *pg[5] = {"Wlst", "blst", "pwlst", "alst", "balst"};
        for (int i = 0; i < 5; i++) { ADDF("decoder.dec_layers.%lld.mha1.plgatt_layer.%s", (long long)l, pg[i]); ADD(nm, H, d, d); }
        ADDF("decoder.dec_layers.%lld.mha1.layernorm1.weight", (long long)l); ADD(nm, d);
        ADDF("decoder.dec_layers.%lld.mha1.layernorm1.bias", (long long)l); ADD(nm, d);
        for (int64_t r = 0; r < nr; r++) {
            for (int64_t j = 0; j < nd; j++) {
                for (int k = 1; k <= 3; k++) {
                    int64_t o = k == 3 ? d : Fa, in = k == 3 ? Fa : d;
                    ADDF("decoder.dec_layers.%lld.mha1.reslayerAs.%lld.denseAs.%lld.gluw%d.weight", (long long)l, (long long)r, (long long)j, k); ADD(nm, o, in);
                    if (gb) { ADDF("decoder.dec_layers.%lld.mha1.reslayerAs.%lld.denseAs.%lld.gluw%d.bias", (long long)l, (long long)r, (long long)j, k); ADD(nm, o); }
                }
            }
            ADDF("decoder.dec_layers.%lld.mha1.reslayerAs.%lld.layernormA.weight", (long long)l, (long long)r); ADD(nm, d);
            ADDF("decoder.dec_layers.%lld.mha1.reslayerAs.%lld.layernormA.bias", (long long)l, (long long)r); ADD(nm, d);
        }
        for (int k = 1; k <= 3; k++) {
            int64_t o = k == 3 ? D : F, in = k == 3 ? F : D;
            ADDF("decoder.dec_layers.%lld.ffn.gluw%d.weight", (long long)l, k); ADD(nm, o, in);
            if (gb) { ADDF("decoder.dec_layers.%lld.ffn.gluw%d.bias", (long long)l, k); ADD(nm, o); }
        }
        for (int k = 1; k <= 2; k++) {
            ADDF("decoder.dec_layers.%lld.layernorm%d.weight", (long long)l, k); ADD(nm, D);
            ADDF("decoder.dec_layers.%lld.layernorm%d.bias", (long long)l, k); ADD(nm, D);
        }
    }
    if (t->head != PERI_TR_HEAD_LM) {
        if ((rc = peri_tr_head_params(t, &t->head_w, &t->head_b)) < 0) return rc;
    } else {
        ADD("final_layer.weight", V, D);
        if (fb) ADD("final_layer.bias", V);
    }
#undef ADD
#undef ADDF
    return PERI_OK;
}

// Activations of one layer. Row blocks: n = B*T token rows of D; nA = B*H*d learner rows of d.
typedef struct {
    float *xin, *q, *k, *v;              // q, k after RoPE; [n, D]
    float *Qh, *Kh, *Vh;                 // head-major copies [B,H,T,d]
    float *A0, *lnA, *lnA_m, *lnA_r;     // A = q^T q [B,H,d,d], its LayerNorm
    tr_glu_act *glu;                     // [n_res][n_dense]
    float **sum, **sm, **sr, **out;      // per residual unit: A + Ain, LN stats, LN output
    float *Z, *AW, *AP, *G;              // [B,H,d,d]
    float *Qp, *P, *Oh, *O;              // q G [B,H,T,d]; probs [B,H,T,T]; output head-major and [n,D]
    float *att, *s1, *m1, *r1, *h1;      // attention projection, x + attn, LN1
    tr_glu_act ffn;
    float *s2, *m2, *r2, *xout;          // h1 + ffn, LN2
} pldr_lact;

typedef struct {
    int wq, bq, wk, bk, wv, bv, wd, bd, W, b, pw, a, ba, lnA_w, lnA_b, ln1_w, ln1_b, ln2_w, ln2_b;
    tr_glu *glu;                         // [n_res][n_dense]
    int *lnr_w, *lnr_b;
    tr_glu ffn;
} pldr_lidx;

static void bind_layer(const peri_trainer *t, int64_t l, pldr_lidx *x) {
    const char *p = "decoder.dec_layers";
    long long L = (long long)l;
    x->wq = tr_pidx(t, "%s.%lld.mha1.wq.weight", p, L); x->bq = tr_pidx(t, "%s.%lld.mha1.wq.bias", p, L);
    x->wk = tr_pidx(t, "%s.%lld.mha1.wk.weight", p, L); x->bk = tr_pidx(t, "%s.%lld.mha1.wk.bias", p, L);
    x->wv = tr_pidx(t, "%s.%lld.mha1.wv.weight", p, L); x->bv = tr_pidx(t, "%s.%lld.mha1.wv.bias", p, L);
    x->wd = tr_pidx(t, "%s.%lld.mha1.dense.weight", p, L); x->bd = tr_pidx(t, "%s.%lld.mha1.dense.bias", p, L);
    x->W = tr_pidx(t, "%s.%lld.mha1.plgatt_layer.Wlst", p, L); x->b = tr_pidx(t, "%s.%lld.mha1.plgatt_layer.blst", p, L);
    x->pw = tr_pidx(t, "%s.%lld.mha1.plgatt_layer.pwlst", p, L); x->a = tr_pidx(t, "%s.%lld.mha1.plgatt_layer.alst", p, L);
    x->ba = tr_pidx(t, "%s.%lld.mha1.plgatt_layer.balst", p, L);
    x->lnA_w = tr_pidx(t, "%s.%lld.mha1.layernorm1.weight", p, L); x->lnA_b = tr_pidx(t, "%s.%lld.mha1.layernorm1.bias", p, L);
    x->ln1_w = tr_pidx(t, "%s.%lld.layernorm1.weight", p, L); x->ln1_b = tr_pidx(t, "%s.%lld.layernorm1.bias", p, L);
    x->ln2_w = tr_pidx(t, "%s.%lld.layernorm2.weight", p, L); x->ln2_b = tr_pidx(t, "%s.%lld.layernorm2.bias", p, L);
    char pre[256];
    for (int64_t r = 0; r < t->n_res; r++) {
        for (int64_t j = 0; j < t->n_dense; j++) {
            snprintf(pre, sizeof pre, "%s.%lld.mha1.reslayerAs.%lld.denseAs.%lld", p, L, (long long)r, (long long)j);
            tr_glu_bind(t, &x->glu[r * t->n_dense + j], pre, t->d, t->Fa);
        }
        x->lnr_w[r] = tr_pidx(t, "%s.%lld.mha1.reslayerAs.%lld.layernormA.weight", p, L, (long long)r);
        x->lnr_b[r] = tr_pidx(t, "%s.%lld.mha1.reslayerAs.%lld.layernormA.bias", p, L, (long long)r);
    }
    snprintf(pre, sizeof pre, "%s.%lld.ffn", p, L);
    tr_glu_bind(t, &x->ffn, pre, t->D, t->F);
}

// [n, H*d] token-major <-> [B,H,T,d] head-major
static void to_heads(float *dst, const float *src, int B, int T, int64_t H, int64_t d) {
    for (int b = 0; b < B; b++)
        for (int s = 0; s < T; s++)
            for (int64_t h = 0; h < H; h++)
                memcpy(dst + (((size_t)b * H + h) * T + s) * d, src + ((size_t)b * T + s) * H * d + h * d, sizeof(float) * d);
}
static void from_heads_add(float *dst, const float *src, int B, int T, int64_t H, int64_t d) {
    for (int b = 0; b < B; b++)
        for (int s = 0; s < T; s++)
            for (int64_t h = 0; h < H; h++) {
                float *o = dst + ((size_t)b * T + s) * H * d + h * d;
                const float *i = src + (((size_t)b * H + h) * T + s) * d;
                for (int64_t e = 0; e < d; e++) o[e] += i[e];
            }
}

static void rope_rows(const peri_trainer *t, float *x, int B, int T, int64_t H, int64_t d, int inverse) {
    int64_t half = d / 2;
    for (int b = 0; b < B; b++)
        for (int s = 0; s < T; s++)
            for (int64_t h = 0; h < H; h++)
                peri_tr_rope(x + ((size_t)b * T + s) * H * d + h * d, (int)d, t->cos_tab + (size_t)s * half,
                             t->sin_tab + (size_t)s * half, t->interleaved, inverse);
}

// DAG term of one d x d matrix M (float): |log(tr(expm(M o M)) / d)|; with gM, adds coef * d term / dM.
static double dag_term(const float *M, int d, double coef, float *gM, double *work) {
    double *X = work, *gr = work + d * d, *w4 = work + 2 * d * d;
    for (int i = 0; i < d * d; i++) X[i] = (double)M[i] * M[i];
    double lt = peri_tr_log_trace_expm(X, d, gM ? gr : NULL, w4);
    double v = lt - log((double)d);
    if (gM && coef != 0) {
        double sg = v > 0 ? 1 : v < 0 ? -1 : 0;
        for (int i = 0; i < d * d; i++) gM[i] += (float)(coef * sg * gr[i] * 2 * M[i]);
    }
    return fabs(v);
}

int peri_tr_pldr_run(peri_trainer *t, const int32_t *ids, const int32_t *labels, int B, int T,
                     const struct peri_tr_opts *o, struct peri_tr_result *res) {
    const int64_t D = t->D, H = t->H, d = t->d, L = t->L, V = t->V, NR = t->n_res, ND = t->n_dense;
    const int64_t n = (int64_t)B * T, nA = (int64_t)B * H * d;
    const bool bwd = o->backward;
    const float sqD = sqrtf((float)D), scale = 1.0f / sqrtf((float)d);
    tr_arena ar = {0};
    int rc = PERI_OK;
    float **gdag = NULL;
    uint8_t *keep = NULL;
    pldr_lidx *ix = calloc((size_t)L, sizeof(*ix));
    pldr_lact *la = calloc((size_t)L, sizeof(*la));
    if (!ix || !la) { free(ix); free(la); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    for (int64_t l = 0; l < L; l++) {
        ix[l].glu = (tr_glu *)tr_alloc(&ar, sizeof(tr_glu) * (size_t)(NR * ND) / sizeof(float) + 1);
        ix[l].lnr_w = (int *)tr_alloc(&ar, (size_t)NR + 1);
        ix[l].lnr_b = (int *)tr_alloc(&ar, (size_t)NR + 1);
        la[l].glu = (tr_glu_act *)tr_alloc(&ar, sizeof(tr_glu_act) * (size_t)(NR * ND) / sizeof(float) + 1);
        la[l].sum = (float **)tr_alloc(&ar, sizeof(float *) * (size_t)NR / sizeof(float) + 1);
        la[l].sm = (float **)tr_alloc(&ar, sizeof(float *) * (size_t)NR / sizeof(float) + 1);
        la[l].sr = (float **)tr_alloc(&ar, sizeof(float *) * (size_t)NR / sizeof(float) + 1);
        la[l].out = (float **)tr_alloc(&ar, sizeof(float *) * (size_t)NR / sizeof(float) + 1);
        if (ar.oom) break;
        bind_layer(t, l, &ix[l]);
    }
    const int p_emb = tr_pidx(t, "decoder.embedding.weight"), p_lnw = tr_pidx(t, "decoder.layernorm1.weight"),
              p_lnb = tr_pidx(t, "decoder.layernorm1.bias"), p_fw = t->head ? t->head_w : tr_pidx(t, "final_layer.weight"),
              p_fb = t->head ? t->head_b : tr_pidx(t, "final_layer.bias");
    const int64_t NO = t->head ? t->n_out : V;   // outputs per position
    if (o->mask_pad_keys) {
        keep = malloc((size_t)n);
        if (!keep) ar.oom = 1;
        else for (int64_t i = 0; i < n; i++) keep[i] = ids[i] != t->pad_id;
    }
    // ---- forward ----
    float *x0 = tr_alloc(&ar, (size_t)(n * D)), *xe = tr_alloc(&ar, (size_t)(n * D));
    float *em = tr_alloc(&ar, (size_t)n), *er = tr_alloc(&ar, (size_t)n);
    if (ar.oom) goto oom;
    for (int64_t i = 0; i < n; i++)
        for (int64_t e = 0; e < D; e++) x0[i * D + e] = TW(t, p_emb)[(size_t)ids[i] * D + e] * sqD;
    peri_tr_layernorm_fwd(xe, em, er, x0, TW(t, p_lnw), TW(t, p_lnb), n, D, t->eps);
    const float *x = xe;
    for (int64_t l = 0; l < L; l++) {
        pldr_lact *a = &la[l];
        const pldr_lidx *p = &ix[l];
        a->xin = (float *)x;
        a->q = tr_alloc(&ar, (size_t)(n * D)); a->k = tr_alloc(&ar, (size_t)(n * D)); a->v = tr_alloc(&ar, (size_t)(n * D));
        a->Qh = tr_alloc(&ar, (size_t)(n * D)); a->Kh = tr_alloc(&ar, (size_t)(n * D)); a->Vh = tr_alloc(&ar, (size_t)(n * D));
        a->A0 = tr_alloc(&ar, (size_t)(nA * d)); a->lnA = tr_alloc(&ar, (size_t)(nA * d));
        a->lnA_m = tr_alloc(&ar, (size_t)nA); a->lnA_r = tr_alloc(&ar, (size_t)nA);
        if (ar.oom) goto oom;
        peri_tr_lin_fwd(t->pool, a->q, x, TW(t, p->wq), TW(t, p->bq), n, D, D);
        peri_tr_lin_fwd(t->pool, a->k, x, TW(t, p->wk), TW(t, p->bk), n, D, D);
        peri_tr_lin_fwd(t->pool, a->v, x, TW(t, p->wv), TW(t, p->bv), n, D, D);
        rope_rows(t, a->q, B, T, H, d, 0);
        rope_rows(t, a->k, B, T, H, d, 0);
        to_heads(a->Qh, a->q, B, T, H, d);
        to_heads(a->Kh, a->k, B, T, H, d);
        to_heads(a->Vh, a->v, B, T, H, d);
        // A = q^T q over every position of the row (no mask: future positions count too)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            float *A = a->A0 + bh * d * d;
            const float *Q = a->Qh + bh * T * d;
            for (int s = 0; s < T; s++)
                for (int64_t i = 0; i < d; i++)
                    for (int64_t j = 0; j < d; j++) A[i * d + j] += Q[s * d + i] * Q[s * d + j];
        }
        peri_tr_layernorm_fwd(a->lnA, a->lnA_m, a->lnA_r, a->A0, TW(t, p->lnA_w), TW(t, p->lnA_b), nA, d, t->eps);
        const float *cur = a->lnA;
        for (int64_t r = 0; r < NR; r++) {
            const float *in = cur;
            for (int64_t j = 0; j < ND; j++) {
                tr_glu_fwd(t, &ar, &p->glu[r * ND + j], &a->glu[r * ND + j], cur, nA);
                if (ar.oom) goto oom;
                cur = a->glu[r * ND + j].y;
            }
            a->sum[r] = tr_alloc(&ar, (size_t)(nA * d)); a->out[r] = tr_alloc(&ar, (size_t)(nA * d));
            a->sm[r] = tr_alloc(&ar, (size_t)nA); a->sr[r] = tr_alloc(&ar, (size_t)nA);
            if (ar.oom) goto oom;
            for (int64_t i = 0; i < nA * d; i++) a->sum[r][i] = cur[i] + in[i];
            peri_tr_layernorm_fwd(a->out[r], a->sm[r], a->sr[r], a->sum[r], TW(t, p->lnr_w[r]), TW(t, p->lnr_b[r]), nA, d, t->eps);
            cur = a->out[r];
        }
        const float *Af = cur;
        a->Z = tr_alloc(&ar, (size_t)(nA * d)); a->AW = tr_alloc(&ar, (size_t)(nA * d));
        a->AP = tr_alloc(&ar, (size_t)(nA * d)); a->G = tr_alloc(&ar, (size_t)(nA * d));
        a->Qp = tr_alloc(&ar, (size_t)(n * D)); a->P = tr_alloc(&ar, (size_t)((int64_t)B * H * T * T));
        a->Oh = tr_alloc(&ar, (size_t)(n * D)); a->O = tr_alloc(&ar, (size_t)(n * D));
        if (ar.oom) goto oom;
        for (int b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                size_t bh = ((size_t)b * H + h) * d * d, ph = (size_t)h * d * d;
                // Z = W A + b; A_LM = iSwiGLU(Z) + 1e-9; A_P = A_LM^pw; G = a A_P + ba
                peri_tr_mm_fwd(a->Z + bh, TW(t, p->W) + ph, Af + bh, (int)d, (int)d, (int)d);
                for (int64_t i = 0; i < d * d; i++) a->Z[bh + i] += TW(t, p->b)[ph + i];
                peri_tr_iswiglu_fwd(a->AW + bh, a->Z + bh, d * d);
                for (int64_t i = 0; i < d * d; i++) a->AW[bh + i] += 1e-9f;
                peri_tr_pow_fwd(a->AP + bh, a->AW + bh, TW(t, p->pw) + ph, d * d);
                peri_tr_mm_fwd(a->G + bh, TW(t, p->a) + ph, a->AP + bh, (int)d, (int)d, (int)d);
                for (int64_t i = 0; i < d * d; i++) a->G[bh + i] += TW(t, p->ba)[ph + i];
                size_t qh = ((size_t)b * H + h) * T * d;
                peri_tr_mm_fwd(a->Qp + qh, a->Qh + qh, a->G + bh, T, (int)d, (int)d);
            }
        peri_tr_attn_fwd_heads(t->pool, a->Oh, a->P, a->Qp, a->Kh, a->Vh, keep, B, H, T, (int)d, (int)d, scale);
        from_heads_add(a->O, a->Oh, B, T, H, d);
        a->att = tr_alloc(&ar, (size_t)(n * D)); a->s1 = tr_alloc(&ar, (size_t)(n * D)); a->h1 = tr_alloc(&ar, (size_t)(n * D));
        a->m1 = tr_alloc(&ar, (size_t)n); a->r1 = tr_alloc(&ar, (size_t)n);
        a->s2 = tr_alloc(&ar, (size_t)(n * D)); a->xout = tr_alloc(&ar, (size_t)(n * D));
        a->m2 = tr_alloc(&ar, (size_t)n); a->r2 = tr_alloc(&ar, (size_t)n);
        if (ar.oom) goto oom;
        peri_tr_lin_fwd(t->pool, a->att, a->O, TW(t, p->wd), TW(t, p->bd), n, D, D);
        for (int64_t i = 0; i < n * D; i++) a->s1[i] = x[i] + a->att[i];
        peri_tr_layernorm_fwd(a->h1, a->m1, a->r1, a->s1, TW(t, p->ln1_w), TW(t, p->ln1_b), n, D, t->eps);
        tr_glu_fwd(t, &ar, &p->ffn, &a->ffn, a->h1, n);
        if (ar.oom) goto oom;
        for (int64_t i = 0; i < n * D; i++) a->s2[i] = a->h1[i] + a->ffn.y[i];
        peri_tr_layernorm_fwd(a->xout, a->m2, a->r2, a->s2, TW(t, p->ln2_w), TW(t, p->ln2_b), n, D, t->eps);
        x = a->xout;
    }
    float *logits = tr_alloc(&ar, (size_t)(n * NO)), *dlogits = bwd ? tr_alloc(&ar, (size_t)(n * NO)) : NULL;
    if (ar.oom) goto oom;
    peri_tr_lin_fwd(t->pool, logits, x, TW(t, p_fw), TW(t, p_fb), n, D, NO);
    if (o->logits_out) memcpy(o->logits_out, logits, sizeof(float) * (size_t)(n * NO));
    if (t->head) {
        int hrc = peri_tr_head_loss(t, logits, dlogits, ids, labels, o->targets, B, T, o->grad_scale, &res->loss, &res->n_terms);
        if (hrc < 0) { rc = hrc; goto out; }
    } else res->loss = tr_loss(logits, dlogits, labels, n, V, o->grad_scale, &res->n_terms);
    res->total = res->loss;
    // ---- DAG terms (and their gradients, added to dA_LM, dA_P, dG before the PLGA backward) ----
    bool dag = o->dag_eval || o->dag_coef[0] != 0 || o->dag_coef[1] != 0 || o->dag_coef[2] != 0;
    if (dag) {
        double *work = malloc(sizeof(double) * (size_t)(6 * d * d));
        gdag = calloc((size_t)(3 * L), sizeof(float *));
        if (!work || !gdag) { free(work); goto oom; }
        const double inv = 1.0 / (double)(L * B * H);
        for (int k = 0; k < 3; k++) {
            double acc = 0, coef = o->dag_coef[k] * inv * o->grad_scale;
            for (int64_t l = 0; l < L; l++) {
                const float *M = k == 0 ? la[l].AW : k == 1 ? la[l].AP : la[l].G;
                if (bwd && coef != 0) {
                    gdag[k * L + l] = tr_alloc(&ar, (size_t)(nA * d));
                    if (ar.oom) { free(work); goto oom; }
                }
                for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
                    float *g = gdag[k * L + l] ? gdag[k * L + l] + bh * d * d : NULL;
                    double v = dag_term(M + bh * d * d, (int)d, coef, g, work);
                    acc += v;
                    if (o->dag_per_head) o->dag_per_head[(k * L + l) * B * H + bh] = v;
                }
            }
            res->dag[k] = acc * inv;
            res->total += o->dag_coef[k] * res->dag[k];
        }
        free(work);
    }
    if (!bwd) goto done;
    // ---- backward ----
    {
        float *dx = tr_alloc(&ar, (size_t)(n * D));
        if (ar.oom) goto oom;
        peri_tr_lin_bwd(t->pool, dx, TG(t, p_fw), TG(t, p_fb), dlogits, x, TW(t, p_fw), n, D, NO);
        for (int64_t l = L - 1; l >= 0; l--) {
            pldr_lact *a = &la[l];
            const pldr_lidx *p = &ix[l];
            tr_arena br = {0};   // this layer's backward scratch
            float *ds2 = tr_alloc(&br, (size_t)(n * D)), *ds1 = tr_alloc(&br, (size_t)(n * D));
            float *dh1 = tr_alloc(&br, (size_t)(n * D)), *dO = tr_alloc(&br, (size_t)(n * D));
            float *dOh = tr_alloc(&br, (size_t)(n * D)), *dQp = tr_alloc(&br, (size_t)(n * D));
            float *dQh = tr_alloc(&br, (size_t)(n * D)), *dKh = tr_alloc(&br, (size_t)(n * D)), *dVh = tr_alloc(&br, (size_t)(n * D));
            float *dG = tr_alloc(&br, (size_t)(nA * d)), *dAP = tr_alloc(&br, (size_t)(nA * d));
            float *dAW = tr_alloc(&br, (size_t)(nA * d)), *dZ = tr_alloc(&br, (size_t)(nA * d));
            float *dAf = tr_alloc(&br, (size_t)(nA * d)), *dA0 = tr_alloc(&br, (size_t)(nA * d));
            float *dq = tr_alloc(&br, (size_t)(n * D)), *dk = tr_alloc(&br, (size_t)(n * D)), *dv = tr_alloc(&br, (size_t)(n * D));
            float *dxin = tr_alloc(&br, (size_t)(n * D));
            if (br.oom) { tr_arena_free(&br); goto oom; }
            peri_tr_layernorm_bwd(ds2, TG(t, p->ln2_w), TG(t, p->ln2_b), dx, a->s2, a->m2, a->r2, TW(t, p->ln2_w), n, D);
            memcpy(dh1, ds2, sizeof(float) * (size_t)(n * D));
            if ((rc = tr_glu_bwd(t, &p->ffn, &a->ffn, ds2, dh1, n))) { tr_arena_free(&br); goto out; }
            peri_tr_layernorm_bwd(ds1, TG(t, p->ln1_w), TG(t, p->ln1_b), dh1, a->s1, a->m1, a->r1, TW(t, p->ln1_w), n, D);
            memcpy(dxin, ds1, sizeof(float) * (size_t)(n * D));
            peri_tr_lin_bwd(t->pool, dO, TG(t, p->wd), TG(t, p->bd), ds1, a->O, TW(t, p->wd), n, D, D);
            to_heads(dOh, dO, B, T, H, d);
            // Q' = Q G: the gradient reaches every query through G, from every position's loss
            if ((rc = peri_tr_attn_bwd_heads(t->pool, dQp, dKh, dVh, dOh, a->P, a->Qp, a->Kh, a->Vh, B, H, T, (int)d, (int)d,
                                             scale, dQh, dG, a->Qh, a->G))) { tr_arena_free(&br); goto out; }
            if (gdag) {
                float *dst[3] = {dAW, dAP, dG};
                for (int k = 0; k < 3; k++)
                    if (gdag[k * L + l]) for (int64_t i = 0; i < nA * d; i++) dst[k][i] += gdag[k * L + l][i];
            }
            for (int b = 0; b < B; b++)
                for (int64_t h = 0; h < H; h++) {
                    size_t bh = ((size_t)b * H + h) * d * d, ph = (size_t)h * d * d;
                    peri_tr_mm_bwd(TG(t, p->a) + ph, dAP + bh, dG + bh, TW(t, p->a) + ph, a->AP + bh, (int)d, (int)d, (int)d);
                    for (int64_t i = 0; i < d * d; i++) TG(t, p->ba)[ph + i] += dG[bh + i];
                    peri_tr_pow_bwd(dAW + bh, TG(t, p->pw) + ph, dAP + bh, a->AW + bh, TW(t, p->pw) + ph, a->AP + bh, d * d);
                    peri_tr_iswiglu_bwd(dZ + bh, dAW + bh, a->Z + bh, d * d);
                    const float *Af = NR ? a->out[NR - 1] : a->lnA;
                    peri_tr_mm_bwd(TG(t, p->W) + ph, dAf + bh, dZ + bh, TW(t, p->W) + ph, Af + bh, (int)d, (int)d, (int)d);
                    for (int64_t i = 0; i < d * d; i++) TG(t, p->b)[ph + i] += dZ[bh + i];
                }
            // metric learner, last residual unit first
            float *dcur = dAf;
            for (int64_t r = NR - 1; r >= 0; r--) {
                float *dsum = tr_alloc(&br, (size_t)(nA * d));
                if (br.oom) { tr_arena_free(&br); goto oom; }
                peri_tr_layernorm_bwd(dsum, TG(t, p->lnr_w[r]), TG(t, p->lnr_b[r]), dcur, a->sum[r], a->sm[r], a->sr[r],
                                      TW(t, p->lnr_w[r]), nA, d);
                float *dy = dsum;   // d(GLU chain output); the residual passes dsum to the unit input too
                for (int64_t j = ND - 1; j >= 0; j--) {
                    float *dxg = tr_alloc(&br, (size_t)(nA * d));
                    if (br.oom) { tr_arena_free(&br); goto oom; }
                    if ((rc = tr_glu_bwd(t, &p->glu[r * ND + j], &a->glu[r * ND + j], dy, dxg, nA))) { tr_arena_free(&br); goto out; }
                    dy = dxg;
                }
                for (int64_t i = 0; i < nA * d; i++) dy[i] += dsum[i];
                dcur = dy;
            }
            peri_tr_layernorm_bwd(dA0, TG(t, p->lnA_w), TG(t, p->lnA_b), dcur, a->A0, a->lnA_m, a->lnA_r, TW(t, p->lnA_w), nA, d);
            // A = sum_s q_s q_s^T: dq_s += (dA + dA^T) q_s
            for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
                const float *g = dA0 + bh * d * d, *Q = a->Qh + bh * T * d;
                float *dQ = dQh + bh * T * d;
                for (int s = 0; s < T; s++)
                    for (int64_t i = 0; i < d; i++) {
                        float acc = 0;
                        for (int64_t j = 0; j < d; j++) acc += (g[i * d + j] + g[j * d + i]) * Q[s * d + j];
                        dQ[s * d + i] += acc;
                    }
            }
            from_heads_add(dq, dQh, B, T, H, d);
            from_heads_add(dk, dKh, B, T, H, d);
            from_heads_add(dv, dVh, B, T, H, d);
            rope_rows(t, dq, B, T, H, d, 1);
            rope_rows(t, dk, B, T, H, d, 1);
            peri_tr_lin_bwd(t->pool, dxin, TG(t, p->wq), TG(t, p->bq), dq, a->xin, TW(t, p->wq), n, D, D);
            peri_tr_lin_bwd(t->pool, dxin, TG(t, p->wk), TG(t, p->bk), dk, a->xin, TW(t, p->wk), n, D, D);
            peri_tr_lin_bwd(t->pool, dxin, TG(t, p->wv), TG(t, p->bv), dv, a->xin, TW(t, p->wv), n, D, D);
            memcpy(dx, dxin, sizeof(float) * (size_t)(n * D));
            tr_arena_free(&br);
        }
        float *dx0 = tr_alloc(&ar, (size_t)(n * D));
        if (ar.oom) goto oom;
        peri_tr_layernorm_bwd(dx0, TG(t, p_lnw), TG(t, p_lnb), dx, x0, em, er, TW(t, p_lnw), n, D);
        float *gE = TG(t, p_emb);
        for (int64_t i = 0; i < n; i++)
            for (int64_t e = 0; e < D; e++) gE[(size_t)ids[i] * D + e] += sqD * dx0[i * D + e];
    }
done:
    rc = PERI_OK;
    goto out;
oom:
    rc = peri_fail(PERI_E_NOMEM, "out of memory for the activations of a %d x %d batch", B, T);
out:
    free(gdag);
    free(keep);
    free(ix);
    free(la);
    tr_arena_free(&ar);
    return rc;
}
