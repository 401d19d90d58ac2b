// PLM training: the forward of /work/shared/specs/plm.md section 2 (MLA in its expanded form, squared-ReLU
// MLP, RMSNorm, tied or untied head) in float32 keeping its activations, and its backward.
#include "train/tcommon.h"

#include <math.h>

int peri_tr_plm_params(peri_trainer *t, const json_value *c) {
    int64_t V, D, L, H, nope, rope, dv, R, F, ctx, pad, eos, bos, qlr;
    double theta, eps;
    bool tie, inter, ab;
    const char *act = NULL;
    if (!json_get_int(c, "vocab_size", 151936, &V) || !json_get_int(c, "hidden_size", 2048, &D) ||
        !json_get_int(c, "num_hidden_layers", 32, &L) || !json_get_int(c, "num_attention_heads", 16, &H) ||
        !json_get_int(c, "qk_nope_head_dim", 128, &nope) || !json_get_int(c, "qk_rope_head_dim", 64, &rope) ||
        !json_get_int(c, "v_head_dim", 128, &dv) || !json_get_int(c, "kv_lora_rank", 512, &R) ||
        !json_get_int(c, "intermediate_size", 8192, &F) || !json_get_int(c, "max_position_embeddings", 4096, &ctx) ||
        !json_get_num(c, "rope_theta", 100000, &theta) || !json_get_num(c, "rms_norm_eps", 1e-6, &eps) ||
        !json_get_bool(c, "tie_word_embeddings", true, &tie) || !json_get_bool(c, "rope_interleave", true, &inter) ||
        !json_get_bool(c, "attention_bias", false, &ab) || !json_get_str(c, "hidden_act", "relu2", &act) ||
        !json_get_int(c, "pad_token_id", -1, &pad) || !json_get_int(c, "eos_token_id", -1, &eos) ||
        !json_get_int(c, "bos_token_id", -1, &bos) || !json_get_int(c, "q_lora_rank", 0, &qlr))
        return peri_fail_prefix(PERI_E_FORMAT, "config.json: ");
    if (qlr) return peri_fail(PERI_E_UNSUPPORTED, "config.json: q_lora_rank %lld: PLM has no query LoRA", (long long)qlr);
    if (ab) return peri_fail(PERI_E_UNSUPPORTED, "config.json: attention_bias true is not supported for PLM training");
    if (strcmp(act, "relu2")) return peri_fail(PERI_E_UNSUPPORTED, "config.json: hidden_act \"%s\" (PLM uses relu2)", act);
    if (V < 1 || D < 1 || L < 1 || H < 1 || nope < 0 || rope < 2 || rope % 2 || dv < 1 || R < 1 || F < 1 || ctx < 2 ||
        V > (1 << 22) || D > (1 << 16) || L > 1024 || H > 1024 || nope > 4096 || rope > 4096 || dv > 4096 || R > (1 << 16) ||
        F > (1 << 18) || ctx > (1 << 20))
        return peri_fail(PERI_E_FORMAT, "config.json: PLM sizes out of range (qk_rope_head_dim must be even)");
    t->V = V; t->D = D; t->L = L; t->H = H; t->nope = nope; t->rope = rope; t->dv = dv; t->rank = R; t->F = F;
    t->n_ctx = ctx; t->theta = theta; t->eps = (float)eps; t->tied = tie; t->interleaved = true;
    t->pad_id = (int32_t)pad; t->eos_id = (int32_t)eos; t->bos_id = (int32_t)bos;
    const int64_t dk = nope + rope;
    char nm[256];
    int rc;
#define ADD(n_, ...) do { int64_t sh_[] = {__VA_ARGS__}; if ((rc = peri_tr_add_param(t, n_, (int)(sizeof sh_ / sizeof sh_[0]), sh_)) < 0) return rc; } while (0)
#define ADDL(suffix, ...) do { snprintf(nm, sizeof nm, "model.layers.%lld.%s", (long long)l, suffix); ADD(nm, __VA_ARGS__); } while (0)
    ADD("model.embed_tokens.weight", V, D);
    for (int64_t l = 0; l < L; l++) {
        ADDL("input_layernorm.weight", D);
        ADDL("self_attn.q_proj.weight", H * dk, D);
        ADDL("self_attn.kv_a_proj_with_mqa.weight", R + rope, D);
        ADDL("self_attn.kv_a_layernorm.weight", R);
        ADDL("self_attn.kv_b_proj.weight", H * (nope + dv), R);
        ADDL("self_attn.o_proj.weight", D, H * dv);
        ADDL("post_attention_layernorm.weight", D);
        ADDL("mlp.up_proj.weight", F, D);
        ADDL("mlp.down_proj.weight", D, F);
    }
    ADD("model.norm.weight", D);
    if (t->head != PERI_TR_HEAD_LM) {
        if ((rc = peri_tr_head_params(t, &t->head_w, &t->head_b)) < 0) return rc;
    } else if (!tie) ADD("lm_head.weight", V, D);
#undef ADD
#undef ADDL
    return PERI_OK;
}

typedef struct {
    int in_w, wq, wkva, kva_w, wkvb, wo, post_w, up, down;
} plm_lidx;

typedef struct {
    float *xin, *r1, *h, *q, *kva, *cin, *rc, *c, *kr, *kv;
    float *Qh, *Kh, *Vh, *P, *Oh, *O, *att, *xmid, *r2, *h2, *u, *uu, *xout;
} plm_lact;

static void rope_vec(const peri_trainer *t, float *x, int s, int inverse) {
    int64_t half = t->rope / 2;
    peri_tr_rope(x, (int)t->rope, t->cos_tab + (size_t)s * half, t->sin_tab + (size_t)s * half, 1, inverse);
}

int peri_tr_plm_run(peri_trainer *t, const int32_t *ids, const int32_t *labels, int B, int T,
                    const struct peri_tr_opts *o, struct peri_tr_result *res) {
    const int64_t D = t->D, H = t->H, L = t->L, V = t->V, nope = t->nope, rp = t->rope, dv = t->dv, R = t->rank;
    const int64_t F = t->F, dk = nope + rp, kvw = nope + dv, n = (int64_t)B * T;
    const bool bwd = o->backward;
    const float scale = 1.0f / sqrtf((float)dk);
    tr_arena ar = {0};
    int rc = PERI_OK;
    plm_lidx *ix = calloc((size_t)L, sizeof(*ix));
    plm_lact *la = calloc((size_t)L, sizeof(*la));
    if (!ix || !la) { free(ix); free(la); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    for (int64_t l = 0; l < L; l++) {
        long long i = (long long)l;
        ix[l].in_w = tr_pidx(t, "model.layers.%lld.input_layernorm.weight", i);
        ix[l].wq = tr_pidx(t, "model.layers.%lld.self_attn.q_proj.weight", i);
        ix[l].wkva = tr_pidx(t, "model.layers.%lld.self_attn.kv_a_proj_with_mqa.weight", i);
        ix[l].kva_w = tr_pidx(t, "model.layers.%lld.self_attn.kv_a_layernorm.weight", i);
        ix[l].wkvb = tr_pidx(t, "model.layers.%lld.self_attn.kv_b_proj.weight", i);
        ix[l].wo = tr_pidx(t, "model.layers.%lld.self_attn.o_proj.weight", i);
        ix[l].post_w = tr_pidx(t, "model.layers.%lld.post_attention_layernorm.weight", i);
        ix[l].up = tr_pidx(t, "model.layers.%lld.mlp.up_proj.weight", i);
        ix[l].down = tr_pidx(t, "model.layers.%lld.mlp.down_proj.weight", i);
    }
    const int p_emb = tr_pidx(t, "model.embed_tokens.weight"), p_norm = tr_pidx(t, "model.norm.weight");
    const int p_head = t->head ? t->head_w : t->tied ? p_emb : tr_pidx(t, "lm_head.weight");
    const int p_hb = t->head ? t->head_b : -1;
    const int64_t NO = t->head ? t->n_out : V;   // outputs per position
    // ---- forward ----
    float *x0 = tr_alloc(&ar, (size_t)(n * D));
    if (ar.oom) goto oom;
    for (int64_t i = 0; i < n; i++) memcpy(x0 + i * D, TW(t, p_emb) + (size_t)ids[i] * D, sizeof(float) * (size_t)D);
    const float *x = x0;
    for (int64_t l = 0; l < L; l++) {
        plm_lact *a = &la[l];
        const plm_lidx *p = &ix[l];
        a->xin = (float *)x;
        a->r1 = tr_alloc(&ar, (size_t)n); a->h = tr_alloc(&ar, (size_t)(n * D));
        a->q = tr_alloc(&ar, (size_t)(n * H * dk)); a->kva = tr_alloc(&ar, (size_t)(n * (R + rp)));
        a->cin = tr_alloc(&ar, (size_t)(n * R)); a->rc = tr_alloc(&ar, (size_t)n); a->c = tr_alloc(&ar, (size_t)(n * R));
        a->kr = tr_alloc(&ar, (size_t)(n * rp)); a->kv = tr_alloc(&ar, (size_t)(n * H * kvw));
        a->Qh = tr_alloc(&ar, (size_t)(n * H * dk)); a->Kh = tr_alloc(&ar, (size_t)(n * H * dk));
        a->Vh = tr_alloc(&ar, (size_t)(n * H * dv)); a->P = tr_alloc(&ar, (size_t)((int64_t)B * H * T * T));
        a->Oh = tr_alloc(&ar, (size_t)(n * H * dv)); a->O = tr_alloc(&ar, (size_t)(n * H * dv));
        a->att = tr_alloc(&ar, (size_t)(n * D)); a->xmid = tr_alloc(&ar, (size_t)(n * D)); a->r2 = tr_alloc(&ar, (size_t)n);
        a->h2 = tr_alloc(&ar, (size_t)(n * D)); a->u = tr_alloc(&ar, (size_t)(n * F)); a->uu = tr_alloc(&ar, (size_t)(n * F));
        a->xout = tr_alloc(&ar, (size_t)(n * D));
        if (ar.oom) goto oom;
        peri_tr_rmsnorm_fwd(a->h, a->r1, x, TW(t, p->in_w), n, D, t->eps);
        peri_tr_lin_fwd(t->pool, a->q, a->h, TW(t, p->wq), NULL, n, D, H * dk);
        peri_tr_lin_fwd(t->pool, a->kva, a->h, TW(t, p->wkva), NULL, n, D, R + rp);
        for (int64_t i = 0; i < n; i++) {
            memcpy(a->cin + i * R, a->kva + i * (R + rp), sizeof(float) * (size_t)R);
            memcpy(a->kr + i * rp, a->kva + i * (R + rp) + R, sizeof(float) * (size_t)rp);
        }
        peri_tr_rmsnorm_fwd(a->c, a->rc, a->cin, TW(t, p->kva_w), n, R, t->eps);
        peri_tr_lin_fwd(t->pool, a->kv, a->c, TW(t, p->wkvb), NULL, n, R, H * kvw);
        for (int b = 0; b < B; b++)
            for (int s = 0; s < T; s++) {
                int64_t i = (int64_t)b * T + s;
                rope_vec(t, a->kr + i * rp, s, 0);
                for (int64_t h = 0; h < H; h++) {
                    float *qv = a->q + (i * H + h) * dk;
                    rope_vec(t, qv + nope, s, 0);
                    size_t hs = (((size_t)b * H + h) * T + s);
                    memcpy(a->Qh + hs * dk, qv, sizeof(float) * (size_t)dk);
                    memcpy(a->Kh + hs * dk, a->kv + (i * H + h) * kvw, sizeof(float) * (size_t)nope);
                    memcpy(a->Kh + hs * dk + nope, a->kr + i * rp, sizeof(float) * (size_t)rp);
                    memcpy(a->Vh + hs * dv, a->kv + (i * H + h) * kvw + nope, sizeof(float) * (size_t)dv);
                }
            }
        peri_tr_attn_fwd_heads(t->pool, a->Oh, a->P, a->Qh, a->Kh, a->Vh, NULL, B, H, T, (int)dk, (int)dv, scale);
        for (int b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int s = 0; s < T; s++)
                    memcpy(a->O + ((int64_t)b * T + s) * H * dv + h * dv, a->Oh + (((size_t)b * H + h) * T + s) * dv,
                           sizeof(float) * (size_t)dv);
        peri_tr_lin_fwd(t->pool, a->att, a->O, TW(t, p->wo), NULL, n, H * dv, D);
        for (int64_t i = 0; i < n * D; i++) a->xmid[i] = x[i] + a->att[i];
        peri_tr_rmsnorm_fwd(a->h2, a->r2, a->xmid, TW(t, p->post_w), n, D, t->eps);
        peri_tr_lin_fwd(t->pool, a->u, a->h2, TW(t, p->up), NULL, n, D, F);
        peri_tr_relu2_fwd(a->uu, a->u, n * F);
        peri_tr_lin_fwd(t->pool, a->xout, a->uu, TW(t, p->down), NULL, n, F, D);
        for (int64_t i = 0; i < n * D; i++) a->xout[i] += a->xmid[i];
        x = a->xout;
    }
    float *rf = tr_alloc(&ar, (size_t)n), *xf = tr_alloc(&ar, (size_t)(n * D));
    float *logits = tr_alloc(&ar, (size_t)(n * NO)), *dlogits = bwd ? tr_alloc(&ar, (size_t)(n * NO)) : NULL;
    if (ar.oom) goto oom;
    peri_tr_rmsnorm_fwd(xf, rf, x, TW(t, p_norm), n, D, t->eps);
    peri_tr_lin_fwd(t->pool, logits, xf, TW(t, p_head), TW(t, p_hb), n, D, NO);
    if (o->logits_out) memcpy(o->logits_out, logits, sizeof(float) * (size_t)(n * NO));
    if (t->head) {
        int hrc = peri_tr_head_loss(t, logits, dlogits, ids, labels, o->targets, B, T, o->grad_scale, &res->loss, &res->n_terms);
        if (hrc < 0) { rc = hrc; goto out; }
    } else res->loss = tr_loss(logits, dlogits, labels, n, V, o->grad_scale, &res->n_terms);
    res->total = res->loss;
    if (!bwd) goto done;
    // ---- backward ----
    {
        float *dxf = tr_alloc(&ar, (size_t)(n * D)), *dx = tr_alloc(&ar, (size_t)(n * D));
        if (ar.oom) goto oom;
        peri_tr_lin_bwd(t->pool, dxf, TG(t, p_head), TG(t, p_hb), dlogits, xf, TW(t, p_head), n, D, NO);
        peri_tr_rmsnorm_bwd(dx, TG(t, p_norm), dxf, x, rf, TW(t, p_norm), n, D);
        for (int64_t l = L - 1; l >= 0; l--) {
            plm_lact *a = &la[l];
            const plm_lidx *p = &ix[l];
            tr_arena br = {0};
            float *duu = tr_alloc(&br, (size_t)(n * F)), *du = tr_alloc(&br, (size_t)(n * F));
            float *dh2 = tr_alloc(&br, (size_t)(n * D)), *dxmid = tr_alloc(&br, (size_t)(n * D));
            float *dO = tr_alloc(&br, (size_t)(n * H * dv)), *dOh = tr_alloc(&br, (size_t)(n * H * dv));
            float *dQh = tr_alloc(&br, (size_t)(n * H * dk)), *dKh = tr_alloc(&br, (size_t)(n * H * dk));
            float *dVh = tr_alloc(&br, (size_t)(n * H * dv)), *dq = tr_alloc(&br, (size_t)(n * H * dk));
            float *dkv = tr_alloc(&br, (size_t)(n * H * kvw)), *dkr = tr_alloc(&br, (size_t)(n * rp));
            float *dc = tr_alloc(&br, (size_t)(n * R)), *dkva = tr_alloc(&br, (size_t)(n * (R + rp)));
            float *dcin = tr_alloc(&br, (size_t)(n * R)), *dh = tr_alloc(&br, (size_t)(n * D));
            if (br.oom) { tr_arena_free(&br); goto oom; }
            // x_out = x_mid + down(relu(up(RMS(x_mid)))^2)
            memcpy(dxmid, dx, sizeof(float) * (size_t)(n * D));
            peri_tr_lin_bwd(t->pool, duu, TG(t, p->down), NULL, dx, a->uu, TW(t, p->down), n, F, D);
            peri_tr_relu2_bwd(du, duu, a->u, n * F);
            peri_tr_lin_bwd(t->pool, dh2, TG(t, p->up), NULL, du, a->h2, TW(t, p->up), n, D, F);
            peri_tr_rmsnorm_bwd(dxmid, TG(t, p->post_w), dh2, a->xmid, a->r2, TW(t, p->post_w), n, D);
            // x_mid = x_in + o_proj(attention)
            memcpy(dx, dxmid, sizeof(float) * (size_t)(n * D));
            peri_tr_lin_bwd(t->pool, dO, TG(t, p->wo), NULL, dxmid, a->O, TW(t, p->wo), n, H * dv, D);
            for (int b = 0; b < B; b++)
                for (int64_t h = 0; h < H; h++)
                    for (int s = 0; s < T; s++)
                        memcpy(dOh + (((size_t)b * H + h) * T + s) * dv, dO + ((int64_t)b * T + s) * H * dv + h * dv,
                               sizeof(float) * (size_t)dv);
            if ((rc = peri_tr_attn_bwd_heads(t->pool, dQh, dKh, dVh, dOh, a->P, a->Qh, a->Kh, a->Vh, B, H, T, (int)dk, (int)dv,
                                             scale, NULL, NULL, NULL, NULL))) { tr_arena_free(&br); goto out; }
            for (int b = 0; b < B; b++)
                for (int s = 0; s < T; s++) {
                    int64_t i = (int64_t)b * T + s;
                    for (int64_t h = 0; h < H; h++) {
                        size_t hs = (((size_t)b * H + h) * T + s);
                        float *gq = dq + (i * H + h) * dk;
                        memcpy(gq, dQh + hs * dk, sizeof(float) * (size_t)dk);
                        rope_vec(t, gq + nope, s, 1);
                        float *gkv = dkv + (i * H + h) * kvw;
                        for (int64_t e = 0; e < nope; e++) gkv[e] += dKh[hs * dk + e];
                        for (int64_t e = 0; e < dv; e++) gkv[nope + e] += dVh[hs * dv + e];
                        // the rope key is shared by all heads: its gradient sums over them
                        for (int64_t e = 0; e < rp; e++) dkr[i * rp + e] += dKh[hs * dk + nope + e];
                    }
                    rope_vec(t, dkr + i * rp, s, 1);
                }
            peri_tr_lin_bwd(t->pool, dc, TG(t, p->wkvb), NULL, dkv, a->c, TW(t, p->wkvb), n, R, H * kvw);
            peri_tr_rmsnorm_bwd(dcin, TG(t, p->kva_w), dc, a->cin, a->rc, TW(t, p->kva_w), n, R);
            for (int64_t i = 0; i < n; i++) {
                memcpy(dkva + i * (R + rp), dcin + i * R, sizeof(float) * (size_t)R);
                memcpy(dkva + i * (R + rp) + R, dkr + i * rp, sizeof(float) * (size_t)rp);
            }
            peri_tr_lin_bwd(t->pool, dh, TG(t, p->wkva), NULL, dkva, a->h, TW(t, p->wkva), n, D, R + rp);
            peri_tr_lin_bwd(t->pool, dh, TG(t, p->wq), NULL, dq, a->h, TW(t, p->wq), n, D, H * dk);
            peri_tr_rmsnorm_bwd(dx, TG(t, p->in_w), dh, a->xin, a->r1, TW(t, p->in_w), n, D);
            tr_arena_free(&br);
        }
        // HF builds the embedding with padding_idx = pad_token_id: that row gets no embedding-path gradient
        float *gE = TG(t, p_emb);
        for (int64_t i = 0; i < n; i++) {
            if (ids[i] == t->pad_id) continue;
            for (int64_t e = 0; e < D; e++) gE[(size_t)ids[i] * D + e] += dx[i * D + e];
        }
    }
done:
    rc = PERI_OK;
    goto out;
oom:
    rc = peri_fail(PERI_E_NOMEM, "out of memory for the activations of a %d x %d batch", B, T);
out:
    free(ix);
    free(la);
    tr_arena_free(&ar);
    return rc;
}
