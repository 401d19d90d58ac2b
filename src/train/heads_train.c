// Fine-tuning of the Hugging Face task heads (…ForSequenceClassification, …ForTokenClassification,
// …ForQuestionAnswering): head config and parameters, the HF losses and their gradients, JSONL examples.
#include "train/tcommon.h"

#include "peri.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int peri_tr_head_config(peri_trainer *t, const json_value *cfg) {
    t->head = PERI_TR_HEAD_LM;
    t->n_out = 0;
    const json_value *arch = json_get(cfg, "architectures");
    if (!arch || arch->type != JSON_ARRAY || arch->len < 1 || arch->items[0].type != JSON_STRING) return PERI_OK;
    const char *a = arch->items[0].str;
    if (ends_with(a, "ForSequenceClassification")) t->head = PERI_TR_HEAD_SEQ_CLS;
    else if (ends_with(a, "ForTokenClassification")) t->head = PERI_TR_HEAD_TOKEN_CLS;
    else if (ends_with(a, "ForQuestionAnswering")) t->head = PERI_TR_HEAD_QA;
    else return PERI_OK;
    if (t->head == PERI_TR_HEAD_QA) { t->n_out = 2; return PERI_OK; }
    // HF: num_labels = len(id2label) when the config has it (save_pretrained writes no num_labels)
    int64_t n = 2;
    const json_value *id2label = json_get(cfg, "id2label");
    if (id2label && id2label->type == JSON_OBJECT && id2label->len > 0) n = (int64_t)id2label->len;
    else if (!json_get_int(cfg, "num_labels", 2, &n)) return peri_fail_prefix(PERI_E_FORMAT, "config.json: ");
    if (n < 1 || n > (1 << 16)) return peri_fail(PERI_E_FORMAT, "config.json: %lld labels (1 to 65536)", (long long)n);
    t->n_out = n;
    const char *pt = NULL;
    if (!json_get_str(cfg, "problem_type", NULL, &pt)) return peri_fail_prefix(PERI_E_FORMAT, "config.json: ");
    if (!pt) t->problem = n == 1 ? PERI_TR_REGRESSION : PERI_TR_SINGLE_LABEL;
    else if (!strcmp(pt, "single_label_classification")) t->problem = PERI_TR_SINGLE_LABEL;
    else if (!strcmp(pt, "multi_label_classification")) t->problem = PERI_TR_MULTI_LABEL;
    else if (!strcmp(pt, "regression")) t->problem = PERI_TR_REGRESSION;
    else return peri_fail(PERI_E_FORMAT, "config.json: problem_type \"%s\" (single_label_classification, "
                          "multi_label_classification or regression)", pt);
    return PERI_OK;
}

int peri_tr_head_params(peri_trainer *t, int *w_idx, int *b_idx) {
    int64_t sh[2] = {t->n_out, t->D};
    const bool qa = t->head == PERI_TR_HEAD_QA;
    // the HF classes: score has no bias for sequence classification, a bias for token classification; qa_outputs
    // has one
    int rc = peri_tr_add_param(t, qa ? "qa_outputs.weight" : "score.weight", 2, sh);
    if (rc < 0) return rc;
    *w_idx = rc;
    *b_idx = -1;
    if (t->head != PERI_TR_HEAD_SEQ_CLS) {
        if ((rc = peri_tr_add_param(t, qa ? "qa_outputs.bias" : "score.bias", 1, sh)) < 0) return rc;
        *b_idx = rc;
    }
    return PERI_OK;
}

// Cross-entropy of one row of n logits at stride s (gradient into dz at the same stride, scaled by w).
static double xent_strided(float *dz, const float *z, int64_t n, int64_t s, int64_t label, float w) {
    double mx = z[0];
    for (int64_t i = 1; i < n; i++) mx = fmax(mx, z[i * s]);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp(z[i * s] - mx);
    double lse = mx + log(sum);
    if (dz) {
        for (int64_t i = 0; i < n; i++) dz[i * s] += (float)(exp(z[i * s] - lse) * w);
        dz[label * s] -= w;
    }
    return lse - z[label * s];
}

int peri_tr_head_loss(const peri_trainer *t, const float *logits, float *dlogits, const int32_t *ids,
                      const int32_t *labels, const float *targets, int B, int T, double grad_scale, double *loss,
                      int64_t *n_terms) {
    const int64_t C = t->n_out;
    double sum = 0;
    int64_t cnt = 0;
    *loss = 0;
    *n_terms = 0;
    if (t->head == PERI_TR_HEAD_SEQ_CLS) {
        // pooled at the rightmost token that is not the pad id (HF: argmax of index * non_pad_mask)
        const float **rows = malloc(sizeof(float *) * (size_t)B);
        int64_t *at = malloc(sizeof(int64_t) * (size_t)B);
        if (!rows || !at) { free(rows); free(at); return peri_fail(PERI_E_NOMEM, "out of memory"); }
        for (int b = 0; b < B; b++) {
            int64_t last = 0;
            for (int i = 0; i < T; i++) if (ids[(size_t)b * T + i] != t->pad_id) last = i;
            at[b] = ((int64_t)b * T + last) * C;
            rows[b] = logits + at[b];
        }
        if (t->problem == PERI_TR_SINGLE_LABEL) {
            for (int b = 0; b < B; b++) {
                if (labels[b] >= C) { free(rows); free(at); return peri_fail(PERI_E_ARG, "label %d of row %d: the head has %lld labels", labels[b], b, (long long)C); }
                cnt += labels[b] >= 0;
            }
            float w = cnt ? (float)(grad_scale / (double)cnt) : 0;
            for (int b = 0; b < B; b++)
                if (labels[b] >= 0) sum += xent_strided(dlogits ? dlogits + at[b] : NULL, rows[b], C, 1, labels[b], w);
        } else {
            if (!targets) { free(rows); free(at); return peri_fail(PERI_E_ARG, "multi-label and regression heads need float targets"); }
            cnt = (int64_t)B * C;
            double w = grad_scale / (double)cnt;
            for (int b = 0; b < B; b++)
                for (int64_t c = 0; c < C; c++) {
                    double z = rows[b][c], y = targets[(size_t)b * C + c], g;
                    if (t->problem == PERI_TR_MULTI_LABEL) {   // BCE with logits, in its stable form
                        sum += fmax(z, 0) - z * y + log1p(exp(-fabs(z)));
                        g = 1 / (1 + exp(-z)) - y;
                    } else {                                   // MSE
                        sum += (z - y) * (z - y);
                        g = 2 * (z - y);
                    }
                    if (dlogits) dlogits[at[b] + c] += (float)(g * w);
                }
        }
        free(rows);
        free(at);
        *n_terms = t->problem == PERI_TR_SINGLE_LABEL ? cnt : B;
        *loss = cnt ? sum / (double)cnt : 0;
        return PERI_OK;
    }
    if (t->head == PERI_TR_HEAD_TOKEN_CLS) {
        const int64_t n = (int64_t)B * T;
        for (int64_t i = 0; i < n; i++) {
            if (labels[i] >= C) return peri_fail(PERI_E_ARG, "label %d at position %lld: the head has %lld labels", labels[i], (long long)i, (long long)C);
            cnt += labels[i] >= 0;   // HF ignores -100
        }
        float w = cnt ? (float)(grad_scale / (double)cnt) : 0;
        for (int64_t i = 0; i < n; i++)
            if (labels[i] >= 0) sum += xent_strided(dlogits ? dlogits + i * C : NULL, logits + i * C, C, 1, labels[i], w);
        *n_terms = cnt;
        *loss = cnt ? sum / (double)cnt : 0;
        return PERI_OK;
    }
    // QA: labels [B][2] = start, end; HF clamps them to [0, T] and ignores T; loss = (CE(start) + CE(end)) / 2
    double part[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        int64_t c = 0;
        for (int b = 0; b < B; b++) {
            int64_t p = labels[2 * b + k];
            p = p < 0 ? 0 : p > T ? T : p;
            c += p < T;
        }
        float w = c ? (float)(0.5 * grad_scale / (double)c) : 0;
        double s = 0;
        for (int b = 0; b < B; b++) {
            int64_t p = labels[2 * b + k];
            p = p < 0 ? 0 : p > T ? T : p;
            if (p == T) continue;
            const size_t o = (size_t)b * T * 2 + (size_t)k;
            s += xent_strided(dlogits ? dlogits + o : NULL, logits + o, T, 2, p, w);
        }
        part[k] = c ? s / (double)c : 0;
        cnt += c;
    }
    *loss = (part[0] + part[1]) / 2;
    *n_terms = cnt / 2;
    return PERI_OK;
}

// ---- JSONL examples ----------------------------------------------------------------------------------------------

void peri_tr_examples_free(peri_tr_example *ex, int64_t n) {
    for (int64_t i = 0; ex && i < n; i++) {
        free(ex[i].ids);
        free(ex[i].labels);
        free(ex[i].targets);
    }
    free(ex);
}

// Appends the tokens of text[0..len) to *ids (capacity grows); returns the count added or a negative status.
static int64_t encode_append(const peri_tokenizer *tok, const char *text, size_t len, int32_t **ids, int64_t *n,
                             int64_t *cap) {
    if (!tok) return peri_fail(PERI_E_ARG, "the model has no tokenizer: give the examples as \"ids\" (or use --tokenizer)");
    int64_t need = *n + (int64_t)len + 16;
    if (need > *cap) {
        int32_t *p = realloc(*ids, sizeof(int32_t) * (size_t)need);
        if (!p) return peri_fail(PERI_E_NOMEM, "out of memory");
        *ids = p;
        *cap = need;
    }
    int64_t k = len ? peri_tokenize(tok, text, len, *ids + *n, (size_t)(*cap - *n), false) : 0;
    if (k < 0) return k;
    *n += k;
    return k;
}

static int get_ids(const json_value *a, int32_t **ids, int64_t *n, const peri_trainer *t) {
    if (a->type != JSON_ARRAY || a->len == 0) return peri_fail(PERI_E_FORMAT, "\"ids\" must be a non-empty array");
    *ids = malloc(sizeof(int32_t) * a->len);
    if (!*ids) return peri_fail(PERI_E_NOMEM, "out of memory");
    for (size_t i = 0; i < a->len; i++) {
        const json_value *x = &a->items[i];
        if (x->type != JSON_NUMBER || !x->is_integer || x->integer < 0 || x->integer >= t->V)
            return peri_fail(PERI_E_FORMAT, "\"ids\"[%zu] is not a token id below %lld", i, (long long)t->V);
        (*ids)[i] = (int32_t)x->integer;
    }
    *n = (int64_t)a->len;
    return PERI_OK;
}

static int label_int(const json_value *x, int64_t C, const char *what, int32_t *out) {
    if (!x || x->type != JSON_NUMBER || !x->is_integer || x->integer < -100 || x->integer >= C)
        return peri_fail(PERI_E_FORMAT, "%s must be an integer label 0..%lld (or -100 to ignore)", what, (long long)C - 1);
    *out = (int32_t)x->integer;
    return PERI_OK;
}

// One JSONL object into ex (see train.h for the formats).
static int parse_example(const peri_trainer *t, const peri_tokenizer *tok, const json_value *o, peri_tr_example *ex) {
    const int64_t C = t->n_out;
    int64_t n = 0, cap = 0;
    int rc = PERI_OK;
    const json_value *jids = json_get(o, "ids");
    if (t->head == PERI_TR_HEAD_SEQ_CLS) {
        const json_value *text = json_get(o, "text"), *lab = json_get(o, "label");
        if (jids) rc = get_ids(jids, &ex->ids, &n, t);
        else if (text && text->type == JSON_STRING) {
            int64_t k = encode_append(tok, text->str, text->len, &ex->ids, &n, &cap);
            if (k < 0) rc = (int)k;
        } else return peri_fail(PERI_E_FORMAT, "a sequence-classification example needs \"text\" (or \"ids\") and \"label\"");
        if (rc < 0) return rc;
        if (!lab) return peri_fail(PERI_E_FORMAT, "no \"label\"");
        if (t->problem == PERI_TR_SINGLE_LABEL) {
            if (!(ex->labels = malloc(sizeof(int32_t)))) return peri_fail(PERI_E_NOMEM, "out of memory");
            if ((rc = label_int(lab, C, "\"label\"", ex->labels)) < 0) return rc;
        } else {
            if (!(ex->targets = malloc(sizeof(float) * (size_t)C))) return peri_fail(PERI_E_NOMEM, "out of memory");
            if (lab->type == JSON_NUMBER && C == 1) ex->targets[0] = (float)lab->number;
            else if (lab->type == JSON_ARRAY && (int64_t)lab->len == C) {
                for (int64_t c = 0; c < C; c++) {
                    if (lab->items[c].type != JSON_NUMBER) return peri_fail(PERI_E_FORMAT, "\"label\"[%lld] is not a number", (long long)c);
                    ex->targets[c] = (float)lab->items[c].number;
                }
            } else return peri_fail(PERI_E_FORMAT, "\"label\" must be an array of %lld numbers (multi-hot or regression targets)", (long long)C);
        }
    } else if (t->head == PERI_TR_HEAD_TOKEN_CLS) {
        const json_value *words = json_get(o, "tokens"), *lab = json_get(o, "labels");
        if (!lab || lab->type != JSON_ARRAY) return peri_fail(PERI_E_FORMAT, "a token-classification example needs \"labels\": [...]");
        if (jids) {
            if ((rc = get_ids(jids, &ex->ids, &n, t)) < 0) return rc;
            if ((int64_t)lab->len != n) return peri_fail(PERI_E_FORMAT, "\"labels\" has %zu entries for %lld ids", lab->len, (long long)n);
            if (!(ex->labels = malloc(sizeof(int32_t) * (size_t)n))) return peri_fail(PERI_E_NOMEM, "out of memory");
            for (int64_t i = 0; i < n; i++) if ((rc = label_int(&lab->items[i], C, "\"labels\"[i]", &ex->labels[i])) < 0) return rc;
        } else {
            if (!words || words->type != JSON_ARRAY || words->len != lab->len || !words->len)
                return peri_fail(PERI_E_FORMAT, "\"tokens\" (words) and \"labels\" must be arrays of the same length");
            int64_t lcap = 0;
            for (size_t w = 0; w < words->len; w++) {
                const json_value *x = &words->items[w];
                if (x->type != JSON_STRING) return peri_fail(PERI_E_FORMAT, "\"tokens\"[%zu] is not a string", w);
                int32_t l = -100;
                if ((rc = label_int(&lab->items[w], C, "\"labels\"[i]", &l)) < 0) return rc;
                // words after the first are encoded with their leading space, as inside the joined text
                char *s = malloc(x->len + 2);
                if (!s) return peri_fail(PERI_E_NOMEM, "out of memory");
                s[0] = ' ';
                memcpy(s + 1, x->str, x->len + 1);
                int64_t n0 = n, k = encode_append(tok, w ? s : s + 1, w ? x->len + 1 : x->len, &ex->ids, &n, &cap);
                free(s);
                if (k < 0) return (int)k;
                if (n > lcap) {
                    int32_t *p = realloc(ex->labels, sizeof(int32_t) * (size_t)cap);
                    if (!p) return peri_fail(PERI_E_NOMEM, "out of memory");
                    ex->labels = p;
                    lcap = cap;
                }
                // HF convention: the label on the first sub-token of a word, -100 on the rest
                for (int64_t i = n0; i < n; i++) ex->labels[i] = i == n0 ? l : -100;
            }
        }
    } else {
        ex->labels = malloc(sizeof(int32_t) * 2);
        if (!ex->labels) return peri_fail(PERI_E_NOMEM, "out of memory");
        int64_t s, e;
        if (jids) {
            if ((rc = get_ids(jids, &ex->ids, &n, t)) < 0) return rc;
            if (!json_get_int(o, "start", -1, &s) || !json_get_int(o, "end", -1, &e) || s < 0 || e < s || e >= n)
                return peri_fail(PERI_E_FORMAT, "a QA example with \"ids\" needs token positions \"start\" <= \"end\" inside them");
        } else {
            const json_value *q = json_get(o, "question"), *c = json_get(o, "context"), *at = json_get(o, "answer_text");
            int64_t a0;
            if (!q || q->type != JSON_STRING || !c || c->type != JSON_STRING || !at || at->type != JSON_STRING ||
                !json_get_int(o, "answer_start", -1, &a0) || a0 < 0 || (size_t)a0 + at->len > c->len || !at->len)
                return peri_fail(PERI_E_FORMAT, "a QA example needs \"question\", \"context\", \"answer_text\" and "
                                 "\"answer_start\" (a byte offset of the answer inside the context)");
            if (memcmp(c->str + a0, at->str, at->len))
                return peri_fail(PERI_E_FORMAT, "\"answer_text\" is not at byte %lld of the context", (long long)a0);
            // question tokens, then the context tokenized in three pieces (before, answer, after), so the answer is
            // a whole number of tokens; peri qa tokenizes question and context separately the same way
            int64_t k;
            if ((k = encode_append(tok, q->str, q->len, &ex->ids, &n, &cap)) < 0) return (int)k;
            if ((k = encode_append(tok, c->str, (size_t)a0, &ex->ids, &n, &cap)) < 0) return (int)k;
            s = n;
            if ((k = encode_append(tok, c->str + a0, at->len, &ex->ids, &n, &cap)) < 0) return (int)k;
            if (k == 0) return peri_fail(PERI_E_FORMAT, "the answer has no tokens");
            e = n - 1;
            if ((k = encode_append(tok, c->str + a0 + at->len, c->len - (size_t)a0 - at->len, &ex->ids, &n, &cap)) < 0) return (int)k;
        }
        ex->labels[0] = (int32_t)s;
        ex->labels[1] = (int32_t)e;
    }
    if (n < 1) return peri_fail(PERI_E_FORMAT, "the example has no tokens");
    if (n > t->n_ctx) return peri_fail(PERI_E_FORMAT, "%lld tokens, more than the model's context of %lld", (long long)n, (long long)t->n_ctx);
    ex->T = (int)n;
    return PERI_OK;
}

int peri_tr_head_load_jsonl(const peri_trainer *t, const peri_tokenizer *tok, const char *path, peri_tr_example **out,
                            int64_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (t->head == PERI_TR_HEAD_LM) return peri_fail(PERI_E_ARG, "the model has no task head");
    FILE *f = fopen(path, "rb");
    if (!f) return peri_fail(PERI_E_IO, "%s: cannot open", path);
    peri_tr_example *ex = NULL;
    int64_t n = 0, cap = 0, line_no = 0;
    size_t lcap = 0;
    char *line = NULL;
    int rc = PERI_OK;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        line_no++;
        size_t l = (size_t)len;
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r' || line[l - 1] == ' ')) l--;
        if (!l) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            if (cap > (1 << 24)) { rc = peri_fail(PERI_E_FORMAT, "%s: too many examples", path); break; }
            peri_tr_example *p = realloc(ex, sizeof(*ex) * (size_t)cap);
            if (!p) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); break; }
            ex = p;
        }
        char where[600];
        snprintf(where, sizeof where, "%s:%lld: ", path, (long long)line_no);
        json_value *o = json_parse(line, l, where);
        if (!o) { rc = PERI_E_FORMAT; break; }
        memset(&ex[n], 0, sizeof(ex[n]));
        rc = o->type == JSON_OBJECT ? parse_example(t, tok, o, &ex[n]) : peri_fail(PERI_E_FORMAT, "not a JSON object");
        n++;
        json_free(o);
        if (rc < 0) { rc = peri_fail_prefix(rc, "%s", where); break; }
    }
    free(line);
    fclose(f);
    if (rc >= 0 && n == 0) rc = peri_fail(PERI_E_FORMAT, "%s: no examples", path);
    if (rc < 0) { peri_tr_examples_free(ex, n); return rc; }
    *out = ex;
    *n_out = n;
    return PERI_OK;
}
