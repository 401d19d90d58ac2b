// PLM (PLM-Team/PLM-1.8B): MLA without query LoRA, squared-ReLU MLP, tied embeddings; latent or full KV cache.
//
// Math: /work/shared/specs/plm.md section 2; cache layouts and the absorbed derivation: docs/plm.md.
#include "core/error.h"
#include "kernels/ops.h"
#include "runtime/init.h"
#include "runtime/model.h"
#include "tensor/repack.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

// Hyperparameters are bounded so that every size product below fits comfortably in size_t and int64.
#define PLM_MAX_DIM (1 << 20)
#define PLM_MAX_LAYERS 4096
#define PLM_MAX_CTX (1 << 22)
// Tokens per row processed through all layers at once: bounds the scratch (the batch is split into
// micro-batches of this many tokens; causality makes that exact).
#define PLM_UBATCH 256
// Query rows per block in the blocked latent attention of prefill: the block's rows (times the heads) are the rows of
// one small GEMM over the cache rows, so each cache row is read and converted from F16 once per block, not per row.
#define PLM_QBLOCK 8
// Query rows per block in the decompressed prefill (dattn_task): the rows of one GEMM against a head's keys.
#define PLM_DBLOCK 64
// Keys per chunk in one-row decode attention (kattn phase 4): 256 F16 latent rows are 288 KiB, well inside L2.
#define PLM_KCHUNK 256

struct plm_layer {
    const peri_tensor *wq, *wkva, *wkvb, *wo, *up, *down;
    peri_tensor down_tt;         // down points here when rearranged at load: [n_ff][D], or a T layout [D][n_ff]
    float *attn_norm, *kva_norm, *ffn_norm;
};

struct plm_model {
    int64_t n_embd, n_head, nope, rope, vdim, rank, n_ff, n_vocab, n_layer, n_ctx_train;
    int64_t dk;                  // nope + rope
    double theta;
    float eps;
    const peri_tensor *embd, *output;
    float *out_norm;
    struct plm_layer *layers;
    bool gguf;
    // sparse_down auto: each layer's share of zero activations in the load's pass (prepare), or NULL if none ran
    float *zero_share;
};

struct plm_ctx {
    int64_t ubatch;              // tokens per row in one micro-batch
    int64_t n_rows_max;          // n_seq_max * ubatch
    bool full;                   // kv_full: expanded K/V cache
    bool cache_f16;              // cache element type (F16 or F32)
    size_t esz;                  // bytes per cache element
    // Latent cache: [layer][seq][slot][rank + rope]. Full cache: K [layer][seq][slot][H*dk], V [..][H*v].
    void *cache_a, *cache_b;
    int64_t width_a, width_b;    // elements per slot in cache_a / cache_b
    uint8_t *valid;              // [seq][slot]: 0 = padding token (never a key)
    float *cos_tab, *sin_tab;    // [n_ctx_train][rope/2]
    // micro-batch scratch, rows = n_rows_max
    // qlat: [row][head][R + rope] = [W_kb,h^T q_nope,h | roped q_rope,h], the query against a latent cache
    // row [c | k_rope], so one dot product gives the whole score.
    float *x, *h, *tmp, *q, *a, *kv, *qlat, *clat, *att, *ff;   // latent cache: qlat and clat point into ff
    // per-thread scratch
    int nth;
    // W_kb,h of the head being worked on, dequantized to float32 [nope x R] per thread, for the absorbed query of
    // several rows with quantized kv_b (latent cache)
    float *wkbt;
    float *scores;               // [nth][PLM_QBLOCK * H * score_ld(n_ctx)] (latent cache), [nth][H * n_ctx] (full)
    float *part;                 // [nth][H * R]: per-thread partial latent mixes (one-row decode, latent cache)
    float *part_ml;              // [nth][2 * H]: each thread's per-head largest score and sum of exponentials
    float *kmix;                 // [nth][H * R + 2 * H]: a key chunk's latent mixes, largest scores, sums (kattn phase 4)
    // Decompressed prefill (dattn_task), per thread in ff (unused by the absorbed form's buffers on that path):
    // [latent rows as F32 (F16 cache only) | keys [nk][dk] | values [nk][vd] | scores [PLM_DBLOCK][dkeys]]
    int64_t dkeys;               // most keys the decompressed prefill handles (0: never)
    int64_t dscr_n;              // floats of scratch per thread
    float *rowbuf;               // [nth][rowbuf_n]
    int64_t rowbuf_n;
    // tensor_cb scratch (only when a callback is set)
    float *probs, *emit;         // probs [n_rows_max][H][n_ctx] (NULL if too large), emit [emit_n]
    int64_t emit_n;
    // per micro-batch bookkeeping
    int32_t *row_seq, *row_slot, *row_pos;   // [n_rows_max]
    int64_t *zeros;              // [n_layer] zero activations counted, or NULL (only the load's pass counts)
};

// ---- loading ------------------------------------------------------------------------------------------

static int plm_match(const peri_weights *w) {
    if (w->gguf) {
        gguf_str s;
        return peri_gguf_get_str(w->gguf, "general.architecture", &s) && s.len == 3 && !memcmp(s.s, "plm", 3);
    }
    const char *mt = NULL;
    if (json_get_str(w->config, "model_type", NULL, &mt) && mt && !strcmp(mt, "plm")) return 1;
    const json_value *arch = json_get(w->config, "architectures");
    if (arch && arch->type == JSON_ARRAY)
        for (size_t i = 0; i < arch->len; i++)
            if (arch->items[i].type == JSON_STRING && !strcmp(arch->items[i].str, "PLMForCausalLM")) return 1;
    peri_clear_error();
    return 0;
}

static int cfg_int(const peri_model *m, const char *key, const char *gkey, int64_t def, int64_t lo, int64_t hi,
                   int64_t *out) {
    int64_t v = def;
    if (m->w.gguf) {
        int64_t g;
        if (peri_gguf_get_i64(m->w.gguf, gkey, &g)) v = g;
        else if (def == INT64_MIN)
            return peri_fail(PERI_E_FORMAT, "'%s': GGUF key '%s' is missing or not an integer; it is required for "
                             "a plm model", m->w.path, gkey);
    } else {
        if (!json_get_int(m->w.config, key, def, &v)) return PERI_E_FORMAT;
        if (v == INT64_MIN)
            return peri_fail(PERI_E_FORMAT, "'%s': config.json has no integer '%s'; it is required for a plm "
                             "model", m->w.path, key);
    }
    if (v < lo || v > hi)
        return peri_fail(PERI_E_FORMAT, "'%s': %s = %lld is outside the supported range %lld..%lld", m->w.path,
                         m->w.gguf ? gkey : key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return PERI_OK;
}

static int cfg_num(const peri_model *m, const char *key, const char *gkey, double def, double *out) {
    double v = def;
    if (m->w.gguf) {
        double g;
        if (peri_gguf_get_f64(m->w.gguf, gkey, &g)) v = g;
        else if (isnan(def))
            return peri_fail(PERI_E_FORMAT, "'%s': GGUF key '%s' is missing or not a number; it is required for "
                             "a plm model", m->w.path, gkey);
    } else if (!json_get_num(m->w.config, key, def, &v)) {
        return PERI_E_FORMAT;
    }
    if (!isfinite(v) || v <= 0)
        return peri_fail(PERI_E_FORMAT, "'%s': %s = %g must be a positive number", m->w.path, m->w.gguf ? gkey : key,
                         v);
    *out = v;
    return PERI_OK;
}

// HF config checks for features PLM does not have: refuse rather than compute something else.
static int check_hf_config(const peri_model *m) {
    const json_value *cfg = m->w.config;
    const json_value *v = json_get(cfg, "q_lora_rank");
    if (v && v->type != JSON_NULL)
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': config.json q_lora_rank is set, but PLM has a full-rank q_proj "
                         "(q_lora_rank null); a query LoRA is DeepSeek-V2 style and not supported", m->w.path);
    v = json_get(cfg, "rope_scaling");
    if (v && v->type != JSON_NULL)
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': config.json rope_scaling is set; PLM uses plain RoPE and peri "
                         "supports no rope scaling for it (set it to null)", m->w.path);
    const char *act = NULL;
    if (!json_get_str(cfg, "hidden_act", "relu2", &act)) return PERI_E_FORMAT;
    if (strcmp(act, "relu2") != 0)
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': config.json hidden_act is '%s'; PLM's MLP is relu2 (squared "
                         "ReLU) and no other activation is supported", m->w.path, act);
    bool bias = false;
    if (!json_get_bool(cfg, "attention_bias", false, &bias)) return PERI_E_FORMAT;
    if (bias)
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': config.json attention_bias is true; PLM has no attention biases",
                         m->w.path);
    return PERI_OK;
}

static int token_id(const peri_model *m, const char *key, const char *gkey, int64_t n_vocab, peri_token *out) {
    int64_t v = -1;
    if (m->w.gguf) {
        if (!peri_gguf_get_i64(m->w.gguf, gkey, &v)) v = -1;
    } else {
        const json_value *j = json_get(m->w.config, key);
        if (j && j->type == JSON_NUMBER && j->is_integer) v = j->integer;
        else if (j && j->type == JSON_ARRAY && j->len > 0 && j->items[0].type == JSON_NUMBER &&
                 j->items[0].is_integer)
            v = j->items[0].integer;   // eos_token_id may be a list in HF configs: the first one
    }
    *out = v >= 0 && v < n_vocab ? (peri_token)v : -1;
    return PERI_OK;
}

static int get_w(peri_model *m, const char *hf, const char *gg, int l, int n_dims, const int64_t *shape,
                 const peri_tensor **out) {
    char name[160];
    snprintf(name, sizeof name, m->w.gguf ? gg : hf, l);
    return peri_model_get(m, name, n_dims, shape, out);
}

static int get_w_f32(peri_model *m, const char *hf, const char *gg, int l, int64_t n, float **out) {
    char name[160];
    snprintf(name, sizeof name, m->w.gguf ? gg : hf, l);
    return peri_model_get_f32(m, name, 1, &n, out);
}

// The down projections stored by input for the sparse decode (down_proj): float types transposed ([n_ff][D]); Q8_0,
// Q4_K and Q6_K rearranged into their T layouts (tensor/repack.h: per group of inputs, the D rows' scales then one
// row of D codes per input), all exact. Other block types stay (their blocks run along the inputs). Which layers:
// model params sparse_down (peri.h); with auto, the float and Q8_0 ones at load (their sparse kernels run even with
// the dense ones at half zeros), the Q4_K and Q6_K ones after a pass that measures the activations (plm_prepare). A
// mapped weight goes into a buffer of the model and its pages are dropped (the memory stays about that of the file,
// without copy-on-write copies of the pages); one read into memory is rearranged in place, from a copy. Layers go to
// the threads of a pool made for the load (n_threads of the model parameters). use_repack off keeps the file's layout.
struct transpose_job {
    peri_model *m;
    struct plm_model *p;
    void **bufs;                 // per layer: the mapped weight's new buffer, or NULL (in place)
    atomic_int next, rc;
};

static void transpose_task(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    struct transpose_job *J = arg;
    for (int l; (l = atomic_fetch_add(&J->next, 1)) < J->p->n_layer;) {
        struct plm_layer *L = &J->p->layers[l];
        if (L->down != &L->down_tt) continue;
        const peri_tensor *W = &L->down_tt;
        const int64_t D = J->p->n_embd, F = J->p->n_ff;
        const void *src = W->data;
        void *dst = J->bufs[l], *copy = NULL;
        if (!dst) {   // in place: from a copy
            if (!(copy = malloc(W->nbytes))) {
                atomic_store(&J->rc, PERI_E_NOMEM);
                continue;
            }
            src = memcpy(copy, W->data, W->nbytes);
            dst = (void *)W->data;
        }
        const int tt = peri_t_layout(W->type, D, F);
        if (tt >= 0) peri_t_from(tt, dst, src, D, F);
        else peri_transpose_elems(dst, src, D, F, F, W->type == PERI_TYPE_F32 ? 4 : 2);
        if (copy) free(copy);
        else peri_weights_release(&J->m->w, W);
    }
}

// Whether layer l's down projection can be stored by its inputs; with `measured`, whether sparse_down auto decides it
// from the activations (Q4_K, Q6_K: their kernels lose to the dense ones at half zeros: docs/plm.md).
static bool down_can_sparse(const struct plm_model *p, int l, bool *measured) {
    const int t = p->layers[l].down->type;
    *measured = t == PERI_TYPE_Q4_K || t == PERI_TYPE_Q6_K;
    return t == PERI_TYPE_F32 || t == PERI_TYPE_F16 || t == PERI_TYPE_BF16 || peri_t_layout(t, p->n_embd, p->n_ff) >= 0;
}

// Rearranges the down projections of the layers with pick[l] set (and not rearranged yet).
static int transpose_down(peri_model *m, struct plm_model *p, const bool *pick) {
    void **bufs = calloc((size_t)p->n_layer, sizeof(void *));   // the buffers themselves live with the model
    if (!bufs) return peri_fail(PERI_E_NOMEM, "rearranging the down projections: out of memory");
    int any = 0;
    for (int l = 0; l < p->n_layer; l++) {
        struct plm_layer *L = &p->layers[l];
        if (!pick[l] || L->down == &L->down_tt) continue;
        if (peri_weights_mapped(&m->w, L->down) && !(bufs[l] = peri_model_alloc(m, L->down->nbytes))) {
            free(bufs);
            return peri_fail_prefix(PERI_E_NOMEM, "transposing '%s': ", L->down->name);
        }
        L->down_tt = *L->down;   // the file's tensor until transpose_task is done with it
        L->down = &L->down_tt, any = 1;
    }
    if (!any) {
        free(bufs);
        return PERI_OK;
    }
    struct transpose_job J = {.m = m, .p = p, .bufs = bufs};
    peri_pool *pool = peri_pool_new(m->params.n_threads);
    if (pool) {
        peri_pool_run(pool, transpose_task, &J);
        peri_pool_free(pool);
    } else {
        transpose_task(&J, 0, 1);
    }
    if (atomic_load(&J.rc)) {
        free(bufs);
        return peri_fail(PERI_E_NOMEM, "rearranging the down projections: cannot allocate a copy of one");
    }
    for (int l = 0; l < p->n_layer; l++) {
        struct plm_layer *L = &p->layers[l];
        if (L->down != &L->down_tt) continue;
        if (bufs[l]) L->down_tt.data = bufs[l];
        const int tt = peri_t_layout(L->down_tt.type, p->n_embd, p->n_ff);
        if (tt >= 0) L->down_tt.type = tt;   // shape stays [D][n_ff]
        else L->down_tt.shape[0] = p->n_ff, L->down_tt.shape[1] = p->n_embd;
    }
    free(bufs);
    return PERI_OK;
}

static int plm_load(peri_model *m) {
    struct plm_model *p = peri_model_alloc(m, sizeof *p);
    if (!p) return PERI_E_NOMEM;
    m->arch = p;
    p->gguf = m->w.gguf != NULL;
    int rc;
    if (!p->gguf && (rc = check_hf_config(m))) return rc;
    const int64_t REQ = INT64_MIN;
    if ((rc = cfg_int(m, "hidden_size", "plm.embedding_length", REQ, 1, PLM_MAX_DIM, &p->n_embd)) ||
        (rc = cfg_int(m, "num_hidden_layers", "plm.block_count", REQ, 1, PLM_MAX_LAYERS, &p->n_layer)) ||
        (rc = cfg_int(m, "num_attention_heads", "plm.attention.head_count", REQ, 1, 4096, &p->n_head)) ||
        (rc = cfg_int(m, "intermediate_size", "plm.feed_forward_length", REQ, 1, PLM_MAX_DIM, &p->n_ff)) ||
        (rc = cfg_int(m, "kv_lora_rank", "plm.attention.kv_lora_rank", REQ, 1, PLM_MAX_DIM, &p->rank)) ||
        (rc = cfg_int(m, "max_position_embeddings", "plm.context_length", REQ, 1, PLM_MAX_CTX, &p->n_ctx_train)))
        return rc;
    int64_t kv_heads = p->n_head;
    if ((rc = cfg_int(m, "num_key_value_heads", "plm.attention.head_count_kv", p->n_head, 1, 4096, &kv_heads)))
        return rc;
    if (kv_heads != p->n_head)
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': %lld key/value heads for %lld attention heads; PLM's MLA expands "
                         "the latent into one K/V per head, so the two counts must be equal", m->w.path,
                         (long long)kv_heads, (long long)p->n_head);
    if (p->gguf) {
        int64_t klen, vlen;
        if ((rc = cfg_int(m, NULL, "plm.attention.key_length", REQ, 2, PLM_MAX_DIM, &klen)) ||
            (rc = cfg_int(m, NULL, "plm.attention.value_length", REQ, 1, PLM_MAX_DIM, &vlen)) ||
            (rc = cfg_int(m, NULL, "plm.rope.dimension_count", REQ, 2, PLM_MAX_DIM, &p->rope)))
            return rc;
        if (p->rope >= klen)
            return peri_fail(PERI_E_FORMAT, "'%s': plm.rope.dimension_count %lld must be smaller than "
                             "plm.attention.key_length %lld (key = [nope | rope])", m->w.path, (long long)p->rope,
                             (long long)klen);
        p->nope = klen - p->rope;
        p->vdim = vlen;
    } else {
        if ((rc = cfg_int(m, "qk_nope_head_dim", NULL, REQ, 1, PLM_MAX_DIM, &p->nope)) ||
            (rc = cfg_int(m, "qk_rope_head_dim", NULL, REQ, 2, PLM_MAX_DIM, &p->rope)) ||
            (rc = cfg_int(m, "v_head_dim", NULL, REQ, 1, PLM_MAX_DIM, &p->vdim)))
            return rc;
    }
    if (p->rope % 2)
        return peri_fail(PERI_E_FORMAT, "'%s': the rotary dimension %lld must be even (RoPE rotates pairs)",
                         m->w.path, (long long)p->rope);
    p->dk = p->nope + p->rope;
    if (p->n_head * (p->dk + p->vdim + p->rank) > PLM_MAX_DIM * 16)
        return peri_fail(PERI_E_FORMAT, "'%s': %lld heads of %lld+%lld dims are beyond peri's limits", m->w.path,
                         (long long)p->n_head, (long long)p->dk, (long long)p->vdim);
    double eps, theta;
    // llama.cpp requires the eps key in GGUF; its rope base defaults to 10000 there. HF PLMConfig defaults.
    if ((rc = cfg_num(m, "rms_norm_eps", "plm.attention.layer_norm_rms_epsilon", p->gguf ? NAN : 1e-6, &eps)) ||
        (rc = cfg_num(m, "rope_theta", "plm.rope.freq_base", p->gguf ? 10000.0 : 100000.0, &theta)))
        return rc;
    p->eps = (float)eps;
    p->theta = theta;

    // The vocabulary is the embedding's row count; a vocab_size key, when present, must agree.
    const peri_tensor *e = peri_weights_find(&m->w, p->gguf ? "token_embd.weight" : "model.embed_tokens.weight");
    if (!e || e->n_dims != 2)
        return peri_fail(PERI_E_FORMAT, "'%s': the token embedding '%s' is missing or not a matrix", m->w.path,
                         p->gguf ? "token_embd.weight" : "model.embed_tokens.weight");
    p->n_vocab = e->shape[0];
    int64_t vs;
    if ((rc = cfg_int(m, "vocab_size", "plm.vocab_size", p->n_vocab, 1, INT32_MAX, &vs))) return rc;
    if (vs != p->n_vocab)
        return peri_fail(PERI_E_FORMAT, "'%s': vocab_size is %lld but the embedding has %lld rows", m->w.path,
                         (long long)vs, (long long)p->n_vocab);
    const int64_t D = p->n_embd, H = p->n_head, R = p->rank;
    int64_t s2[2] = {p->n_vocab, D};
    if ((rc = peri_model_get(m, e->name, 2, s2, &p->embd))) return rc;
    const char *out_name = p->gguf ? "output.weight" : "lm_head.weight";
    if (peri_weights_find(&m->w, out_name)) {
        if ((rc = peri_model_get(m, out_name, 2, s2, &p->output))) return rc;
    } else {
        p->output = p->embd;   // tied (PLM always is; an lm_head, if a file has one, wins)
    }
    if ((rc = get_w_f32(m, "model.norm.weight", "output_norm.weight", 0, D, &p->out_norm))) return rc;

    p->layers = peri_model_alloc(m, sizeof *p->layers * (size_t)p->n_layer);
    if (!p->layers) return PERI_E_NOMEM;
    for (int l = 0; l < p->n_layer; l++) {
        struct plm_layer *L = &p->layers[l];
        int64_t sq[2] = {H * p->dk, D}, sa[2] = {R + p->rope, D}, sb[2] = {H * (p->nope + p->vdim), R},
                so[2] = {D, H * p->vdim}, su[2] = {p->n_ff, D}, sd[2] = {D, p->n_ff};
        if ((rc = get_w(m, "model.layers.%d.self_attn.q_proj.weight", "blk.%d.attn_q.weight", l, 2, sq, &L->wq)) ||
            (rc = get_w(m, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", "blk.%d.attn_kv_a_mqa.weight", l,
                        2, sa, &L->wkva)) ||
            (rc = get_w(m, "model.layers.%d.self_attn.kv_b_proj.weight", "blk.%d.attn_kv_b.weight", l, 2, sb,
                        &L->wkvb)) ||
            (rc = get_w(m, "model.layers.%d.self_attn.o_proj.weight", "blk.%d.attn_output.weight", l, 2, so,
                        &L->wo)) ||
            (rc = get_w(m, "model.layers.%d.mlp.up_proj.weight", "blk.%d.ffn_up.weight", l, 2, su, &L->up)) ||
            (rc = get_w(m, "model.layers.%d.mlp.down_proj.weight", "blk.%d.ffn_down.weight", l, 2, sd, &L->down)) ||
            (rc = get_w_f32(m, "model.layers.%d.input_layernorm.weight", "blk.%d.attn_norm.weight", l, D,
                            &L->attn_norm)) ||
            (rc = get_w_f32(m, "model.layers.%d.self_attn.kv_a_layernorm.weight", "blk.%d.attn_kv_a_norm.weight", l,
                            R, &L->kva_norm)) ||
            (rc = get_w_f32(m, "model.layers.%d.post_attention_layernorm.weight", "blk.%d.ffn_norm.weight", l, D,
                            &L->ffn_norm)))
            return rc;
    }

    if (m->params.use_repack && m->params.sparse_down != PERI_SPARSE_DOWN_OFF) {
        bool *pick = calloc((size_t)p->n_layer, sizeof(bool));
        if (!pick) return peri_fail(PERI_E_NOMEM, "'%s': out of memory", m->w.path);
        for (int l = 0; l < p->n_layer; l++) {
            bool measured;
            pick[l] = down_can_sparse(p, l, &measured) && (!measured || m->params.sparse_down == PERI_SPARSE_DOWN_ON);
        }
        rc = transpose_down(m, p, pick);
        free(pick);
        if (rc) return rc;
    }

    m->n_vocab = (int32_t)p->n_vocab;
    m->n_embd = (int32_t)D;
    m->n_layer = (int32_t)p->n_layer;
    m->n_ctx_train = (int32_t)p->n_ctx_train;
    if (p->gguf) {
        token_id(m, NULL, "tokenizer.ggml.bos_token_id", p->n_vocab, &m->bos);
        token_id(m, NULL, "tokenizer.ggml.eos_token_id", p->n_vocab, &m->eos);
        token_id(m, NULL, "tokenizer.ggml.padding_token_id", p->n_vocab, &m->pad);
    } else {
        token_id(m, "bos_token_id", NULL, p->n_vocab, &m->bos);
        token_id(m, "eos_token_id", NULL, p->n_vocab, &m->eos);
        token_id(m, "pad_token_id", NULL, p->n_vocab, &m->pad);
    }
    return PERI_OK;
}

// ---- sparse_down auto: the Q4_K and Q6_K down projections of the layers whose activations are mostly zero -------

// The pass that measures them: this text through the model (ids spread over the vocabulary without a tokenizer).
#define PLM_PREPARE_TOKENS 16
static const char plm_prepare_text[] =
    "The history of science is the study of how people came to understand the natural world, from the first "
    "records of the night sky to the experiments of modern laboratories.";

// The least share of zero activations at which a layer's down projection is rearranged: the T layout's kernel alone
// against the dense one (2048 x 8192, 2 threads) broke even at about 70% zeros (Q4_K) and 80% (Q6_K); docs/plm.md.
static double down_min_zero_share(int type) { return type == PERI_TYPE_Q6_K ? 0.85 : 0.80; }

static int plm_prepare(peri_model *m) {
    struct plm_model *p = m->arch;
    if (!m->params.use_repack || m->params.sparse_down != PERI_SPARSE_DOWN_AUTO) return PERI_OK;
    int cands = 0;
    for (int l = 0; l < p->n_layer; l++) {
        bool measured;
        cands += p->layers[l].down != &p->layers[l].down_tt && down_can_sparse(p, l, &measured) && measured;
    }
    if (!cands) return PERI_OK;
    const int64_t n_ctx = p->n_ctx_train < PLM_PREPARE_TOKENS ? p->n_ctx_train : PLM_PREPARE_TOKENS;
    peri_token toks[4 * PLM_PREPARE_TOKENS];   // room for the whole text in any tokenizer that has its letters
    int64_t n = m->tok ? peri_tokenize(m->tok, plm_prepare_text, strlen(plm_prepare_text), toks,
                                       sizeof toks / sizeof toks[0], false) : 0;
    if (n < 0) n = 0, peri_clear_error();
    if (n > n_ctx) n = n_ctx;
    for (int64_t i = 0; i < n; i++)
        if (toks[i] < 0 || toks[i] >= p->n_vocab) n = 0;   // a tokenizer beyond the model's vocabulary
    if (n <= 0)
        for (n = 0; n < n_ctx; n++) toks[n] = (peri_token)((n * 7919 + 1) % p->n_vocab);

    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = (int32_t)n_ctx, cp.n_batch = (int32_t)n_ctx, cp.n_seq_max = 1, cp.n_threads = m->params.n_threads;
    peri_context *c;
    int rc = peri_context_init(m, cp, &c);
    if (rc) return peri_fail_prefix(rc, "measuring the activations for sparse_down auto: ");
    int64_t *zeros = calloc((size_t)p->n_layer, sizeof *zeros);
    if (!zeros) {
        peri_context_free(c);
        return peri_fail(PERI_E_NOMEM, "measuring the activations for sparse_down auto: out of memory");
    }
    struct plm_ctx *x = c->arch;
    x->zeros = zeros;
    const int32_t seq = 0;
    const struct peri_batch b = {.n_seq = 1, .n_tokens = (int32_t)n, .seq_ids = &seq, .tokens = toks};
    rc = peri_decode(c, &b);
    peri_context_free(c);
    float *share = rc ? NULL : peri_model_alloc(m, sizeof(float) * (size_t)p->n_layer);   // for plm_describe
    bool *pick = share ? calloc((size_t)p->n_layer, sizeof(bool)) : NULL;
    if (!rc && !pick) rc = peri_fail(PERI_E_NOMEM, "out of memory");   // prefixed below
    for (int l = 0; !rc && l < p->n_layer; l++) {
        bool measured;
        share[l] = (float)((double)zeros[l] / ((double)n * (double)p->n_ff));
        pick[l] = down_can_sparse(p, l, &measured) && measured && share[l] >= down_min_zero_share(p->layers[l].down->type);
    }
    free(zeros);
    if (rc) return peri_fail_prefix(rc, "measuring the activations for sparse_down auto: ");
    p->zero_share = share;
    rc = transpose_down(m, p, pick);
    free(pick);
    return rc;
}

static void plm_describe(const peri_model *m, peri_strbuf *sb) {
    const struct plm_model *p = m->arch;
    peri_sb_printf(sb, "plm: %lld heads, q/k head %lld (nope %lld + rope %lld), v head %lld, kv_lora_rank %lld, "
                   "ffn %lld (relu2), rope theta %g interleaved, rms eps %g, %s output\n",
                   (long long)p->n_head, (long long)p->dk, (long long)p->nope, (long long)p->rope,
                   (long long)p->vdim, (long long)p->rank, (long long)p->n_ff, p->theta, (double)p->eps,
                   p->output == p->embd ? "tied" : "separate");
    peri_sb_printf(sb, "plm cache per token (f16 default / f32): latent %lld / %lld B, full K/V (kv_full) %lld / %lld B\n",
                   (long long)((p->rank + p->rope) * 2 * p->n_layer), (long long)((p->rank + p->rope) * 4 * p->n_layer),
                   (long long)(p->n_head * (p->dk + p->vdim) * 2 * p->n_layer),
                   (long long)(p->n_head * (p->dk + p->vdim) * 4 * p->n_layer));
    int by_input = 0;
    float lo = 1.0f, hi = 0.0f;
    for (int l = 0; l < p->n_layer; l++) {
        by_input += p->layers[l].down == &p->layers[l].down_tt;
        if (p->zero_share) lo = p->zero_share[l] < lo ? p->zero_share[l] : lo, hi = p->zero_share[l] > hi ? p->zero_share[l] : hi;
    }
    peri_sb_printf(sb, "plm down projections stored by input (sparse decode): %d of %lld layers", by_input,
                   (long long)p->n_layer);
    if (p->zero_share) peri_sb_printf(sb, "; activations %.0f%% to %.0f%% zero in the load's pass", 100.0 * lo, 100.0 * hi);
    peri_sb_printf(sb, "\n");
}

// Floats between score rows for nk keys: a multiple of 16 (aligned rows) that is not one of a large power of two, so
// the rows that a GEMM tile reads together do not all fall into the same cache sets (at 16 KB apart they thrash L1
// and L2).
static inline int64_t score_ld(int64_t nk) {
    return ((nk + 15) & ~(int64_t)15) + 16;
}

// ---- context ------------------------------------------------------------------------------------------

static void plm_ctx_free(peri_context *c) {
    struct plm_ctx *x = c->arch;
    if (!x) return;
    free(x->cache_a); free(x->cache_b); free(x->valid); free(x->cos_tab); free(x->sin_tab);
    free(x->x); free(x->h); free(x->tmp); free(x->q); free(x->a); free(x->kv);
    free(x->att); free(x->ff); free(x->scores); free(x->rowbuf); free(x->wkbt); free(x->part); free(x->part_ml);
    free(x->kmix); free(x->probs); free(x->emit);
    free(x->row_seq); free(x->row_slot); free(x->row_pos);
    free(x);
    c->arch = NULL;
}

// n floats (or n elements of size es), NULL on overflow or failure.
static void *alloc_n(int64_t n, size_t es) {
    if (n < 0 || (uint64_t)n > SIZE_MAX / es / 2) return NULL;
    return malloc(es * (size_t)(n ? n : 1));
}

static int plm_ctx_init(peri_context *c) {
    struct plm_model *p = c->model->arch;
    struct plm_ctx *x = calloc(1, sizeof *x);
    if (!x) return peri_fail(PERI_E_NOMEM, "out of memory");
    c->arch = x;
    const int64_t H = p->n_head, R = p->rank, D = p->n_embd, nctx = c->params.n_ctx, nseq = c->params.n_seq_max;
    x->full = c->params.kv_full;
    // F16 by default, as llama.cpp: half the memory; F32 reproduces the float64 references to 1e-5
    // (docs/plm.md, "Cache precision").
    switch (c->params.kv_type) {
    case PERI_KV_DEFAULT: case PERI_KV_F16: x->cache_f16 = true; break;
    case PERI_KV_F32: x->cache_f16 = false; break;
    default:
        return peri_fail(PERI_E_ARG, "unknown kv_type %d: use PERI_KV_DEFAULT (0), PERI_KV_F32 (1) or PERI_KV_F16 (2)",
                         c->params.kv_type);
    }
    x->esz = x->cache_f16 ? 2 : 4;
    x->ubatch = c->params.n_batch < PLM_UBATCH ? c->params.n_batch : PLM_UBATCH;
    x->nth = peri_pool_size(c->pool);
    x->n_rows_max = nseq * x->ubatch;
    const int64_t N = x->n_rows_max;
    if (!x->full) {
        x->width_a = R + p->rope;
        x->width_b = 0;
    } else {
        x->width_a = H * p->dk;
        x->width_b = H * p->vdim;
    }
    int64_t slots = p->n_layer * nseq * nctx;
    double cache_bytes = (double)slots * (double)(x->width_a + x->width_b) * (double)x->esz;
    if (cache_bytes > 1e15)   // also keeps every size product below far from int64 overflow
        return peri_fail(PERI_E_NOMEM, "the plm %s cache for %lld sequences x %lld tokens would take %.3g bytes; "
                         "lower --ctx or the number of sequences", x->full ? "full K/V" : "latent", (long long)nseq,
                         (long long)nctx, cache_bytes);
    x->cache_a = alloc_n(slots * x->width_a, x->esz);
    x->cache_b = x->full ? alloc_n(slots * x->width_b, x->esz) : NULL;
    x->valid = calloc((size_t)(nseq * nctx), 1);
    int64_t half = p->rope / 2;
    x->cos_tab = alloc_n(p->n_ctx_train * half, 4);
    x->sin_tab = alloc_n(p->n_ctx_train * half, 4);
    x->x = alloc_n(N * D, 4);
    x->h = alloc_n(N * D, 4);
    x->tmp = alloc_n(N * D, 4);
    x->q = alloc_n(N * H * p->dk, 4);
    x->a = alloc_n(N * (R + p->rope), 4);
    x->att = alloc_n(N * H * p->vdim, 4);
    if (x->full) {
        x->ff = alloc_n(N * p->n_ff, 4);
        x->kv = alloc_n(N * H * (p->nope + p->vdim), 4);
    } else {
        // The absorbed queries and latent mixes live only inside attention, the MLP activations only after it: one
        // buffer serves both (17 MiB less at 256 rows for PLM-1.8B, which keeps a 512-token prefill inside the
        // memory goal). ff owns it; qlat and clat point into it.
        const int64_t nlat = N * H * (R + p->rope) + N * H * R, nff = N * p->n_ff;
        const int64_t nbuf = nlat > nff ? nlat : nff;
        x->ff = alloc_n(nbuf, 4);
        x->qlat = x->ff;
        x->clat = x->ff ? x->ff + N * H * (R + p->rope) : NULL;
        // The decompressed prefill's scratch shares it too: as many keys as the threads' shares of it hold.
        const int64_t per_key = (x->cache_f16 ? R : 0) + p->dk + p->vdim + PLM_DBLOCK;
        int64_t k = nbuf / ((int64_t)x->nth * per_key) / 16 * 16;
        x->dkeys = k > nctx ? nctx : k >= 64 ? k : 0;
        x->dscr_n = x->dkeys * per_key;
    }
    x->scores = alloc_n((int64_t)x->nth * (x->full ? H * nctx : PLM_QBLOCK * H * score_ld(nctx)), 4);
    x->rowbuf_n = x->width_a > x->width_b ? x->width_a : x->width_b;
    x->rowbuf = alloc_n((int64_t)x->nth * x->rowbuf_n, 4);
    if (!x->full) x->wkbt = alloc_n((int64_t)x->nth * R * p->nope, 4);
    if (!x->full) x->part = alloc_n((int64_t)x->nth * H * R, 4);
    if (!x->full) x->part_ml = alloc_n((int64_t)x->nth * 2 * H, 4);
    if (!x->full) x->kmix = alloc_n((int64_t)x->nth * (H * R + 2 * H), 4);
    x->row_seq = alloc_n(N, 4);
    x->row_slot = alloc_n(N, 4);
    x->row_pos = alloc_n(N, 4);
    bool ok = x->cache_a && (!x->full || x->cache_b) && x->valid && x->cos_tab && x->sin_tab && x->x && x->h &&
              x->tmp && x->q && x->a && x->att && x->ff && (x->full ? x->kv != NULL : x->qlat && x->clat) &&
              x->scores && x->rowbuf && (x->full || (x->wkbt && x->part && x->part_ml && x->kmix)) &&
              x->row_seq && x->row_slot && x->row_pos;
    if (ok && c->params.tensor_cb) {
        // Attention probabilities are only kept for the callback, and only when that stays reasonable.
        int64_t np = N * H * nctx;
        if (np <= ((int64_t)64 << 20)) {
            x->probs = alloc_n(np, 4);
            ok = x->probs != NULL;
        }
        int64_t e = x->ubatch * (R > p->rope ? R : p->rope);
        if (x->probs && np / nseq > e) e = np / nseq;
        x->emit_n = e;
        x->emit = alloc_n(e, 4);
        ok = ok && x->emit;
    }
    if (!ok) {
        double mib = (double)slots * (double)(x->width_a + x->width_b) * (double)x->esz / (1 << 20);
        return peri_fail(PERI_E_NOMEM, "out of memory for the plm context: %lld sequences x %lld tokens need "
                         "%.0f MiB of %s cache plus scratch; lower --ctx or the number of sequences%s",
                         (long long)nseq, (long long)nctx, mib, x->full ? "full K/V" : "latent",
                         x->full ? ", or drop --kv-full (the latent cache is far smaller)" : "");
    }
    peri_rope_table(x->cos_tab, x->sin_tab, p->n_ctx_train, (int)p->rope, p->theta);
    // Scratch for the matmuls' quantized activations, so the forward allocates nothing (docs/kernels.md).
    int64_t kmax = D > p->n_ff ? D : p->n_ff;
    if (H * p->vdim > kmax) kmax = H * p->vdim;
    unsigned by_inputs = 0;   // the down projections rearranged at load (or by the prepare pass, before this)
    for (int l = 0; l < p->n_layer; l++)
        if (p->layers[l].down == &p->layers[l].down_tt) by_inputs |= peri_by_inputs_bit(p->layers[l].down->type);
    return peri_matmul_reserve(c->pool, kmax, N, by_inputs);
}

// ---- forward ------------------------------------------------------------------------------------------

static inline void store_row(void *dst, const float *src, int64_t n, bool f16) {
    if (f16) {
        peri_f32_to_f16_row(dst, src, n);
    } else {
        memcpy(dst, src, sizeof(float) * (size_t)n);
    }
}

// Cache row as float32: the row itself for an F32 cache, else converted into buf.
static inline const float *load_row(const void *src, float *buf, int64_t n, bool f16) {
    if (!f16) return src;
    peri_f16_to_f32_row(buf, src, n);
    return buf;
}

struct attn_job {
    peri_context *c;
    int64_t layer, n_rows;
};

// Softmax over keys 0..t of one head's scores (masked keys are -inf). Returns 0 if no key is visible.
static int masked_softmax(float *s, int64_t n, int attn) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) {
        // No visible key: SDPA attends to nothing; eager's all-min row becomes uniform.
        float u = attn == PERI_ATTN_EAGER ? 1.0f / (float)n : 0.0f;
        for (int64_t j = 0; j < n; j++) s[j] = u;
        return attn == PERI_ATTN_EAGER;
    }
    peri_softmax(s, n);   // SIMD; masked keys (-inf) come out as exactly 0
    return 1;
}

// The latent cache rows 0..nk-1 of sequence s in layer l, as stored (F16 or F32), as a [nk x (R + rope)] weight.
static peri_tensor latent_rows(const peri_context *c, int64_t l, int64_t s, int64_t nk) {
    const struct plm_ctx *x = c->arch;
    const int64_t nctx = c->params.n_ctx, nseq = c->params.n_seq_max;
    peri_tensor t = {.name = "latent cache rows", .type = x->cache_f16 ? PERI_TYPE_F16 : PERI_TYPE_F32, .n_dims = 2,
                     .shape = {nk, x->width_a},
                     .data = (const char *)x->cache_a + (size_t)((l * nseq + s) * nctx) * (size_t)x->width_a * x->esz,
                     .nbytes = (size_t)nk * (size_t)x->width_a * x->esz, .flags = PERI_TENSOR_FLOAT_SUMS};
    return t;
}

// Scores [lo, hi) of one head: scaled, masked keys -inf.
static void scale_mask(float *row, const uint8_t *valid, int64_t lo, int64_t hi, float scale) {
    for (int64_t j = lo; j < hi; j++) row[j] *= scale;
    for (int64_t j = lo; j < hi; j++)
        if (!valid[j]) row[j] = -INFINITY;
}

// One thread's share of (row, head) units: scores against the cache, softmax, weighted sum.
// Latent cache: keys are c_j (scored by the absorbed query) and the shared k_rope_j; the output is the
// latent mix Σ p_j c_j per head (expanded by W_vb afterwards). Full cache: plain MHA on K/V rows.
static void attn_task(void *arg, int ith, int nth) {
    const struct attn_job *J = arg;
    peri_context *c = J->c;
    struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const int64_t H = p->n_head, R = p->rank, dk = p->dk, vd = p->vdim, rope = p->rope;
    const int64_t nctx = c->params.n_ctx, nseq = c->params.n_seq_max;
    const float scale = 1.0f / sqrtf((float)dk);
    float *sc = x->scores + (int64_t)ith * H * nctx;
    float *buf = x->rowbuf + (int64_t)ith * x->rowbuf_n;
    long lo, hi;
    peri_split((long)(J->n_rows * H), ith, nth, &lo, &hi);
    for (long u = lo; u < hi;) {
        int64_t n = u / H, h0 = u % H, h1 = H;
        if ((long)(n * H + h1) > hi) h1 = hi - n * H;
        u = n * H + h1;
        const int64_t s = x->row_seq[n], t = x->row_slot[n], nk = t + 1;
        const uint8_t *valid = x->valid + s * nctx;
        const size_t base = (size_t)((J->layer * nseq + s) * nctx);
        const float *qn = x->q + n * H * dk;
        const peri_tensor kt = latent_rows(c, J->layer, s, nk);   // latent cache only
        if (!x->full) {
            // The absorbed queries of heads h0..h1 against all nk cached rows at once: one small matmul on the
            // cache rows as they are stored (F16 or F32), instead of a row conversion and a dot per key and head.
            peri_matmul_ex(NULL, sc + h0 * nctx, nctx, x->qlat + (n * H + h0) * (R + rope), R + rope, &kt, 0, nk, NULL,
                           h1 - h0);
            for (int64_t h = h0; h < h1; h++) scale_mask(sc + h * nctx, valid, 0, nk, scale);
        } else {
            for (int64_t j = 0; j < nk; j++) {
                if (!valid[j]) {
                    for (int64_t h = h0; h < h1; h++) sc[h * nctx + j] = -INFINITY;
                    continue;
                }
                const char *kr = (const char *)x->cache_a + (base + (size_t)j) * (size_t)x->width_a * x->esz;
                const float *kj = load_row(kr + (size_t)(h0 * dk) * x->esz, buf, (h1 - h0) * dk, x->cache_f16);
                for (int64_t h = h0; h < h1; h++) sc[h * nctx + j] = peri_dot(qn + h * dk, kj + (h - h0) * dk, dk) * scale;
            }
        }
        for (int64_t h = h0; h < h1; h++) {
            masked_softmax(sc + h * nctx, nk, c->params.attn);
            if (x->probs) memcpy(x->probs + (n * H + h) * nctx, sc + h * nctx, sizeof(float) * (size_t)nk);
        }
        // Weighted sum of values (latent rows or V rows).
        int64_t w = x->full ? vd : R;
        float *out = x->full ? x->att + n * H * vd : x->clat + n * H * R;
        if (!x->full) {
            // Latent: the probabilities of heads h0..h1 times the first R values of the cache rows as stored, one
            // small matmul (masked keys have probability 0).
            peri_matmul_nn(out + h0 * R, R, sc + h0 * nctx, nctx, kt.type, kt.data, (size_t)x->width_a * x->esz, nk, R,
                           h1 - h0);
            continue;
        }
        // Full cache: V rows hold every head's values side by side; accumulated key by key.
        memset(out + h0 * w, 0, sizeof(float) * (size_t)((h1 - h0) * w));
        for (int64_t j = 0; j < nk; j++) {
            if (!valid[j] && c->params.attn != PERI_ATTN_EAGER) continue;
            const char *vr = (const char *)x->cache_b + (base + (size_t)j) * (size_t)x->width_b * x->esz;
            const float *vj = load_row(vr + (size_t)(h0 * vd) * x->esz, buf, (h1 - h0) * vd, x->cache_f16);
            for (int64_t h = h0; h < h1; h++) {
                float pj = sc[h * nctx + j];
                if (pj == 0.0f) continue;
                peri_axpy(out + h * vd, pj, vj + (h - h0) * vd, vd);
            }
        }
    }
}

// The largest of n > 0 scores (-inf when all are masked). Eight independent maxima instead of one chain, since a
// compare-and-select per key on one running maximum costs its latency per key (16 heads x 2000 keys per layer at
// depth 4096). A NaN score (never produced from finite weights) is skipped, so the result is always one of the
// values.
static float row_max(const float *v, int64_t n) {
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int u = 0; u < 8; u++) m[u] = v[j + u] > m[u] ? v[j + u] : m[u];
    for (; j < n; j++) m[0] = v[j] > m[0] ? v[j] : m[0];
    for (int u = 1; u < 8; u++) m[0] = m[u] > m[0] ? m[u] : m[0];
    return m[0];
}

// Latent-cache attention for many query rows (prefill): consecutive rows of one sequence form blocks of up to
// PLM_QBLOCK rows, and the block's rows x heads are the rows of one scores GEMM and one mix GEMM on the cache rows
// 0..nk-1 as stored (nk: the block's last key). A row's keys past its own slot are masked (causal). Blocks go to the
// threads in snake order (0 1 1 0 ...), which balances the causal blocks' growing cost.
struct lblock_job {
    peri_context *c;
    int64_t layer, n_rows;
};

// The first row after the block that starts at row n0.
static int64_t lblock_end(const struct plm_ctx *x, int64_t n0, int64_t n_rows) {
    int64_t n1 = n0 + 1;
    while (n1 < n_rows && n1 - n0 < PLM_QBLOCK && x->row_seq[n1] == x->row_seq[n0]) n1++;
    return n1;
}

static void lblock_task(void *arg, int ith, int nth) {
    const struct lblock_job *J = arg;
    peri_context *c = J->c;
    struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const int64_t H = p->n_head, R = p->rank, rope = p->rope, nctx = c->params.n_ctx;
    const float scale = 1.0f / sqrtf((float)p->dk);
    float *sc = x->scores + (int64_t)ith * PLM_QBLOCK * H * score_ld(nctx);
    int64_t b = 0;
    for (int64_t n0 = 0, n1; n0 < J->n_rows; n0 = n1, b++) {
        n1 = lblock_end(x, n0, J->n_rows);
        const int64_t round = b / nth, pos = b % nth;
        if ((round % 2 ? nth - 1 - pos : pos) != ith) continue;
        const int64_t s = x->row_seq[n0], rows = (n1 - n0) * H;
        int64_t nk = 0;
        for (int64_t n = n0; n < n1; n++) nk = x->row_slot[n] + 1 > nk ? x->row_slot[n] + 1 : nk;
        const uint8_t *valid = x->valid + s * nctx;
        const peri_tensor kt = latent_rows(c, J->layer, s, nk);
        const int64_t ld = score_ld(nk);
        peri_matmul_ex(NULL, sc, ld, x->qlat + n0 * H * (R + rope), R + rope, &kt, 0, nk, NULL, rows);
        for (int64_t n = n0; n < n1; n++) {
            const int64_t ni = x->row_slot[n] + 1;
            for (int64_t h = 0; h < H; h++) {
                float *row = sc + ((n - n0) * H + h) * ld;
                scale_mask(row, valid, 0, ni, scale);
                masked_softmax(row, ni, c->params.attn);
                if (x->probs) memcpy(x->probs + (n * H + h) * nctx, row, sizeof(float) * (size_t)ni);
                memset(row + ni, 0, sizeof(float) * (size_t)(nk - ni));   // later rows' keys
            }
        }
        peri_matmul_nn(x->clat + n0 * H * R, R, sc, ld, kt.type, kt.data, (size_t)x->width_a * x->esz, nk, R, rows);
    }
}

// One-row decode on the latent cache, split over the keys instead of the heads: each thread scores all heads on
// its share of the keys (so the cache rows are converted once, not once per thread), then the softmax runs per
// head, then each thread mixes its keys' rows for all heads into a partial sum, and the partials are added.
// Phases are separate pool runs; the scores of all heads live in thread 0's scores region.
// Phase 4 does phases 0-2 in one run with a softmax local to the thread's keys: the thread keeps, per head, its
// largest score m_t and the sum l_t of exp(s - m_t), and the W_vb job combines the partials (heads_combine), as
// flash attention does. It needs a visible key (the token's own) and no probabilities for the callback.
struct kattn_job {
    peri_context *c;
    int64_t layer;
    int phase;   // 0 scores, 1 softmax, 2 partial mixes, 3 sum of the partials; 4 = 0-2 with local softmax
};

static void kattn_task(void *arg, int ith, int nth) {
    const struct kattn_job *J = arg;
    peri_context *c = J->c;
    struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const int64_t H = p->n_head, R = p->rank, rope = p->rope, nctx = c->params.n_ctx;
    const int64_t s = x->row_seq[0], nk = x->row_slot[0] + 1;
    const uint8_t *valid = x->valid + s * nctx;
    const peri_tensor kt = latent_rows(c, J->layer, s, nk);
    const size_t rs = (size_t)x->width_a * x->esz;
    float *sc = x->scores;
    long lo, hi;
    if (J->phase == 1 || J->phase == 3) {   // per head
        peri_split((long)H, ith, nth, &lo, &hi);
        for (int64_t h = lo; h < hi; h++) {
            if (J->phase == 1) {
                masked_softmax(sc + h * nctx, nk, c->params.attn);
                if (x->probs) memcpy(x->probs + h * nctx, sc + h * nctx, sizeof(float) * (size_t)nk);
                continue;
            }
            peri_sum_parts(x->clat + h * R, x->part + h * R, H * R, nth, R);
        }
        return;
    }
    // per key: this thread's keys [lo, hi), in units of 16
    peri_split((long)((nk + 15) / 16), ith, nth, &lo, &hi);
    lo *= 16, hi *= 16;
    if (hi > nk) hi = nk;
    float *ml = x->part_ml + (int64_t)ith * 2 * H;
    if (J->phase == 4)
        for (int64_t h = 0; h < H; h++) ml[2 * h] = -INFINITY, ml[2 * h + 1] = 0.0f;
    if (lo >= hi) {
        if (J->phase == 2) memset(x->part + (int64_t)ith * H * R, 0, sizeof(float) * (size_t)(H * R));
        return;
    }
    const float scale = 1.0f / sqrtf((float)p->dk);
    if (J->phase == 0) {
        peri_attn_scores(sc + lo, nctx, x->qlat, R + rope, H, kt.type, (const char *)kt.data + (size_t)lo * rs, rs,
                         hi - lo, R + rope);
        for (int64_t h = 0; h < H; h++) scale_mask(sc + h * nctx, valid, lo, hi, scale);
    }
    if (J->phase == 2)
        peri_matmul_nn(x->part + (int64_t)ith * H * R, R, sc + lo, nctx, kt.type, (const char *)kt.data + (size_t)lo * rs,
                       rs, hi - lo, R, H);
    if (J->phase != 4) return;
    // Phase 4 in chunks of PLM_KCHUNK keys, so that a chunk's cache rows are read from memory once for the scores
    // and still in L2 for the mix (the thread's 2000 keys at depth 4096 are 2.3 MB as F16, more than L2). Each chunk
    // gets its own softmax (its largest score m_c, sum of exponentials l_c) and normalized mix, merged into the
    // thread's running (m_t, l_t, part_t) as heads_combine merges the threads'.
    float *part = x->part + (int64_t)ith * H * R, *mix = x->kmix + (int64_t)ith * (H * R + 2 * H);
    float *mc = mix + H * R, *lc = mc + H;   // per head: the chunk's largest score and sum of exponentials
    for (int64_t c0 = lo, c1; c0 < hi; c0 = c1) {
        c1 = c0 + PLM_KCHUNK < hi ? c0 + PLM_KCHUNK : hi;
        peri_attn_scores(sc + c0, nctx, x->qlat, R + rope, H, kt.type, (const char *)kt.data + (size_t)c0 * rs, rs,
                         c1 - c0, R + rope);
        for (int64_t h = 0; h < H; h++) {
            float *row = sc + h * nctx;
            scale_mask(row, valid, c0, c1, scale);
            mc[h] = row_max(row + c0, c1 - c0);
            if (mc[h] == -INFINITY) {   // none of the chunk's keys is visible: it contributes nothing
                memset(row + c0, 0, sizeof(float) * (size_t)(c1 - c0));
                continue;
            }
            int64_t am = c0;
            while (row[am] != mc[h]) am++;   // a key with the largest score (NaN scores never compare equal: see row_max)
            peri_softmax(row + c0, c1 - c0);   // exp(s - m_c) / l_c, and exp(0) / l_c at the largest score
            lc[h] = 1.0f / row[am];
        }
        peri_matmul_nn(mix, R, sc + c0, nctx, kt.type, (const char *)kt.data + (size_t)c0 * rs, rs, c1 - c0, R, H);
        for (int64_t h = 0; h < H; h++) {
            if (mc[h] == -INFINITY) continue;
            float *ph = part + h * R;
            const float *xh = mix + h * R;
            if (ml[2 * h] == -INFINITY) {
                memcpy(ph, xh, sizeof(float) * (size_t)R);
                ml[2 * h] = mc[h], ml[2 * h + 1] = lc[h];
                continue;
            }
            const float M = mc[h] > ml[2 * h] ? mc[h] : ml[2 * h];
            const float wo = expf(ml[2 * h] - M) * ml[2 * h + 1], wn = expf(mc[h] - M) * lc[h], z = wo + wn;
            const float ao = wo / z, an = wn / z;
            for (int64_t r = 0; r < R; r++) ph[r] = ao * ph[r] + an * xh[r];
            ml[2 * h] = M, ml[2 * h + 1] = z;
        }
    }
}

// tmp = ff W_down^T. Trained checkpoints' squared-ReLU activations are about 90% zeros (docs/plm.md, "Sparse down
// projection"), so with down stored by its inputs (transposed: a row of D values per input, or a T layout) a decoded
// token reads only the rows of its non-zero inputs (peri_matmul_by_inputs, peri_matmul_t). Without the
// rearrangement (another type, or use_repack off) it is the plain matmul.
static void down_proj(peri_context *c, const struct plm_layer *L, int64_t N) {
    struct plm_ctx *x = c->arch;
    if (L->down != &L->down_tt) {
        peri_matmul(c->pool, x->tmp, x->ff, L->down, NULL, N);
        return;
    }
    if (peri_t_kind(L->down->type) >= 0) peri_matmul_t(c->pool, x->tmp, x->ff, L->down, N);
    else peri_matmul_by_inputs(c->pool, x->tmp, x->ff, L->down, N);
}

struct heads_job {
    peri_context *c;
    const struct plm_layer *L;
    int64_t n_rows;
    int out;                     // 0: absorbed queries, 1: latent mixes expanded by W_vb
    int combine;                 // with out: first combine the threads' partial mixes of kattn phase 4
    atomic_int next_head;        // prefill: heads go to whichever thread is free (equal shares wait on a slower core)
};

// The latent mix of head h from the threads' partials of kattn phase 4: Σ_t w_t part_t / Σ_t w_t with
// w_t = exp(m_t - M) l_t (M the largest m_t), since each part_t was normalized by its own l_t.
static void heads_combine(struct plm_ctx *x, int64_t H, int64_t R, int64_t h) {
    float M = -INFINITY, z = 0.0f;
    for (int t = 0; t < x->nth; t++) M = x->part_ml[(int64_t)t * 2 * H + 2 * h] > M ? x->part_ml[(int64_t)t * 2 * H + 2 * h] : M;
    float *out = x->clat + h * R;
    memset(out, 0, sizeof(float) * (size_t)R);
    for (int t = 0; t < x->nth; t++) {
        const float *ml = x->part_ml + (int64_t)t * 2 * H + 2 * h;
        if (ml[0] == -INFINITY) continue;
        z += expf(ml[0] - M) * ml[1];
    }
    for (int t = 0; t < x->nth; t++) {
        const float *ml = x->part_ml + (int64_t)t * 2 * H + 2 * h;
        if (ml[0] == -INFINITY) continue;
        peri_axpy(out, expf(ml[0] - M) * ml[1] / z, x->part + ((int64_t)t * H + h) * R, R);
    }
}

// The first weight rows a decode kernel will read of a head's n rows from row r0: y = x C (the absorbed query,
// peri_nn_row) and y = x W^T (W_vb) both read them as 4 streams, one per quarter (docs/kernels.md "4 streams").
#define HEAD_PF_ROWS 16
static void head_prefetch(const peri_tensor *W, size_t rs, int64_t r0, int64_t n) {
    const int streams = 4;
    const char *base = (const char *)W->data;
    for (int qq = 0; qq < streams; qq++)
        for (int64_t r = r0 + qq * (n / streams), e = r + HEAD_PF_ROWS / streams; r < e && r < r0 + n; r++)
            for (size_t o = 0; o < rs; o += 64) __builtin_prefetch(base + (size_t)r * rs + o, 0, 3);
}

// The per-head products of the absorbed form, heads split over the threads: each head is one small
// matmul over all rows (its own input slice and weight rows), run on this thread alone.
static void heads_task(void *arg, int ith, int nth) {
    struct heads_job *J = arg;
    struct plm_ctx *x = J->c->arch;
    const struct plm_model *p = J->c->model->arch;
    const int64_t H = p->n_head, R = p->rank, dk = p->dk, vd = p->vdim, nope = p->nope, rope = p->rope;
    // Decode: heads in equal shares, the next head's first weight rows prefetched while this one runs (each head's
    // rows are one short stream that the hardware prefetcher would only start on when it is already being read).
    const bool dec = J->n_rows <= 4;
    long lo = 0, hi = 0;
    const size_t wrs = peri_row_size(J->L->wkvb->type, R);
    const int64_t wr0 = J->out ? nope : 0, wrn = J->out ? vd : nope;   // W_kb or W_vb rows within a head's block
    if (dec) {
        peri_split((long)H, ith, nth, &lo, &hi);
        if (lo < hi) head_prefetch(J->L->wkvb, wrs, lo * (nope + vd) + wr0, wrn);
    }
    for (int64_t h;;) {
        if (dec) {
            if (lo >= hi) break;
            h = lo++;
            if (lo < hi) head_prefetch(J->L->wkvb, wrs, lo * (nope + vd) + wr0, wrn);
        } else if ((h = atomic_fetch_add_explicit(&J->next_head, 1, memory_order_relaxed)) >= H) break;
        if (!J->out) {
            // q_lat,h = q_nope,h W_kb,h, where W_kb,h is the head's nope rows of kv_b ([nope x R] as stored): y = x C.
            // Float weights, and quantized ones for a few rows (decode), are used in place; for more rows quantized
            // ones are dequantized into the thread's scratch first (peri_matmul_nn would convert them per x row).
            const peri_tensor *W = J->L->wkvb;
            const int64_t r0 = h * (nope + vd);
            const void *cw = (const char *)W->data + (size_t)r0 * wrs;
            int ct = W->type;
            size_t cs = wrs;
            if (J->n_rows > 4 && ct != PERI_TYPE_F32 && ct != PERI_TYPE_F16 && ct != PERI_TYPE_BF16) {
                float *wt = x->wkbt + (int64_t)ith * R * nope;
                for (int64_t d = 0; d < nope; d++) peri_get_row(W, r0 + d, wt + d * R);
                cw = wt, ct = PERI_TYPE_F32, cs = sizeof(float) * (size_t)R;
            }
            peri_matmul_nn(x->qlat + h * (R + rope), H * (R + rope), x->q + h * dk, H * dk, ct, cw, cs, nope, R,
                           J->n_rows);
        } else {
            if (J->combine) heads_combine(x, H, R, h);
            peri_matmul_ex(NULL, x->att + h * vd, H * vd, x->clat + h * R, H * R, J->L->wkvb, h * (nope + vd) + nope,
                           vd, NULL, J->n_rows);
        }
    }
}

// Prefill on the latent cache in the decompressed form: each (batch row, head) unit expands the sequence's cached
// latent rows into the head's keys and values, k_j = [W_kb,h c_j | k_rope,j] and v_j = W_vb,h c_j, and runs plain
// causal attention on them, writing o_h straight into att. Per query row and key this costs dk + vd multiply-adds
// where the absorbed form costs 2R + rope (320 against 1088 for PLM-1.8B), for nk (nope + vd) R to expand the keys:
// about half the work for a prompt (use_decompressed decides; docs/plm.md "Prefill").
struct dattn_job {
    peri_context *c;
    int64_t layer, n_seq, T;
    atomic_int next;             // units (batch row, head) go to whichever thread is free
};

static void dattn_task(void *arg, int ith, int nth) {
    (void)nth;
    struct dattn_job *J = arg;
    peri_context *c = J->c;
    struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const struct plm_layer *L = &p->layers[J->layer];
    const int64_t H = p->n_head, R = p->rank, dk = p->dk, vd = p->vdim, nope = p->nope, rope = p->rope,
                  nctx = c->params.n_ctx, T = J->T, nkd = x->dkeys;
    const float scale = 1.0f / sqrtf((float)dk);
    float *lat = x->ff + (int64_t)ith * x->dscr_n;             // [nk][R] (F16 cache)
    float *kh = lat + (x->cache_f16 ? nkd * R : 0);             // [nk][dk]
    float *vh = kh + nkd * dk;                                  // [nk][vd]
    float *sc = vh + nkd * vd;                                  // [PLM_DBLOCK][nkd]
    int64_t lat_r = -1;                                         // the batch row whose latent rows are in lat
    for (int u; (u = atomic_fetch_add_explicit(&J->next, 1, memory_order_relaxed)) < J->n_seq * H;) {
        const int64_t r = u / H, h = u % H, n0 = r * T, s = x->row_seq[n0], nk = x->row_slot[n0 + T - 1] + 1;
        const char *rows = latent_rows(c, J->layer, s, nk).data;
        const size_t rs = (size_t)x->width_a * x->esz;
        const float *cl = (const float *)rows;
        int64_t ldl = x->width_a;
        if (x->cache_f16) {
            if (lat_r != r)
                for (int64_t j = 0; j < nk; j++) peri_f16_to_f32_row(lat + j * R, (const uint16_t *)(rows + (size_t)j * rs), R);
            lat_r = r, cl = lat, ldl = R;
        }
        // k_nope,j and v_j for every key: [nk x R] . W_kb,h^T and . W_vb,h^T (the head's rows of kv_b).
        peri_matmul_ex(NULL, kh, dk, cl, ldl, L->wkvb, h * (nope + vd), nope, NULL, nk);
        peri_matmul_ex(NULL, vh, vd, cl, ldl, L->wkvb, h * (nope + vd) + nope, vd, NULL, nk);
        for (int64_t j = 0; j < nk; j++) {
            const char *kr = rows + (size_t)j * rs + (size_t)R * x->esz;
            if (x->cache_f16) peri_f16_to_f32_row(kh + j * dk + nope, (const uint16_t *)kr, rope);
            else memcpy(kh + j * dk + nope, kr, sizeof(float) * (size_t)rope);
        }
        const peri_tensor kt = {.name = "decompressed keys", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {nk, dk},
                                .data = kh, .nbytes = sizeof(float) * (size_t)(nk * dk)};
        const uint8_t *valid = x->valid + s * nctx;
        for (int64_t i0 = 0, i1; i0 < T; i0 = i1) {
            i1 = i0 + PLM_DBLOCK < T ? i0 + PLM_DBLOCK : T;
            const int64_t nb = x->row_slot[n0 + i1 - 1] + 1;   // keys the block's last row sees
            peri_matmul_ex(NULL, sc, nkd, x->q + ((n0 + i0) * H + h) * dk, H * dk, &kt, 0, nb, NULL, i1 - i0);
            for (int64_t i = i0; i < i1; i++) {
                float *row = sc + (i - i0) * nkd;
                const int64_t ni = x->row_slot[n0 + i] + 1;
                scale_mask(row, valid, 0, ni, scale);
                masked_softmax(row, ni, c->params.attn);
                memset(row + ni, 0, sizeof(float) * (size_t)(nb - ni));   // later rows' keys
            }
            peri_matmul_nn(x->att + ((n0 + i0) * H + h) * vd, H * vd, sc, nkd, PERI_TYPE_F32, vh,
                           sizeof(float) * (size_t)vd, nb, vd, i1 - i0);
        }
    }
}

// Test hook (model.h): 0 lets use_decompressed weigh the two forms, 1 forces the absorbed one, 2 the decompressed
// one wherever its scratch allows.
static atomic_int g_prefill_form;
void peri_plm_set_prefill_form(int form) { atomic_store(&g_prefill_form, form); }

// Whether this micro-batch attends in the decompressed form: prefill without a tensor callback (which wants the
// absorbed form's probabilities and latent mixes), every row's keys within the scratch, and fewer multiply-adds.
static bool use_decompressed(const peri_context *c, int64_t n_seq, int64_t T) {
    const struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const int form = atomic_load(&g_prefill_form);
    if (x->full || T < 2 || !x->dkeys || c->params.tensor_cb || form == 1) return false;
    const double expand = (double)((p->nope + p->vdim) * p->rank), dec_key = (double)(p->dk + p->vdim),
                 abs_key = (double)(2 * p->rank + p->rope);
    double dec = 0, abs = 0;
    for (int64_t r = 0; r < n_seq; r++) {
        const int64_t nk = x->row_slot[r * T + T - 1] + 1;
        if (nk > x->dkeys) return false;
        double keys = 0;   // Σ over the rows of the keys each one sees
        for (int64_t i = 0; i < T; i++) keys += (double)(x->row_slot[r * T + i] + 1);
        dec += (double)nk * expand + keys * dec_key;
        abs += (double)T * expand + keys * abs_key;
    }
    return form == 2 || dec < abs;
}

static void emit(peri_context *c, const char *name, int l, int32_t seq, const float *data, int n_dims,
                 int64_t d0, int64_t d1, int64_t d2) {
    char nm[64];
    if (l >= 0) snprintf(nm, sizeof nm, "%s.%d", name, l);
    else snprintf(nm, sizeof nm, "%s", name);
    int64_t shape[3] = {d0, d1, d2};
    c->params.tensor_cb(nm, seq, data, n_dims, shape, c->params.tensor_cb_data);
}

// Named intermediates of layer l for every batch row (rows r*T .. r*T+T-1 of the micro-batch).
static void emit_attn(peri_context *c, int l, int64_t n_seq, int64_t T) {
    struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const int64_t H = p->n_head, R = p->rank, dk = p->dk, nctx = c->params.n_ctx;
    for (int64_t r = 0; r < n_seq; r++) {
        int64_t n0 = r * T;
        int32_t s = x->row_seq[n0];
        emit(c, "q", l, s, x->q + n0 * H * dk, 3, T, H, dk);
        for (int64_t i = 0; i < T; i++) memcpy(x->emit + i * R, x->a + (n0 + i) * (R + p->rope), sizeof(float) * (size_t)R);
        emit(c, "kv_latent", l, s, x->emit, 2, T, R, 0);
        for (int64_t i = 0; i < T; i++)
            memcpy(x->emit + i * p->rope, x->a + (n0 + i) * (R + p->rope) + R, sizeof(float) * (size_t)p->rope);
        emit(c, "k_rope", l, s, x->emit, 2, T, p->rope, 0);
        if (x->probs) {
            int64_t nk = x->row_slot[n0 + T - 1] + 1;   // keys seen by the last query of the micro-batch
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < T; i++) {
                    float *dst = x->emit + (h * T + i) * nk;
                    int64_t ni = x->row_slot[n0 + i] + 1;
                    memcpy(dst, x->probs + ((n0 + i) * H + h) * nctx, sizeof(float) * (size_t)ni);
                    memset(dst + ni, 0, sizeof(float) * (size_t)(nk - ni));
                }
            emit(c, "attn_probs", l, s, x->emit, 3, H, T, nk);
        }
    }
}

// The MLP activation relu(v)^2 over n values, split over the threads. Branch-free (a value with the sign bit set
// becomes +0), since the signs of the up projection are random and a branch mispredicts half the time; the compiler
// vectorizes this form.
struct relu_sq_job {
    float *v;
    int64_t n;
};

static void relu_sq_task(void *arg, int ith, int nth) {
    const struct relu_sq_job *J = arg;
    long lo, hi;
    peri_split((long)((J->n + 15) / 16), ith, nth, &lo, &hi);
    float *v = J->v;
    const int64_t end = hi * 16 < J->n ? hi * 16 : J->n;
    for (int64_t i = lo * 16; i < end; i++) {
        uint32_t u;
        memcpy(&u, &v[i], sizeof u);
        u &= ~(uint32_t)((int32_t)u >> 31);
        float f;
        memcpy(&f, &u, sizeof f);
        v[i] = f * f;
    }
}

static void rmsnorm_rows(float *y, const float *xs, const float *w, int64_t n_rows, int64_t d, int64_t ldx,
                         float eps) {
    for (int64_t i = 0; i < n_rows; i++) peri_rmsnorm(y + i * d, xs + i * ldx, w, d, eps);
}

// One micro-batch: tokens [i0, i0+T) of every batch row, all layers, then the logits it owes.
static int plm_ubatch(peri_context *c, const struct peri_batch *b, int64_t i0, int64_t T) {
    struct plm_ctx *x = c->arch;
    const struct plm_model *p = c->model->arch;
    const int64_t H = p->n_head, R = p->rank, D = p->n_embd, dk = p->dk, nope = p->nope, rope = p->rope,
                  vd = p->vdim, nctx = c->params.n_ctx, nseq = c->params.n_seq_max, half = rope / 2;
    const int64_t N = b->n_seq * T;
    const bool cb = c->params.tensor_cb != NULL;

    for (int64_t r = 0; r < b->n_seq; r++) {
        int32_t s = b->seq_ids ? b->seq_ids[r] : (int32_t)r;
        for (int64_t i = 0; i < T; i++) {
            int64_t n = r * T + i, bi = r * b->n_tokens + i0 + i;
            x->row_seq[n] = s;
            x->row_slot[n] = c->seq_len[s] + (int32_t)(i0 + i);
            x->row_pos[n] = b->pos ? b->pos[bi] : x->row_slot[n];
            x->valid[s * nctx + x->row_slot[n]] = b->mask ? b->mask[bi] != 0 : 1;
            peri_get_row(p->embd, b->tokens[bi], x->x + n * D);
        }
    }

    // Blocked latent attention when there are enough blocks to keep every thread busy; else (row, head) units.
    int64_t n_blocks = 0;
    for (int64_t n0 = 0; n0 < N; n0 = lblock_end(x, n0, N)) n_blocks++;
    const bool use_blocks = n_blocks >= 4 * (int64_t)x->nth;
    // One-row decode with enough keys to split them over the threads: in one run when the token's own key is visible
    // (so every head has a visible key) and no probabilities are kept, else in four phases.
    const bool ksplit = !x->full && N == 1 && x->row_slot[0] >= 64;
    const bool kfused = ksplit && !x->probs && x->valid[x->row_seq[0] * nctx + x->row_slot[0]];
    const bool decomp = use_decompressed(c, b->n_seq, T);

    for (int64_t l = 0; l < p->n_layer; l++) {
        const struct plm_layer *L = &p->layers[l];
        rmsnorm_rows(x->h, x->x, L->attn_norm, N, D, D, p->eps);
        peri_matmul(c->pool, x->q, x->h, L->wq, NULL, N);
        peri_matmul(c->pool, x->a, x->h, L->wkva, NULL, N);
        for (int64_t n = 0; n < N; n++) {
            float *an = x->a + n * (R + rope);
            peri_rmsnorm(an, an, L->kva_norm, R, p->eps);
            const float *cs = x->cos_tab + x->row_pos[n] * half, *sn = x->sin_tab + x->row_pos[n] * half;
            peri_rope_apply(an + R, (int)rope, cs, sn, 1);
            for (int64_t h = 0; h < H; h++) peri_rope_apply(x->q + (n * H + h) * dk + nope, (int)rope, cs, sn, 1);
        }
        // Append this micro-batch to the caches before attending: its own keys are part of the context.
        if (!x->full) {
            for (int64_t n = 0; n < N; n++) {
                size_t slot = (size_t)((l * nseq + x->row_seq[n]) * nctx + x->row_slot[n]);
                store_row((char *)x->cache_a + slot * (size_t)x->width_a * x->esz, x->a + n * (R + rope), R + rope,
                          x->cache_f16);
            }
            if (!decomp) {   // absorbed query: q_lat,h = [W_kb,h^T q_nope,h | q_rope,h]
                for (int64_t n = 0; n < N; n++)
                    for (int64_t h = 0; h < H; h++)
                        memcpy(x->qlat + (n * H + h) * (R + rope) + R, x->q + (n * H + h) * dk + nope,
                               sizeof(float) * (size_t)rope);
                struct heads_job hj = {.c = c, .L = L, .n_rows = N, .out = 0};
                peri_pool_run(c->pool, heads_task, &hj);
            }
        } else {
            peri_matmul_ex(c->pool, x->kv, H * (nope + vd), x->a, R + rope, L->wkvb, 0, H * (nope + vd), NULL, N);
            for (int64_t n = 0; n < N; n++) {
                size_t slot = (size_t)((l * nseq + x->row_seq[n]) * nctx + x->row_slot[n]);
                char *kd = (char *)x->cache_a + slot * (size_t)x->width_a * x->esz;
                char *vdst = (char *)x->cache_b + slot * (size_t)x->width_b * x->esz;
                const float *kvn = x->kv + n * H * (nope + vd);
                const float *kr = x->a + n * (R + rope) + R;
                for (int64_t h = 0; h < H; h++) {
                    store_row(kd + (size_t)(h * dk) * x->esz, kvn + h * (nope + vd), nope, x->cache_f16);
                    store_row(kd + (size_t)(h * dk + nope) * x->esz, kr, rope, x->cache_f16);
                    store_row(vdst + (size_t)(h * vd) * x->esz, kvn + h * (nope + vd) + nope, vd, x->cache_f16);
                }
            }
        }
        if (decomp) {
            struct dattn_job dj = {.c = c, .layer = l, .n_seq = b->n_seq, .T = T};
            peri_pool_run(c->pool, dattn_task, &dj);
        } else if (kfused) {
            struct kattn_job kj = {c, l, 4};
            peri_pool_run(c->pool, kattn_task, &kj);
        } else if (ksplit) {
            for (int ph = 0; ph < 4; ph++) {
                struct kattn_job kj = {c, l, ph};
                peri_pool_run(c->pool, kattn_task, &kj);
            }
        } else if (!x->full && use_blocks) {
            struct lblock_job job = {c, l, N};
            peri_pool_run(c->pool, lblock_task, &job);
        } else {
            struct attn_job job = {c, l, N};
            peri_pool_run(c->pool, attn_task, &job);
        }
        if (!x->full && !decomp) {   // o_h = W_vb,h (Σ_j p_j c_j)
            struct heads_job hj = {.c = c, .L = L, .n_rows = N, .out = 1, .combine = kfused};
            peri_pool_run(c->pool, heads_task, &hj);
        }
        if (cb) emit_attn(c, (int)l, b->n_seq, T);
        peri_matmul(c->pool, x->tmp, x->att, L->wo, NULL, N);
        for (int64_t i = 0; i < N * D; i++) x->x[i] += x->tmp[i];
        rmsnorm_rows(x->h, x->x, L->ffn_norm, N, D, D, p->eps);
        peri_matmul(c->pool, x->ff, x->h, L->up, NULL, N);
        struct relu_sq_job rj = {x->ff, N * p->n_ff};
        if (rj.n >= 65536) peri_pool_run(c->pool, relu_sq_task, &rj);   // decode's one row is not worth a wake-up
        else relu_sq_task(&rj, 0, 1);
        if (x->zeros)
            for (int64_t i = 0; i < N * p->n_ff; i++) x->zeros[l] += x->ff[i] == 0.0f;
        down_proj(c, L, N);
        for (int64_t i = 0; i < N * D; i++) x->x[i] += x->tmp[i];
        if (cb)
            for (int64_t r = 0; r < b->n_seq; r++) emit(c, "hidden", (int)l, x->row_seq[r * T], x->x + r * T * D, 2, T, D, 0);
    }

    // Logits: every row of the micro-batch, or each row's last token when it is in this micro-batch.
    const bool last = i0 + T == b->n_tokens;
    if (b->logits_all || cb) {
        rmsnorm_rows(x->h, x->x, p->out_norm, N, D, D, p->eps);
        if (cb)
            for (int64_t r = 0; r < b->n_seq; r++) emit(c, "last_hidden", -1, x->row_seq[r * T], x->h + r * T * D, 2, T, D, 0);
    }
    if (b->logits_all) {
        for (int64_t r = 0; r < b->n_seq; r++)
            peri_model_output(c, c->logits + (r * b->n_tokens + i0) * c->model->n_out, x->h + r * T * D, T, p->output, NULL);
    } else if (last) {
        for (int64_t r = 0; r < b->n_seq; r++)
            peri_rmsnorm(x->tmp + r * D, x->x + (r * T + T - 1) * D, p->out_norm, D, p->eps);
        peri_model_output(c, c->logits, x->tmp, b->n_seq, p->output, NULL);
    }
    return PERI_OK;
}

static int plm_decode(peri_context *c, const struct peri_batch *b) {
    struct plm_ctx *x = c->arch;
    for (int64_t i0 = 0; i0 < b->n_tokens; i0 += x->ubatch) {
        int64_t T = b->n_tokens - i0 < x->ubatch ? b->n_tokens - i0 : x->ubatch;
        int rc = plm_ubatch(c, b, i0, T);
        if (rc) return rc;
    }
    return PERI_OK;
}

// ---- peri init ----------------------------------------------------------------------------------------

// Random weights with the fixtures' recipe (fixtures/plm/README.md): embedding N(0,1)*2.5/sqrt(D) (logit
// std about 2.5), q/kv_a/kv_b N(0,1)*1.5/sqrt(in) (peaked attention), o/up/down N(0,1)/sqrt(in), norms 1+0.1N.
static int plm_init_random(const json_value *cfg, uint64_t seed, const char *out_dir) {
    int64_t V, D, L, H, F, R, nope, rope, vd;
    if (!json_get_int(cfg, "vocab_size", 151936, &V) || !json_get_int(cfg, "hidden_size", 2048, &D) ||
        !json_get_int(cfg, "num_hidden_layers", 32, &L) || !json_get_int(cfg, "num_attention_heads", 16, &H) ||
        !json_get_int(cfg, "intermediate_size", 8192, &F) || !json_get_int(cfg, "kv_lora_rank", 512, &R) ||
        !json_get_int(cfg, "qk_nope_head_dim", 128, &nope) || !json_get_int(cfg, "qk_rope_head_dim", 64, &rope) ||
        !json_get_int(cfg, "v_head_dim", 128, &vd))
        return PERI_E_FORMAT;
    const json_value *ql = json_get(cfg, "q_lora_rank");
    if (ql && ql->type != JSON_NULL)
        return peri_fail(PERI_E_UNSUPPORTED, "config: PLM has no query LoRA; set q_lora_rank to null");
    int64_t lim = (int64_t)1 << 20;
    if (V <= 0 || D <= 0 || L <= 0 || H <= 0 || F <= 0 || R <= 0 || nope <= 0 || rope <= 0 || rope % 2 || vd <= 0 ||
        V > lim || D > lim || L > 4096 || H > 4096 || F > lim || R > lim || nope > lim || rope > lim || vd > lim ||
        (double)L * (double)D * (double)(H * (nope + rope + vd) + R + rope + 2 * F) + (double)V * (double)D > 4e9)
        return peri_fail(PERI_E_FORMAT, "config: sizes must be positive, qk_rope_head_dim even, and the model small "
                         "enough to initialise in float32 (at most 4e9 parameters)");
    peri_init_list I;
    peri_init_list_begin(&I, seed);
    char n[256];
    int64_t se[2] = {V, D}, sd[1] = {D};
    peri_init_add(&I, "model.embed_tokens.weight", 2, se, PERI_INIT_NORMAL, 2.5f / sqrtf((float)D), 0);
    for (int64_t l = 0; l < L; l++) {
        struct { const char *name; int64_t out, in; float gain; } lin[] = {
            {"self_attn.q_proj", H * (nope + rope), D, 1.5f},
            {"self_attn.kv_a_proj_with_mqa", R + rope, D, 1.5f},
            {"self_attn.kv_b_proj", H * (nope + vd), R, 1.5f},
            {"self_attn.o_proj", D, H * vd, 1.0f},
            {"mlp.up_proj", F, D, 1.0f},
            {"mlp.down_proj", D, F, 1.0f},
        };
        for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++) {
            int64_t s[2] = {lin[i].out, lin[i].in};
            snprintf(n, sizeof n, "model.layers.%lld.%s.weight", (long long)l, lin[i].name);
            peri_init_add(&I, n, 2, s, PERI_INIT_NORMAL, lin[i].gain / sqrtf((float)lin[i].in), 0);
        }
        int64_t sr[1] = {R};
        snprintf(n, sizeof n, "model.layers.%lld.input_layernorm.weight", (long long)l);
        peri_init_add(&I, n, 1, sd, PERI_INIT_NORMAL, 0.1f, 1.0f);
        snprintf(n, sizeof n, "model.layers.%lld.self_attn.kv_a_layernorm.weight", (long long)l);
        peri_init_add(&I, n, 1, sr, PERI_INIT_NORMAL, 0.1f, 1.0f);
        snprintf(n, sizeof n, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        peri_init_add(&I, n, 1, sd, PERI_INIT_NORMAL, 0.1f, 1.0f);
    }
    peri_init_add(&I, "model.norm.weight", 1, sd, PERI_INIT_NORMAL, 0.1f, 1.0f);
    return peri_init_list_write(&I, out_dir);
}

const struct peri_arch_ops peri_arch_plm = {
    .name = "plm",
    .model_type = "plm",
    .match = plm_match,
    .load = plm_load,
    .free = NULL,
    .describe = plm_describe,
    .ctx_init = plm_ctx_init,
    .ctx_free = plm_ctx_free,
    .decode = plm_decode,
    .seq_clear = NULL,
    .get_state = NULL,
    .dag = NULL,
    .init_random = plm_init_random,
    .prepare = plm_prepare,
};
