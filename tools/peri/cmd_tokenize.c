// `peri tokenize` and `peri detokenize`: text <-> token ids with a model's or a file's tokenizer.
#include "cli.h"

#include "formats/json.h"
#include "tokenizers/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tok_usage(FILE *f) {
    fprintf(f, "usage: peri tokenize -m MODEL_OR_TOKENIZER [--text TEXT | --jsonl FILE] [--pieces] [--no-special]\n"
               "  -m PATH         a model folder (tokenizer.model, tokenizer.json or vocab.json + merges.txt),\n"
               "                  a tokenizer file, or a .gguf\n"
               "  --text TEXT     the text to encode (default: all of standard input)\n"
               "  --jsonl FILE    one JSON object with a \"text\" field per line; prints one line of ids per object\n"
               "  --pieces        also print each token's piece\n"
               "  --no-special    special-token text (e.g. <|im_end|>) is encoded as plain text\n"
               "Ids are printed space-separated; no BOS/EOS is added.\n");
}

static void detok_usage(FILE *f) {
    fprintf(f, "usage: peri detokenize -m MODEL_OR_TOKENIZER --ids \"I J K\" [--skip-special]\n"
               "  prints the decoded text followed by a newline\n");
}

static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    while (p) {
        size_t got = fread(p + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *q = realloc(p, cap * 2);
        if (!q) { free(p); return NULL; }
        p = q;
        cap *= 2;
    }
    if (p) { *len = n; }
    return p;
}

static int encode_print(const char *cmd, const peri_tokenizer *tok, const char *text, size_t len, bool allow_special,
                        bool pieces) {
    int64_t need = peri_tokenize(tok, text, len, NULL, 0, allow_special);
    if (need > 0) return cli_lib_error(cmd, "cannot tokenize");   // positive only for an empty result
    size_t n = (size_t)(-need);
    peri_token *ids = malloc((n + 1) * sizeof *ids);
    if (!ids) return cli_error(cmd, "out of memory for %zu ids", n);
    int64_t got = n ? peri_tokenize(tok, text, len, ids, n, allow_special) : 0;
    if (got < 0) { free(ids); return cli_lib_error(cmd, "cannot tokenize"); }
    for (int64_t i = 0; i < got; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    if (pieces) {
        for (int64_t i = 0; i < got; i++) {
            size_t pl;
            const char *p = peri_tok_text(tok, ids[i], &pl);
            printf("%s%.*s", i ? " " : "", (int)pl, p);
        }
        printf("\n");
    }
    free(ids);
    return 0;
}

int peri_cmd_tokenize(int argc, char **argv) {
    const char *cmd = argv[0], *model = NULL, *text = NULL, *jsonl = NULL;
    bool pieces = false, allow_special = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { tok_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--text")) { if (!(text = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--jsonl")) { if (!(jsonl = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--pieces")) pieces = true;
        else if (!strcmp(a, "--no-special")) allow_special = false;
        else { tok_usage(stderr); return cli_error(cmd, "unknown option '%s'", a); }
    }
    if (!model) { tok_usage(stderr); return cli_error(cmd, "-m MODEL_OR_TOKENIZER is required"); }
    if (text && jsonl) return cli_error(cmd, "--text and --jsonl exclude each other");
    peri_tokenizer *tok = NULL;
    if (peri_tokenizer_load(model, &tok) != PERI_OK) return cli_lib_error(cmd, "cannot load the tokenizer");
    int rc = 0;
    if (jsonl) {
        FILE *f = fopen(jsonl, "rb");
        if (!f) { peri_tokenizer_free(tok); return cli_error(cmd, "cannot open '%s'", jsonl); }
        size_t len = 0;
        char *all = read_all(f, &len);
        fclose(f);
        if (!all) { peri_tokenizer_free(tok); return cli_error(cmd, "cannot read '%s'", jsonl); }
        size_t pos = 0;
        int lineno = 0;
        while (pos < len && !rc) {
            const char *s = all + pos;
            const char *e = memchr(s, '\n', len - pos);
            size_t l = e ? (size_t)(e - s) : len - pos;
            pos += l + 1;
            lineno++;
            size_t k = 0;
            while (k < l && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r')) k++;
            if (k == l) continue;   // blank line
            json_value *row = json_parse(s, l, jsonl);
            const json_value *t = row ? json_get(row, "text") : NULL;
            if (!row) rc = cli_lib_error(cmd, "bad JSON line");
            else if (!t || t->type != JSON_STRING)
                rc = cli_error(cmd, "%s:%d: the object has no \"text\" string", jsonl, lineno);
            else rc = encode_print(cmd, tok, t->str, t->len, allow_special, pieces);
            json_free(row);
        }
        free(all);
    } else if (text) {
        rc = encode_print(cmd, tok, text, strlen(text), allow_special, pieces);
    } else {
        size_t len = 0;
        char *all = read_all(stdin, &len);
        if (!all) rc = cli_error(cmd, "cannot read standard input");
        else rc = encode_print(cmd, tok, all, len, allow_special, pieces);
        free(all);
    }
    peri_tokenizer_free(tok);
    return rc;
}

int peri_cmd_detokenize(int argc, char **argv) {
    const char *cmd = argv[0], *model = NULL, *ids_s = NULL;
    bool skip = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { detok_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--ids")) { if (!(ids_s = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--skip-special")) skip = true;
        else { detok_usage(stderr); return cli_error(cmd, "unknown option '%s'", a); }
    }
    if (!model || !ids_s) { detok_usage(stderr); return cli_error(cmd, "-m and --ids are required"); }
    peri_token *ids = NULL;
    int n = cli_parse_ids(cmd, ids_s, &ids);
    if (n < 0) return 1;
    peri_tokenizer *tok = NULL;
    if (peri_tokenizer_load(model, &tok) != PERI_OK) { free(ids); return cli_lib_error(cmd, "cannot load the tokenizer"); }
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (ids[i] < 0 || ids[i] >= peri_tokenizer_n_vocab(tok))
            rc = cli_error(cmd, "id %d is out of range (vocabulary %d)", ids[i], peri_tokenizer_n_vocab(tok));
    if (!rc) {
        int64_t need = peri_detokenize(tok, ids, (size_t)n, NULL, 0, skip);
        size_t cap = need < 0 ? (size_t)-need : 0;
        char *out = malloc(cap + 1);
        int64_t got = out ? peri_detokenize(tok, ids, (size_t)n, out, cap, skip) : -1;
        if (got < 0) rc = cli_lib_error(cmd, "cannot decode");
        else { fwrite(out, 1, (size_t)got, stdout); fputc('\n', stdout); }
        free(out);
    }
    peri_tokenizer_free(tok);
    free(ids);
    return rc;
}
