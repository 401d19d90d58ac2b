// Task heads of the Hugging Face classes (…ForSequenceClassification, …ForTokenClassification,
// …ForQuestionAnswering): a linear layer on the base model's final hidden states instead of the LM head.
// Pooling and span selection are the callers' (tools/peri/cmd_heads.c), as in HF.
#include "core/error.h"
#include "kernels/ops.h"
#include "runtime/model.h"

#include <stdlib.h>
#include <string.h>

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

int peri_heads_detect(peri_model *m) {
    m->head = PERI_HEAD_LM;
    if (!m->w.config) return PERI_OK;
    const json_value *arch = json_get(m->w.config, "architectures");
    if (!arch || arch->type != JSON_ARRAY || arch->len == 0 || arch->items[0].type != JSON_STRING) return PERI_OK;
    const char *a = arch->items[0].str;
    if (ends_with(a, "ForSequenceClassification")) m->head = PERI_HEAD_SEQ_CLS;
    else if (ends_with(a, "ForTokenClassification")) m->head = PERI_HEAD_TOKEN_CLS;
    else if (ends_with(a, "ForQuestionAnswering")) m->head = PERI_HEAD_QA;
    else if (!ends_with(a, "ForCausalLM") && !ends_with(a, "Model"))
        return peri_fail(PERI_E_UNSUPPORTED, "config.json: architecture '%s' is not one peri runs (…ForCausalLM, "
                         "…ForSequenceClassification, …ForTokenClassification, …ForQuestionAnswering)", a);
    return PERI_OK;
}

int peri_heads_bind(peri_model *m) {
    if (m->head == PERI_HEAD_LM) {
        m->n_out = m->n_vocab;
        return PERI_OK;
    }
    const json_value *cfg = m->w.config;
    const char *wname = m->head == PERI_HEAD_QA ? "qa_outputs.weight" : "score.weight";
    const char *bname = m->head == PERI_HEAD_QA ? "qa_outputs.bias" : "score.bias";
    int64_t n_labels = 2;
    const json_value *id2label = json_get(cfg, "id2label");
    if (m->head == PERI_HEAD_QA) {
        n_labels = 2;
    } else if (id2label && id2label->type == JSON_OBJECT && id2label->len > 0) {
        n_labels = (int64_t)id2label->len;   // HF: num_labels = len(id2label)
    } else if (!json_get_int(cfg, "num_labels", 2, &n_labels)) {
        return PERI_E_FORMAT;
    }
    if (n_labels <= 0 || n_labels > 1000000)
        return peri_fail(PERI_E_FORMAT, "config.json: %lld labels is out of range", (long long)n_labels);
    const peri_tensor *t = peri_weights_find(&m->w, wname);
    if (!t) return peri_fail(PERI_E_FORMAT, "'%s': the task head weight '%s' is missing", m->w.path, wname);
    int64_t shape[2] = {n_labels, m->n_embd};
    int rc = peri_model_get(m, wname, 2, shape, &m->out_w);
    if (rc) return rc;
    if (peri_weights_find(&m->w, bname)) {
        int64_t sb[1] = {n_labels};
        if ((rc = peri_model_get_f32(m, bname, 1, sb, &m->out_b))) return rc;
    }
    m->n_out = (int32_t)n_labels;
    const char *pt = NULL;
    if (!json_get_str(cfg, "problem_type", NULL, &pt)) return PERI_E_FORMAT;
    m->problem_type = !pt ? (n_labels == 1 ? PERI_PROBLEM_REGRESSION : PERI_PROBLEM_SINGLE_LABEL)
                      : !strcmp(pt, "multi_label_classification") ? PERI_PROBLEM_MULTI_LABEL
                      : !strcmp(pt, "regression") ? PERI_PROBLEM_REGRESSION : PERI_PROBLEM_SINGLE_LABEL;
    if (id2label && id2label->type == JSON_OBJECT && m->head != PERI_HEAD_QA) {
        m->labels = peri_model_alloc(m, sizeof(char *) * (size_t)n_labels);
        if (!m->labels) return PERI_E_NOMEM;
        for (size_t i = 0; i < id2label->len; i++) {
            char *end;
            long id = strtol(id2label->keys[i], &end, 10);
            if (*end || id < 0 || id >= n_labels || id2label->items[i].type != JSON_STRING)
                return peri_fail(PERI_E_FORMAT, "config.json: id2label key '%s' is not a label id 0..%lld with a string",
                                 id2label->keys[i], (long long)n_labels - 1);
            char *s = peri_model_alloc(m, id2label->items[i].len + 1);
            if (!s) return PERI_E_NOMEM;
            memcpy(s, id2label->items[i].str, id2label->items[i].len);
            m->labels[id] = s;
        }
    }
    return PERI_OK;
}

void peri_model_output(peri_context *c, float *y, const float *x, int64_t n, const peri_tensor *lm_w, const float *lm_b) {
    const peri_model *m = c->model;
    if (m->head == PERI_HEAD_LM) peri_matmul(c->pool, y, x, lm_w, lm_b, n);
    else peri_matmul(c->pool, y, x, m->out_w, m->out_b, n);
}

int32_t peri_model_head(const peri_model *m) { return m->head; }
int32_t peri_model_n_outputs(const peri_model *m) { return m->n_out; }
const char *peri_model_label(const peri_model *m, int32_t i) {
    return m->labels && i >= 0 && i < m->n_out ? m->labels[i] : NULL;
}
int32_t peri_model_problem_type(const peri_model *m) { return m->problem_type; }

int32_t peri_seq_cls_pool_index(const peri_model *m, const peri_token *ids, int32_t n) {
    if (m->pad < 0) return n - 1;
    // argmax of index * (id != pad): the rightmost non-pad token; argmax of all zeros is 0 in torch
    int32_t best = 0;
    for (int32_t i = 0; i < n; i++)
        if (ids[i] != m->pad) best = i;
    return best;
}

int peri_seq_cls_pool(const peri_model *m, const peri_token *ids, int32_t n_seq, int32_t n_tokens, int32_t *out) {
    if (!m || !ids || !out || n_seq <= 0 || n_tokens <= 0) return peri_fail(PERI_E_ARG, "peri_seq_cls_pool: empty batch");
    if (m->pad < 0 && n_seq > 1)
        return peri_fail(PERI_E_ARG, "cannot pool a batch of %d sequences: the model has no pad_token_id, so padding "
                         "cannot be told from text (as Hugging Face); classify one sequence at a time or set "
                         "pad_token_id in config.json", n_seq);
    for (int32_t r = 0; r < n_seq; r++) out[r] = peri_seq_cls_pool_index(m, ids + (size_t)r * n_tokens, n_tokens);
    return PERI_OK;
}
