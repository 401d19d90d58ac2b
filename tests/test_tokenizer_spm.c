// SentencePiece unigram (PLDR-LLM tokenizer.model): every encode and decode vector of
// shared/tokenizers/tests/pldr*.jsonl and the pldr-small-vocab32k fixture cases, produced by spm 0.1.97.
#include "tokenizer_vectors.h"

#include "tokenizers/tokenizer.h"

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) return TEST_SKIP;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/pldr/tokenizer.model", shared);
    peri_tokenizer *tok = NULL;
    int rc = peri_tokenizer_load(path, &tok);
    CHECKF(rc == PERI_OK, "load %s: %s", path, peri_last_error());
    if (rc) return TEST_END();
    CHECK(peri_tokenizer_n_vocab(tok) == 32000);
    CHECK(tok->unk_id == 1 && tok->byte_fallback && tok->add_dummy_prefix && tok->remove_extra_ws);
    CHECK(tok->pieces[4].type == PERI_TOK_USER_DEFINED && tok->pieces[2].type == PERI_TOK_CONTROL);
    CHECK(tok->byte_id[0x41] == 6 + 0x41);

    // The normalized form of every row, then ids, then decoding.
    snprintf(path, sizeof path, "%s/tokenizers/tests/pldr.jsonl", shared);
    CHECK(tv_run(tok, path, "ids", true, true, "decoded") == 315);
    snprintf(path, sizeof path, "%s/tokenizers/tests/pldr_decode.jsonl", shared);
    CHECK(tv_run(tok, path, "ids", false, true, "text") == 50);

    // The "normalized" field: our normalizer's output joined with spaces as U+2581.
    {
        snprintf(path, sizeof path, "%s/tokenizers/tests/pldr.jsonl", shared);
        FILE *f = fopen(path, "rb");
        char line[1 << 16];
        int bad = 0, n = 0;
        while (f && fgets(line, sizeof line, f)) {
            json_value *row = json_parse(line, strlen(line), path);
            if (!row) break;
            const json_value *text = json_get(row, "text"), *norm = json_get(row, "normalized");
            peri_buf b = {0};
            peri_spm_normalize(tok, text->str, text->len, &b);
            if (!(b.n == norm->len && (b.n == 0 || memcmp(b.p, norm->str, b.n) == 0))) {
                if (bad++ < 5) fprintf(stderr, "normalize mismatch: \"%.60s\" -> \"%.*s\"\n", text->str, (int)b.n, b.p);
            }
            free(b.p);
            json_free(row);
            n++;
        }
        if (f) fclose(f);
        CHECKF(bad == 0 && n == 315, "%d of %d normalizations differ", bad, n);
    }

    // Fixture cases (pldr-small-vocab32k/tokenizer_cases.json) and the model folder loader.
    snprintf(path, sizeof path, "%s/fixtures/pldr/pldr-small-vocab32k", shared);
    peri_tokenizer *t2 = NULL;
    CHECK(peri_tokenizer_load_dir(path, &t2) == PERI_OK && t2);
    snprintf(path, sizeof path, "%s/fixtures/pldr/pldr-small-vocab32k/tokenizer_cases.json", shared);
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (f && t2) {
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        text = malloc((size_t)sz + 1);
        size_t got = fread(text, 1, (size_t)sz, f);
        json_value *doc = json_parse(text, got, path);
        const json_value *cases = json_get(doc, "cases");
        CHECK(cases && cases->len > 0);
        for (size_t i = 0; cases && i < cases->len; i++) {
            const json_value *c = &cases->items[i], *tx = json_get(c, "text"), *ids = json_get(c, "ids"),
                             *dec = json_get(c, "decoded");
            int32_t out[4096];
            int64_t n = peri_tokenize(t2, tx->str, tx->len, out, 4096, false);
            bool ok = n == (int64_t)ids->len;
            for (size_t k = 0; ok && k < ids->len; k++) ok = out[k] == ids->items[k].integer;
            CHECKF(ok, "fixture case %zu \"%.60s\"", i, tx->str);
            char d[8192];
            int64_t dn = peri_detokenize(t2, out, n > 0 ? (size_t)n : 0, d, sizeof d, false);
            CHECKF(dn == (int64_t)dec->len && memcmp(d, dec->str, dec->len) == 0, "fixture decode %zu", i);
        }
        json_free(doc);
    }
    if (f) fclose(f);
    free(text);

    // API contract: minus the size needed when the buffer is short; no BOS/EOS added.
    int32_t small[2];
    CHECK(peri_tokenize(tok, "Tell me about the french revolution.", 36, small, 2, false) == -7);
    char d[4];
    int32_t ids[2] = {4780, 485};
    CHECK(peri_detokenize(tok, ids, 2, d, sizeof d, false) == -11);
    CHECK(peri_tokenize(tok, "", 0, small, 2, false) == 0);

    peri_tokenizer_free(t2);
    peri_tokenizer_free(tok);
    return TEST_END();
}
