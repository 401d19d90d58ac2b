// Qwen2 byte-level BPE (PLM tokenizer): every vector of shared/tokenizers/tests/qwen2*.jsonl (ids from the HF
// tokenizers oracle), loaded from tokenizer.json, from vocab.json + merges.txt, and from GGUF metadata; the
// truncated plm-tiny vocabulary; and the streaming decoder against whole-sequence decoding.
#include "tokenizer_vectors.h"

#include "tokenizers/tokenizer.h"

static void check_all(const peri_tokenizer *tok, const char *shared, const char *what) {
    char path[4096];
    fprintf(stderr, "-- %s\n", what);
    snprintf(path, sizeof path, "%s/tokenizers/tests/qwen2.jsonl", shared);
    CHECK(tv_run(tok, path, "ids", true, false, "") == 326);
    snprintf(path, sizeof path, "%s/tokenizers/tests/qwen2_plm_only.jsonl", shared);
    CHECK(tv_run(tok, path, "ids", true, false, "") == 2);
    snprintf(path, sizeof path, "%s/tokenizers/tests/qwen2_decode.jsonl", shared);
    CHECK(tv_run(tok, path, "ids", false, true, "text") == 50);
}

// Streaming one id at a time gives the same bytes as decoding at once, and no push ends inside a character.
static void check_stream(const peri_tokenizer *tok, const int32_t *ids, size_t n) {
    peri_buf all = {0}, one = {0};
    peri_detok_stream st;
    memset(&st, 0, sizeof st);
    bool whole = true;
    for (size_t i = 0; i < n; i++) {
        size_t before = one.n;
        peri_detok_push(tok, &st, ids[i], false, &one);
        // every chunk pushed is valid UTF-8 on its own
        for (size_t k = before; k < one.n;) {
            unsigned char c = (unsigned char)one.p[k];
            size_t l = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            if (k + l > one.n) { whole = false; break; }
            k += l;
        }
    }
    peri_detok_flush(tok, &st, &one);
    int64_t len = peri_detokenize(tok, ids, n, NULL, 0, false);
    all.p = malloc(len < 0 ? (size_t)-len + 1 : 1);
    int64_t got = peri_detokenize(tok, ids, n, all.p, len < 0 ? (size_t)-len : 0, false);
    CHECK(whole);
    CHECK(got == (int64_t)one.n && memcmp(all.p, one.p, one.n) == 0);
    free(all.p);
    free(one.p);
}

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) return TEST_SKIP;
    char path[4096];
    peri_tokenizer *tj = NULL, *tv = NULL, *tg = NULL;

    snprintf(path, sizeof path, "%s/tokenizers/qwen2/tokenizer.json", shared);
    CHECKF(peri_tokenizer_load(path, &tj) == PERI_OK, "%s", peri_last_error());
    if (tj) {
        CHECK(peri_tokenizer_n_vocab(tj) == 151646);
        check_all(tj, shared, "tokenizer.json");
        // allow_special=false: special-token text is plain text.
        int32_t out[64];
        int64_t n = peri_tokenize(tj, "<|im_end|>", 10, out, 64, false);
        CHECK(n > 1);
        n = peri_tokenize(tj, " <|im_end|> ", 12, out, 64, true);
        CHECK(n == 3 && out[0] == 220 && out[1] == 151645 && out[2] == 220);
        // Invalid UTF-8 input: each maximal invalid subpart is U+FFFD (as "\ufffd" encodes).
        int32_t ref[16], bad[16];
        int64_t nr = peri_tokenize(tj, "a\xEF\xBF\xBD\xEF\xBF\xBDz", 8, ref, 16, true);
        int64_t nb = peri_tokenize(tj, "a\xE4\xBD\xFFz", 5, bad, 16, true);
        CHECK(nr > 0 && nr == nb && memcmp(ref, bad, (size_t)nr * sizeof *ref) == 0);
        int32_t s1[] = {9707, 11, 1879, 0, 220, 16, 17, 18, 19, 20, 151645};
        check_stream(tj, s1, 11);
        int32_t s2[] = {108386, 3837, 99489, 6313};
        check_stream(tj, s2, 4);
    }
    snprintf(path, sizeof path, "%s/tokenizers/qwen2", shared);
    peri_tokenizer *td = NULL;
    CHECKF(peri_tokenizer_load(path, &td) == PERI_OK, "%s", peri_last_error());   // folder: tokenizer.json
    peri_tokenizer_free(td);

    snprintf(path, sizeof path, "%s/tokenizers/qwen2/vocab.json", shared);
    CHECKF(peri_tokenizer_load(path, &tv) == PERI_OK, "%s", peri_last_error());
    if (tv) check_all(tv, shared, "vocab.json + merges.txt");

    snprintf(path, sizeof path, "%s/fixtures/plm/plm-qwen-vocab/model-f16.gguf", shared);
    CHECKF(peri_tokenizer_load(path, &tg) == PERI_OK, "%s", peri_last_error());
    if (tg) {
        CHECK(peri_tokenizer_n_vocab(tg) == 151936);
        check_all(tg, shared, "GGUF");
        int32_t pad = 151700;
        char buf[8];
        CHECK(peri_detokenize(tg, &pad, 1, buf, sizeof buf, false) == 0);   // padding rows decode to nothing
    }

    // plm-tiny: a truncated vocabulary (512), from every source; all must agree with each other.
    const char *srcs[] = {"tokenizer.json", "vocab.json", "model-f32.gguf"};
    peri_tokenizer *tiny[3] = {0};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/fixtures/plm/plm-tiny/%s", shared, srcs[i]);
        CHECKF(peri_tokenizer_load(path, &tiny[i]) == PERI_OK, "%s: %s", path, peri_last_error());
    }
    if (tiny[0] && tiny[1] && tiny[2]) {
        snprintf(path, sizeof path, "%s/tokenizers/tests/qwen2.jsonl", shared);
        FILE *f = fopen(path, "rb");
        char line[1 << 16];
        int rows = 0, same = 0;
        while (f && fgets(line, sizeof line, f)) {
            json_value *row = json_parse(line, strlen(line), path);
            if (!row) break;
            const json_value *text = json_get(row, "text");
            static int32_t o[3][8192];
            int64_t n[3];
            for (int i = 0; i < 3; i++) n[i] = peri_tokenize(tiny[i], text->str, text->len, o[i], 8192, true);
            if (n[0] >= 0 && n[0] == n[1] && n[0] == n[2] && !memcmp(o[0], o[1], (size_t)n[0] * 4) &&
                !memcmp(o[0], o[2], (size_t)n[0] * 4))
                same++;
            // Decoding the tiny ids gives the text back (NFC'd where the row says so).
            const json_value *nfc = json_get(row, "nfc_changes");
            if (!nfc && n[0] > 0) {
                char d[1 << 16];
                int64_t dn = peri_detokenize(tiny[0], o[0], (size_t)n[0], d, sizeof d, false);
                CHECKF(dn == (int64_t)text->len && memcmp(d, text->str, text->len) == 0, "tiny round trip row %d",
                       rows + 1);
            }
            json_free(row);
            rows++;
        }
        if (f) fclose(f);
        CHECKF(same == rows && rows == 326, "tiny: %d of %d rows agree across sources", same, rows);
    }
    for (int i = 0; i < 3; i++) peri_tokenizer_free(tiny[i]);
    peri_tokenizer_free(tj);
    peri_tokenizer_free(tv);
    peri_tokenizer_free(tg);
    return TEST_END();
}
