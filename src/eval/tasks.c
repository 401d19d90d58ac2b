// Zero-shot tasks with lm-evaluation-harness prompt formats (docs/eval.md), read from ../shared/data/eval files.
#include "eval/eval.h"

#include "core/error.h"
#include "formats/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { M_NORM = 1, M_PPL = 2 };

static const struct task_info {
    const char *name, *file;
    int metrics;
} g_tasks[] = {
    {"arc_easy", "arc_easy.jsonl", M_NORM},
    {"arc_challenge", "arc_challenge.jsonl", M_NORM},
    {"piqa", "piqa.jsonl", M_NORM},
    {"hellaswag", "hellaswag_val_full.txt.bz2", M_NORM},
    {"winogrande", "winogrande.jsonl", 0},
    {"boolq", "boolq.jsonl", 0},
    {"openbookqa", "openbook_qa.jsonl", M_NORM},
    {"siqa", "siqa_dev.jsonl", 0},
    {"lambada", "lambada_openai.jsonl", M_PPL},
};
#define N_TASKS (int)(sizeof g_tasks / sizeof g_tasks[0])

const char *peri_task_names(void) {
    return "arc_easy, arc_challenge, piqa, hellaswag, winogrande, boolq, openbookqa, siqa, lambada";
}

static const struct task_info *task_find(const char *name) {
    for (int i = 0; name && i < N_TASKS; i++)
        if (!strcmp(g_tasks[i].name, name)) return &g_tasks[i];
    return NULL;
}

const char *peri_task_file(const char *task) {
    const struct task_info *t = task_find(task);
    return t ? t->file : NULL;
}

static char *str_cat(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

static char *str_ncat(const char *a, size_t la, const char *b) {
    size_t lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

// Python str.replace(a, b) on a malloc'd string (frees s).
static char *replace_all(char *s, const char *a, const char *b) {
    if (!s) return NULL;
    size_t la = strlen(a), lb = strlen(b), n = 0;
    for (const char *p = strstr(s, a); p; p = strstr(p + la, a)) n++;
    if (!n) return s;
    char *o = malloc(strlen(s) + n * (lb > la ? lb - la : 0) + 1), *w = o;
    if (!o) { free(s); return NULL; }
    const char *p = s, *q;
    while ((q = strstr(p, a))) {
        memcpy(w, p, (size_t)(q - p));
        w += q - p;
        memcpy(w, b, lb);
        w += lb;
        p = q + la;
    }
    strcpy(w, p);
    free(s);
    return o;
}

// The harness's hellaswag preprocess: strip, " [title]" -> ". ", drop [..] markers, "  " -> " ".
static char *hs_preprocess(const char *t, size_t len) {
    while (len && (*t == ' ' || *t == '\n' || *t == '\t' || *t == '\r')) t++, len--;
    while (len && (t[len - 1] == ' ' || t[len - 1] == '\n' || t[len - 1] == '\t' || t[len - 1] == '\r')) len--;
    char *s = malloc(len + 1);
    if (!s) return NULL;
    memcpy(s, t, len);
    s[len] = 0;
    s = replace_all(s, " [title]", ". ");
    if (!s) return NULL;
    char *w = s;   // re.sub("\\[.*?\\]", "", text)
    for (char *p = s; *p;) {
        char *close = *p == '[' ? strchr(p + 1, ']') : NULL;
        if (close) p = close + 1;
        else *w++ = *p++;
    }
    *w = 0;
    return replace_all(s, "  ", " ");
}

static int doc_alloc(peri_task_doc *d, int n) {
    d->n = n;
    d->ctx = calloc((size_t)n, sizeof *d->ctx);
    d->cont = calloc((size_t)n, sizeof *d->cont);
    return d->ctx && d->cont ? PERI_OK : peri_fail(PERI_E_NOMEM, "out of memory");
}

static int push_doc(peri_task_docs *out, int *cap) {
    if (out->n_docs == *cap) {
        int c = *cap ? *cap * 2 : 256;
        peri_task_doc *p = realloc(out->docs, sizeof *p * (size_t)c);
        if (!p) return peri_fail(PERI_E_NOMEM, "out of memory");
        out->docs = p;
        *cap = c;
    }
    memset(&out->docs[out->n_docs], 0, sizeof out->docs[0]);
    out->n_docs++;
    return PERI_OK;
}

static const char *jstr(const json_value *o, const char *k) {
    const json_value *v = json_get(o, k);
    return v && v->type == JSON_STRING ? v->str : NULL;
}

static int parse_hellaswag(const char *text, size_t len, peri_task_docs *out, int *cap) {
    const char *lines[6];
    size_t lens[6];
    int li = 0, line_no = 0;
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        lines[li] = text + i;
        lens[li] = e - i;
        li++;
        line_no++;
        i = e + 1;
        if (li < 6) continue;
        li = 0;
        int rc = push_doc(out, cap);
        if (rc) return rc;
        peri_task_doc *d = &out->docs[out->n_docs - 1];
        if ((rc = doc_alloc(d, 4))) return rc;
        char g[8] = {0};
        memcpy(g, lines[1], lens[1] < 7 ? lens[1] : 7);
        if (lens[1] != 1 || g[0] < '0' || g[0] > '3')
            return peri_fail(PERI_E_FORMAT, "hellaswag line %d: the gold label must be 0..3, not \"%s\"", line_no - 4, g);
        d->gold = g[0] - '0';
        char *ctx = hs_preprocess(lines[0], lens[0]);
        if (!ctx) return peri_fail(PERI_E_NOMEM, "out of memory");
        for (int c = 0; c < 4; c++) {
            char *end = hs_preprocess(lines[2 + c], lens[2 + c]);
            d->ctx[c] = c ? strdup(ctx) : ctx;
            d->cont[c] = end ? str_cat(" ", end) : NULL;
            free(end);
            if (!d->ctx[c] || !d->cont[c]) return peri_fail(PERI_E_NOMEM, "out of memory");
        }
    }
    if (li != 0) return peri_fail(PERI_E_FORMAT, "hellaswag: %d trailing lines; the file has 6 lines per task", li);
    return PERI_OK;
}

static int parse_line(const char *task, const json_value *o, int line, const char *labels, size_t labels_len,
                      size_t *lab_pos, peri_task_doc *d) {
    int rc;
    int64_t gold = 0;
    if (!strcmp(task, "lambada")) {
        const char *c = jstr(o, "context"), *k = jstr(o, "continuation");
        if (!c || !k) return peri_fail(PERI_E_FORMAT, "line %d: lambada needs \"context\" and \"continuation\" strings", line);
        if ((rc = doc_alloc(d, 1))) return rc;
        d->ctx[0] = strdup(c);
        d->cont[0] = str_cat(" ", k);
        d->gold = 0;
        return d->ctx[0] && d->cont[0] ? PERI_OK : peri_fail(PERI_E_NOMEM, "out of memory");
    }
    if (!strcmp(task, "winogrande")) {
        const json_value *opts = json_get(o, "context_options");
        const char *k = jstr(o, "continuation");
        if (!opts || opts->type != JSON_ARRAY || opts->len != 2 || !k || !json_get_int(o, "gold", 0, &gold) || gold < 0 || gold > 1)
            return peri_fail(PERI_E_FORMAT, "line %d: winogrande needs context_options [2 strings], continuation, gold 0/1", line);
        if ((rc = doc_alloc(d, 2))) return rc;
        for (int i = 0; i < 2; i++) {
            if (opts->items[i].type != JSON_STRING) return peri_fail(PERI_E_FORMAT, "line %d: context_options[%d] is not a string", line, i);
            d->ctx[i] = strdup(opts->items[i].str);
            d->cont[i] = k[0] == ' ' ? strdup(k) : str_cat(" ", k);
            if (!d->ctx[i] || !d->cont[i]) return peri_fail(PERI_E_NOMEM, "out of memory");
        }
        d->gold = (int)gold;
        return PERI_OK;
    }
    if (!strcmp(task, "siqa")) {
        const char *c = jstr(o, "context"), *q = jstr(o, "question");
        const char *a[3] = {jstr(o, "answerA"), jstr(o, "answerB"), jstr(o, "answerC")};
        if (!c || !q || !a[0] || !a[1] || !a[2])
            return peri_fail(PERI_E_FORMAT, "line %d: siqa needs context, question, answerA..C", line);
        if (!labels) return peri_fail(PERI_E_ARG, "siqa needs its labels file (siqa_dev-labels.lst)");
        size_t p = *lab_pos;
        while (p < labels_len && (labels[p] == '\n' || labels[p] == '\r' || labels[p] == ' ')) p++;
        if (p >= labels_len || labels[p] < '1' || labels[p] > '3')
            return peri_fail(PERI_E_FORMAT, "siqa labels: line %d has no label 1..3", line);
        gold = labels[p] - '1';
        *lab_pos = p + 1;
        if ((rc = doc_alloc(d, 3))) return rc;
        size_t n = strlen(c) + strlen(q) + 16;
        char *ctx = malloc(n);
        if (!ctx) return peri_fail(PERI_E_NOMEM, "out of memory");
        snprintf(ctx, n, "Q: %s %s\nA:", c, q);
        for (int i = 0; i < 3; i++) {
            d->ctx[i] = i ? strdup(ctx) : ctx;
            d->cont[i] = str_cat(" ", a[i]);
            if (!d->ctx[i] || !d->cont[i]) return peri_fail(PERI_E_NOMEM, "out of memory");
        }
        d->gold = (int)gold;
        return PERI_OK;
    }
    // {"query", "choices", "gold"}
    const char *q = jstr(o, "query");
    const json_value *ch = json_get(o, "choices");
    if (!q || !ch || ch->type != JSON_ARRAY || ch->len < 1 || ch->len > 64 || !json_get_int(o, "gold", -1, &gold) ||
        gold < 0 || gold >= (int64_t)ch->len)
        return peri_fail(PERI_E_FORMAT, "line %d: %s needs \"query\", \"choices\" (1..64 strings) and a \"gold\" index", line, task);
    char *ctx;
    size_t ql = strlen(q);
    if (!strcmp(task, "arc_easy") || !strcmp(task, "arc_challenge")) {
        ctx = str_cat(q, "\nAnswer:");
    } else if (!strcmp(task, "piqa")) {
        while (ql && q[ql - 1] == '\n') ql--;   // "Question: <goal>\n" -> "Question: <goal>\nAnswer:"
        ctx = str_ncat(q, ql, "\nAnswer:");
    } else if (!strcmp(task, "boolq")) {
        const char *p = !strncmp(q, "Passage: ", 9) ? q + 9 : q;   // "{passage}\nQuestion: {question}?\nAnswer:"
        ctx = str_cat(p, "\nAnswer:");
    } else {
        ctx = strdup(q);   // openbookqa: the bare question stem
    }
    if (!ctx) return peri_fail(PERI_E_NOMEM, "out of memory");
    if ((rc = doc_alloc(d, (int)ch->len))) { free(ctx); return rc; }
    for (int i = 0; i < (int)ch->len; i++) {
        if (ch->items[i].type != JSON_STRING) {
            free(ctx);
            return peri_fail(PERI_E_FORMAT, "line %d: choices[%d] is not a string", line, i);
        }
        d->ctx[i] = i ? strdup(ctx) : ctx;
        d->cont[i] = str_cat(" ", ch->items[i].str);
        if (!d->ctx[i] || !d->cont[i]) return peri_fail(PERI_E_NOMEM, "out of memory");
    }
    d->gold = (int)gold;
    return PERI_OK;
}

int peri_task_parse(const char *task, const char *text, size_t len, const char *labels, size_t labels_len,
                    peri_task_docs *out) {
    if (!out || (!text && len)) return peri_fail(PERI_E_ARG, "peri_task_parse: NULL argument");
    memset(out, 0, sizeof *out);
    const struct task_info *ti = task_find(task);
    if (!ti) return peri_fail(PERI_E_ARG, "unknown task '%s'; tasks: %s", task ? task : "(null)", peri_task_names());
    snprintf(out->task, sizeof out->task, "%s", ti->name);
    int cap = 0, rc = PERI_OK;
    if (!strcmp(task, "hellaswag")) {
        rc = parse_hellaswag(text, len, out, &cap);
    } else {
        size_t i = 0, lab_pos = 0;
        int line = 0;
        while (i < len && !rc) {
            size_t e = i;
            while (e < len && text[e] != '\n') e++;
            line++;
            size_t s = i;
            i = e + 1;
            while (s < e && (text[s] == ' ' || text[s] == '\r')) s++;
            if (s == e) continue;
            json_value *o = json_parse(text + s, e - s, task);
            if (!o) { rc = peri_fail_prefix(PERI_E_FORMAT, "line %d: ", line); break; }
            if (o->type != JSON_OBJECT) rc = peri_fail(PERI_E_FORMAT, "%s line %d is not a JSON object", task, line);
            if (!rc) rc = push_doc(out, &cap);
            if (!rc) rc = parse_line(task, o, line, labels, labels_len, &lab_pos, &out->docs[out->n_docs - 1]);
            json_free(o);
        }
    }
    if (rc) peri_task_docs_free(out);
    return rc;
}

void peri_task_docs_free(peri_task_docs *d) {
    if (!d) return;
    for (int i = 0; i < d->n_docs; i++) {
        for (int c = 0; c < d->docs[i].n; c++) {
            if (d->docs[i].ctx) free(d->docs[i].ctx[c]);
            if (d->docs[i].cont) free(d->docs[i].cont[c]);
        }
        free(d->docs[i].ctx);
        free(d->docs[i].cont);
    }
    free(d->docs);
    memset(d, 0, sizeof *d);
}

// Sample standard error of the mean of 0/1 outcomes (the harness's mean_stderr: stdev(ddof=1) / sqrt(n)).
static double mean_stderr(double sum, int n) {
    if (n < 2) return 0;
    double m = sum / n, var = (sum * (1 - m) * (1 - m) + (n - sum) * m * m) / (n - 1);
    return sqrt(var / n);
}

int peri_task_run(peri_eval_ctx *e, const peri_task_docs *docs, int limit, struct peri_task_result *res,
                  peri_progress_fn progress, void *user) {
    if (!e || !docs || !res) return peri_fail(PERI_E_ARG, "peri_task_run: NULL argument");
    memset(res, 0, sizeof *res);
    const struct task_info *ti = task_find(docs->task);
    if (!ti) return peri_fail(PERI_E_ARG, "unknown task '%s'", docs->task);
    int n = limit > 0 && limit < docs->n_docs ? limit : docs->n_docs;
    double acc = 0, accn = 0, ll_sum = 0;
    int64_t tok_sum = 0;
    double ll[64];
    bool greedy[64];
    int32_t ntok[64];
    for (int i = 0; i < n; i++) {
        const peri_task_doc *d = &docs->docs[i];
        int rc = peri_eval_loglik(e, (const char *const *)d->ctx, (const char *const *)d->cont, d->n, ll, greedy, ntok);
        if (rc) return peri_fail_prefix(rc, "%s document %d: ", docs->task, i);
        if (ti->metrics & M_PPL) {
            acc += greedy[0] ? 1 : 0;
            ll_sum += ll[0];
            tok_sum += ntok[0];
        } else {
            int best = 0, best_n = 0;
            double bn = -INFINITY;
            for (int c = 0; c < d->n; c++) {
                if (ll[c] > ll[best]) best = c;   // first index on ties, as numpy argmax
                double len = (double)strlen(d->cont[c]) - 1;   // bytes of the choice without the delimiter space
                double v = ll[c] / (len > 0 ? len : 1);
                if (v > bn) bn = v, best_n = c;
            }
            acc += best == d->gold;
            accn += best_n == d->gold;
        }
        if (progress) progress(i + 1, n, user);
    }
    res->n = n;
    res->acc = n ? acc / n : 0;
    res->acc_stderr = mean_stderr(acc, n);
    if (ti->metrics & M_NORM) {
        res->has_norm = true;
        res->acc_norm = n ? accn / n : 0;
        res->acc_norm_stderr = mean_stderr(accn, n);
    }
    if (ti->metrics & M_PPL) {
        res->has_ppl = true;
        res->ppl = n ? exp(-ll_sum / n) : 0;
        res->ppl_token = tok_sum ? exp(-ll_sum / (double)tok_sum) : 0;
    }
    return PERI_OK;
}
