// Task-head commands, as the Hugging Face pipelines present the heads' outputs:
//   peri classify -m MODEL (-p TEXT | --jsonl FILE) [--json]      sequence classification
//   peri tag -m MODEL -p TEXT [--json]                            token classification
//   peri qa -m MODEL --question Q --context C [--max-answer-len 15] [--json]   extractive QA
#include "cli.h"

#include "formats/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    peri_model *m;
    peri_context *c;
    const peri_tokenizer *tok;
    int n_ctx;
} head_env;

static int env_open(const char *cmd, const char *path, int want_head, head_env *e) {
    memset(e, 0, sizeof *e);
    if (peri_model_load(path, peri_model_default_params(), &e->m) != PERI_OK) return cli_lib_error(cmd, "cannot load the model");
    static const char *names[] = {"a language model", "a sequence classifier", "a token classifier", "a question-answering model"};
    int h = peri_model_head(e->m);
    if (h != want_head)
        return cli_error(cmd, "'%s' is %s (config.json architectures), but this command needs %s", path, names[h], names[want_head]);
    e->tok = peri_model_tokenizer(e->m);
    if (!e->tok) return cli_error(cmd, "'%s' has no tokenizer (tokenizer.model / tokenizer.json)", path);
    e->n_ctx = peri_model_n_ctx_train(e->m);
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = e->n_ctx;
    cp.logits_all = true;
    if (peri_context_init(e->m, cp, &e->c) != PERI_OK) return cli_lib_error(cmd, "cannot create the context");
    return 0;
}

static void env_close(head_env *e) {
    peri_context_free(e->c);
    peri_model_free(e->m);
}

// Tokenizes text (no BOS/EOS, as the models are used); returns the count or -1.
static int encode(const char *cmd, const head_env *e, const char *text, peri_token **out) {
    size_t len = strlen(text);
    size_t cap = len + 16;
    *out = malloc(sizeof(peri_token) * cap);
    if (!*out) return cli_error(cmd, "out of memory"), -1;
    int64_t n = peri_tokenize(e->tok, text, len, *out, cap, false);
    if (n < 0) { free(*out); *out = NULL; return cli_lib_error(cmd, "cannot tokenize"), -1; }
    if (n == 0) { free(*out); *out = NULL; return cli_error(cmd, "the text has no tokens"), -1; }
    if (n > e->n_ctx) { free(*out); *out = NULL; return cli_error(cmd, "%lld tokens, more than the model's context of %d", (long long)n, e->n_ctx), -1; }
    return (int)n;
}

// Runs ids and returns the head's rows (every position).
static const float *forward(const char *cmd, head_env *e, const peri_token *ids, int n) {
    peri_seq_clear(e->c, 0);
    struct peri_batch b = {.n_seq = 1, .n_tokens = n, .tokens = ids, .logits_all = true};
    if (peri_decode(e->c, &b) != PERI_OK) { cli_lib_error(cmd, "forward failed"); return NULL; }
    return peri_get_logits(e->c);
}

static void print_json_str(const char *s) {
    size_t need = json_escape(NULL, 0, s, strlen(s));
    char *buf = malloc(need + 1);
    if (!buf) return;
    json_escape(buf, need + 1, s, strlen(s));
    fputs(buf, stdout);
    free(buf);
}

static const char *label_of(const peri_model *m, int i, char *tmp, size_t size) {
    const char *l = peri_model_label(m, i);
    if (l) return l;
    snprintf(tmp, size, "LABEL_%d", i);
    return tmp;
}

// Probabilities as the HF text-classification pipeline: softmax (single label), sigmoid (multi-label),
// identity (regression).
static void to_scores(const peri_model *m, const float *lg, int K, double *p) {
    int pt = peri_model_problem_type(m);
    if (pt == PERI_PROBLEM_MULTI_LABEL) {
        for (int i = 0; i < K; i++) p[i] = 1.0 / (1.0 + exp(-lg[i]));
    } else if (pt == PERI_PROBLEM_REGRESSION) {
        for (int i = 0; i < K; i++) p[i] = lg[i];
    } else {
        double mx = lg[0], s = 0;
        for (int i = 1; i < K; i++) mx = lg[i] > mx ? lg[i] : mx;
        for (int i = 0; i < K; i++) s += (p[i] = exp(lg[i] - mx));
        for (int i = 0; i < K; i++) p[i] /= s;
    }
}

static int classify_one(const char *cmd, head_env *e, const char *text, int as_json) {
    peri_token *ids;
    int n = encode(cmd, e, text, &ids);
    if (n < 0) return 1;
    const float *rows = forward(cmd, e, ids, n);
    if (!rows) { free(ids); return 1; }
    const int K = peri_model_n_outputs(e->m);
    const float *lg = rows + (size_t)peri_seq_cls_pool_index(e->m, ids, n) * K;
    double *p = malloc(sizeof(double) * K);
    int *ord = malloc(sizeof(int) * K);
    to_scores(e->m, lg, K, p);
    for (int i = 0; i < K; i++) ord[i] = i;
    for (int i = 0; i < K; i++) // few labels: selection sort by score
        for (int j = i + 1; j < K; j++)
            if (p[ord[j]] > p[ord[i]]) { int t = ord[i]; ord[i] = ord[j]; ord[j] = t; }
    char tmp[32];
    if (as_json) {
        printf("{\"label\":");
        print_json_str(label_of(e->m, ord[0], tmp, sizeof tmp));
        printf(",\"score\":%.6g,\"scores\":{", p[ord[0]]);
        for (int i = 0; i < K; i++) {
            printf("%s", i ? "," : "");
            print_json_str(label_of(e->m, ord[i], tmp, sizeof tmp));
            printf(":%.6g", p[ord[i]]);
        }
        printf("}}\n");
    } else {
        for (int i = 0; i < K; i++) printf("%-20s %.4f\n", label_of(e->m, ord[i], tmp, sizeof tmp), p[ord[i]]);
    }
    free(p);
    free(ord);
    free(ids);
    return 0;
}

int peri_cmd_classify(int argc, char **argv) {
    const char *cmd = "classify", *path = NULL, *text = NULL, *jsonl = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: peri classify -m MODEL (-p TEXT | --jsonl FILE) [--json]\n"
                            "  labels with probabilities; --jsonl reads objects with a \"text\" field, one per line,\n"
                            "  and prints one JSON result per line\n");
            return 0;
        } else if (!strcmp(a, "-m")) { if (!(path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p")) { if (!(text = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--jsonl")) { if (!(jsonl = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--json")) as_json = 1;
        else return cli_error(cmd, "unknown option '%s'", a);
    }
    if (!path || (!text && !jsonl)) return cli_error(cmd, "usage: peri classify -m MODEL (-p TEXT | --jsonl FILE) [--json]");
    head_env e;
    int rc = env_open(cmd, path, PERI_HEAD_SEQ_CLS, &e);
    if (!rc && text) rc = classify_one(cmd, &e, text, as_json);
    if (!rc && jsonl) {
        FILE *f = fopen(jsonl, "r");
        if (!f) rc = cli_error(cmd, "cannot open '%s'", jsonl);
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        long lineno = 0;
        while (!rc && f && (len = getline(&line, &cap, f)) >= 0) {
            lineno++;
            if (len <= 1) continue;
            char where[64];
            snprintf(where, sizeof where, "line %ld", lineno);
            json_value *v = json_parse(line, (size_t)len, where);
            const char *t = NULL;
            if (!v || !json_get_str(v, "text", NULL, &t) || !t) rc = cli_error(cmd, "%s: %s line %ld needs {\"text\": \"...\"}", jsonl, v ? "" : peri_last_error(), lineno);
            else rc = classify_one(cmd, &e, t, 1);
            json_free(v);
        }
        free(line);
        if (f) fclose(f);
    }
    env_close(&e);
    return rc;
}

int peri_cmd_tag(int argc, char **argv) {
    const char *cmd = "tag", *path = NULL, *text = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: peri tag -m MODEL -p TEXT [--json]   (a label per token)\n");
            return 0;
        } else if (!strcmp(a, "-m")) { if (!(path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p")) { if (!(text = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--json")) as_json = 1;
        else return cli_error(cmd, "unknown option '%s'", a);
    }
    if (!path || !text) return cli_error(cmd, "usage: peri tag -m MODEL -p TEXT [--json]");
    head_env e;
    int rc = env_open(cmd, path, PERI_HEAD_TOKEN_CLS, &e);
    peri_token *ids = NULL;
    int n = rc ? -1 : encode(cmd, &e, text, &ids);
    const float *rows = n > 0 ? forward(cmd, &e, ids, n) : NULL;
    if (!rc && !rows) rc = 1;
    if (!rc) {
        const int K = peri_model_n_outputs(e.m);
        double *p = malloc(sizeof(double) * K);
        char piece[256], tmp[32];
        if (as_json) printf("[");
        for (int i = 0; i < n; i++) {
            to_scores(e.m, rows + (size_t)i * K, K, p);
            int best = 0;
            for (int k = 1; k < K; k++) if (p[k] > p[best]) best = k;
            int64_t pl = peri_detokenize(e.tok, &ids[i], 1, piece, sizeof piece - 1, false);
            piece[pl > 0 ? pl : 0] = 0;
            if (as_json) {
                printf("%s{\"token\":%d,\"text\":", i ? "," : "", ids[i]);
                print_json_str(piece);
                printf(",\"label\":");
                print_json_str(label_of(e.m, best, tmp, sizeof tmp));
                printf(",\"score\":%.6g}", p[best]);
            } else {
                printf("%-8d %-24s %-12s %.4f\n", ids[i], piece, label_of(e.m, best, tmp, sizeof tmp), p[best]);
            }
        }
        if (as_json) printf("]\n");
        free(p);
    }
    free(ids);
    env_close(&e);
    return rc;
}

int peri_cmd_qa(int argc, char **argv) {
    const char *cmd = "qa", *path = NULL, *q = NULL, *ctx_text = NULL;
    long max_len = 15;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: peri qa -m MODEL --question Q --context C [--max-answer-len 15] [--json]\n"
                            "  the best answer span inside the context, scored as the HF question-answering pipeline\n");
            return 0;
        } else if (!strcmp(a, "-m")) { if (!(path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--question")) { if (!(q = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--context")) { if (!(ctx_text = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--max-answer-len")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 100000, &max_len)) return 1; }
        else if (!strcmp(a, "--json")) as_json = 1;
        else return cli_error(cmd, "unknown option '%s'", a);
    }
    if (!path || !q || !ctx_text) return cli_error(cmd, "usage: peri qa -m MODEL --question Q --context C");
    head_env e;
    int rc = env_open(cmd, path, PERI_HEAD_QA, &e);
    peri_token *qi = NULL, *ci = NULL, *all = NULL;
    int nq = rc ? -1 : encode(cmd, &e, q, &qi);
    int nc = nq > 0 ? encode(cmd, &e, ctx_text, &ci) : -1;
    if (!rc && (nq < 0 || nc < 0)) rc = 1;
    if (!rc && nq + nc > e.n_ctx) rc = cli_error(cmd, "question + context are %d tokens, more than the context of %d", nq + nc, e.n_ctx);
    const float *rows = NULL;
    if (!rc) {
        // the pair is question tokens then context tokens (the models add no special tokens)
        all = malloc(sizeof(peri_token) * (size_t)(nq + nc));
        memcpy(all, qi, sizeof(peri_token) * (size_t)nq);
        memcpy(all + nq, ci, sizeof(peri_token) * (size_t)nc);
        rows = forward(cmd, &e, all, nq + nc);
        if (!rows) rc = 1;
    }
    if (!rc) {
        // HF pipeline: mask non-context positions, softmax start and end separately, best s <= e within
        // max_answer_len by p_start * p_end
        const int n = nq + nc;
        double *ps = malloc(sizeof(double) * n), *pe = malloc(sizeof(double) * n);
        double ms = -INFINITY, me = -INFINITY, ss = 0, se = 0;
        for (int i = nq; i < n; i++) { ms = fmax(ms, rows[2 * i]); me = fmax(me, rows[2 * i + 1]); }
        for (int i = 0; i < n; i++) {
            ps[i] = i < nq ? 0 : exp(rows[2 * i] - ms);
            pe[i] = i < nq ? 0 : exp(rows[2 * i + 1] - me);
            ss += ps[i];
            se += pe[i];
        }
        int bs = nq, be = nq;
        double best = -1;
        for (int s = nq; s < n; s++)
            for (int t = s; t < n && t - s + 1 <= max_len; t++) {
                double sc = (ps[s] / ss) * (pe[t] / se);
                if (sc > best) { best = sc; bs = s; be = t; }
            }
        int64_t need = -peri_detokenize(e.tok, all + bs, (size_t)(be - bs + 1), NULL, 0, true);
        char *ans = malloc((size_t)(need > 0 ? need : 0) + 1);
        int64_t got = peri_detokenize(e.tok, all + bs, (size_t)(be - bs + 1), ans, (size_t)(need > 0 ? need : 0) + 1, true);
        ans[got > 0 ? got : 0] = 0;
        if (as_json) {
            printf("{\"answer\":");
            print_json_str(ans);
            printf(",\"score\":%.6g,\"start_token\":%d,\"end_token\":%d}\n", best, bs - nq, be - nq);
        } else {
            printf("%s\t%.4f\n", ans, best);
        }
        free(ans);
        free(ps);
        free(pe);
    }
    free(qi);
    free(ci);
    free(all);
    env_close(&e);
    return rc;
}
