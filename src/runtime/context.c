// Contexts: per-sequence lengths, the logits buffer and the thread pool; the architecture allocates its
// caches and scratch in ctx_init, once. peri_decode validates the batch, then hands it to the arch.
#include "core/error.h"
#include "runtime/model.h"

#include <stdlib.h>
#include <string.h>

struct peri_context_params peri_context_default_params(void) {
    return (struct peri_context_params){
        .n_ctx = 0, .n_seq_max = 1, .n_batch = 0, .n_threads = 0, .attn = PERI_ATTN_SDPA,
        .tensor_cb = NULL, .tensor_cb_data = NULL, .logits_all = false, .kv_full = false, .kv_type = PERI_KV_DEFAULT, .cache_first_G = false,
    };
}

int peri_context_init(peri_model *model, struct peri_context_params params, peri_context **out) {
    *out = NULL;
    if (!model) return peri_fail(PERI_E_ARG, "peri_context_init: no model");
    if (params.n_ctx <= 0) params.n_ctx = model->n_ctx_train;
    if (params.n_ctx > model->n_ctx_train)
        return peri_fail(PERI_E_ARG, "context of %d tokens asked, but the model was trained for %d (its "
                         "position table ends there); use --ctx %d or less", params.n_ctx, model->n_ctx_train,
                         model->n_ctx_train);
    if (params.n_seq_max <= 0 || params.n_seq_max > 4096)
        return peri_fail(PERI_E_ARG, "n_seq_max must be between 1 and 4096 (got %d)", params.n_seq_max);
    if (params.n_batch <= 0 || params.n_batch > params.n_ctx) params.n_batch = params.n_ctx;
    if (params.attn != PERI_ATTN_SDPA && params.attn != PERI_ATTN_EAGER)
        return peri_fail(PERI_E_ARG, "unknown attention semantics %d", params.attn);
    peri_context *c = calloc(1, sizeof *c);
    if (!c) return peri_fail(PERI_E_NOMEM, "out of memory");
    c->model = model;
    c->params = params;
    c->pool = peri_pool_new(params.n_threads);
    c->seq_len = calloc((size_t)params.n_seq_max, sizeof(int32_t));
    size_t n_logits = (size_t)params.n_seq_max * (size_t)(params.logits_all ? params.n_batch : 1) * (size_t)model->n_out;
    c->logits = malloc(sizeof(float) * n_logits);
    if (!c->pool || !c->seq_len || !c->logits) {
        peri_context_free(c);
        return peri_fail(PERI_E_NOMEM, "out of memory for a context of %d x %d tokens (%zu MiB of logits); "
                         "lower --ctx or the batch", params.n_seq_max, params.n_batch,
                         n_logits * 4 >> 20);
    }
    int rc = model->ops->ctx_init(c);
    if (rc) { peri_context_free(c); return rc; }
    *out = c;
    return PERI_OK;
}

void peri_context_free(peri_context *c) {
    if (!c) return;
    if (c->arch && c->model->ops->ctx_free) c->model->ops->ctx_free(c);
    peri_pool_free(c->pool);
    free(c->seq_len);
    free(c->logits);
    free(c);
}

int32_t peri_context_n_ctx(const peri_context *c) { return c->params.n_ctx; }

int peri_decode(peri_context *c, const struct peri_batch *b) {
    if (!c || !b) return peri_fail(PERI_E_ARG, "peri_decode: no context or batch");
    if (b->n_seq <= 0 || b->n_seq > c->params.n_seq_max)
        return peri_fail(PERI_E_ARG, "batch has %d rows; the context holds 1 to %d sequences", b->n_seq,
                         c->params.n_seq_max);
    if (b->n_tokens <= 0) return peri_fail(PERI_E_ARG, "empty batch: give at least one token");
    if (b->logits_all && !c->params.logits_all)
        return peri_fail(PERI_E_ARG, "the batch asks for every row's logits, but the context was created without "
                         "logits_all");
    if (b->n_tokens > c->params.n_batch)
        return peri_fail(PERI_E_ARG, "batch of %d tokens per row is larger than n_batch %d", b->n_tokens,
                         c->params.n_batch);
    for (int r = 0; r < b->n_seq; r++) {
        int32_t s = b->seq_ids ? b->seq_ids[r] : r;
        if (s < 0 || s >= c->params.n_seq_max)
            return peri_fail(PERI_E_ARG, "batch row %d names sequence %d; valid: 0..%d", r, s, c->params.n_seq_max - 1);
        for (int q = 0; q < r; q++)
            if ((b->seq_ids ? b->seq_ids[q] : q) == s)
                return peri_fail(PERI_E_ARG, "sequence %d appears twice in one batch", s);
        if (c->seq_len[s] + b->n_tokens > c->params.n_ctx)
            return peri_fail(PERI_E_CONTEXT_FULL, "sequence %d would hold %d tokens, more than the context of %d; "
                             "shorten the prompt or raise --ctx (the model allows %d)", s,
                             c->seq_len[s] + b->n_tokens, c->params.n_ctx, c->model->n_ctx_train);
        for (int i = 0; i < b->n_tokens; i++) {
            peri_token t = b->tokens[(size_t)r * b->n_tokens + i];
            if (t < 0 || t >= c->model->n_vocab)
                return peri_fail(PERI_E_ARG, "token id %d (row %d, position %d) is outside the vocabulary 0..%d",
                                 t, r, i, c->model->n_vocab - 1);
            if (b->pos) {
                int32_t p = b->pos[(size_t)r * b->n_tokens + i];
                if (p < 0 || p >= c->model->n_ctx_train)
                    return peri_fail(PERI_E_ARG, "position %d (row %d) is outside 0..%d", p, r, c->model->n_ctx_train - 1);
            }
        }
    }
    int rc = c->model->ops->decode(c, b);
    if (rc) return rc;
    for (int r = 0; r < b->n_seq; r++) c->seq_len[b->seq_ids ? b->seq_ids[r] : r] += b->n_tokens;
    c->n_logits_rows = (int64_t)b->n_seq * (b->logits_all ? b->n_tokens : 1);
    return PERI_OK;
}

const float *peri_get_logits(const peri_context *c) { return c->logits; }
int64_t peri_get_logits_count(const peri_context *c) { return c->n_logits_rows; }

int peri_seq_clear(peri_context *c, int32_t seq) {
    if (seq >= c->params.n_seq_max) return peri_fail(PERI_E_ARG, "no sequence %d", seq);
    for (int32_t s = 0; s < c->params.n_seq_max; s++) {
        if (seq >= 0 && s != seq) continue;
        c->seq_len[s] = 0;
        if (c->model->ops->seq_clear) c->model->ops->seq_clear(c, s);
    }
    return PERI_OK;
}

int32_t peri_seq_len(const peri_context *c, int32_t seq) {
    return seq >= 0 && seq < c->params.n_seq_max ? c->seq_len[seq] : -1;
}

int peri_seq_truncate(peri_context *c, int32_t seq, int32_t n) {
    if (seq < 0 || seq >= c->params.n_seq_max) return peri_fail(PERI_E_ARG, "no sequence %d", seq);
    if (n < 0 || n > c->seq_len[seq]) return peri_fail(PERI_E_ARG, "cannot truncate sequence %d of %d tokens to %d", seq, c->seq_len[seq], n);
    c->seq_len[seq] = n;
    return PERI_OK;
}

static int get_state(const peri_context *c, const char *name, int32_t seq, const float **data, int32_t *n_dims,
                     int64_t shape[4]) {
    if (!c->model->ops->get_state) return peri_fail(PERI_E_UNSUPPORTED, "%s has no named state", c->model->ops->name);
    if (seq < 0 || seq >= c->params.n_seq_max) return peri_fail(PERI_E_ARG, "no sequence %d", seq);
    return c->model->ops->get_state(c, name, seq, data, n_dims, shape);
}

int64_t peri_get_state(const peri_context *c, const char *name, int32_t seq, float *out, size_t n) {
    const float *data;
    int32_t nd;
    int64_t shape[4];
    int rc = get_state(c, name, seq, &data, &nd, shape);
    if (rc) return rc;
    int64_t count = 1;
    for (int i = 0; i < nd; i++) count *= shape[i];
    if (!out || n < (size_t)count)
        return peri_fail(PERI_E_ARG, "state '%s' has %lld floats; the buffer holds %zu (size it with "
                         "peri_get_state_shape)", name, (long long)count, n);
    memcpy(out, data, sizeof(float) * (size_t)count);
    return count;
}

int peri_get_state_shape(const peri_context *c, const char *name, int32_t *n_dims, int64_t shape[4]) {
    const float *data;
    return get_state(c, name, 0, &data, n_dims, shape);
}

int peri_pldr_dag(const peri_context *c, int32_t seq, double out[3]) {
    if (!c->model->ops->dag) return peri_fail(PERI_E_UNSUPPORTED, "the DAG metric is defined for PLDR-LLM models only");
    return c->model->ops->dag(c, seq, out);
}
