// Shared helpers of the tokenizer tests: run a JSON Lines file of {"text","ids"} or {"ids","text"} vectors
// from ../shared/tokenizers/tests through a tokenizer, counting and printing mismatches.
#ifndef PERI_TEST_TOKENIZER_VECTORS_H
#define PERI_TEST_TOKENIZER_VECTORS_H

#include "formats/json.h"
#include "peri.h"
#include "test.h"

#include <stdint.h>

static int tv_printed;

static void tv_print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static int tv_ids(const json_value *arr, int32_t **ids, size_t *n) {
    if (!arr || arr->type != JSON_ARRAY) return -1;
    *ids = malloc((arr->len + 1) * sizeof **ids);
    for (size_t i = 0; i < arr->len; i++) (*ids)[i] = (int32_t)arr->items[i].integer;
    *n = arr->len;
    return 0;
}

// Encodes every row's text and compares with ids_key (encode) and/or decodes ids and compares with
// text_key (decode). Returns the number of rows checked.
static int tv_run(const peri_tokenizer *tok, const char *path, const char *ids_key, bool encode, bool decode,
                  const char *decoded_key) {
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) { CHECKF(0, "cannot open %s", path); return 0; }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)sz + 1);
    size_t got = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    buf[got] = 0;
    int rows = 0;
    char *line = buf;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        if (ll == 0) { line = nl ? nl + 1 : NULL; continue; }
        json_value *row = json_parse(line, ll, path);
        CHECKF(row != NULL, "%s row %d: %s", path, rows + 1, peri_last_error());
        if (!row) break;
        const json_value *text = json_get(row, "text");
        int32_t *want = NULL;
        size_t n_want = 0;
        tv_ids(json_get(row, ids_key), &want, &n_want);
        if (encode && text && want) {
            int32_t out[8192];
            int64_t n = peri_tokenize(tok, text->str, text->len, out, 8192, true);
            bool ok = n == (int64_t)n_want && memcmp(out, want, n_want * sizeof *want) == 0;
            CHECKF(ok, "%s row %d: encode mismatch for \"%.80s\" (n=%lld want %zu)", path, rows + 1, text->str,
                   (long long)n, n_want);
            if (!ok && tv_printed++ < 10) { tv_print_ids("got ", out, n > 0 ? (size_t)n : 0); tv_print_ids("want", want, n_want); }
        }
        const json_value *dtext = json_get(row, decoded_key);
        if (decode && dtext && want) {
            char out[65536];
            int64_t n = peri_detokenize(tok, want, n_want, out, sizeof out, false);
            bool ok = n == (int64_t)dtext->len && memcmp(out, dtext->str, dtext->len) == 0;
            CHECKF(ok, "%s row %d: decode mismatch: got \"%.*s\" want \"%.80s\"", path, rows + 1,
                   (int)(n > 0 ? (n > 80 ? 80 : n) : 0), out, dtext->str);
        }
        free(want);
        json_free(row);
        rows++;
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    return rows;
}

#endif
