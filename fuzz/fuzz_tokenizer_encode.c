// Fuzz target: arbitrary bytes (invalid UTF-8 included) encoded by a small SentencePiece unigram and a small
// Qwen2-style byte-level BPE built in memory, then decoded back; the bytes are also read as ids to decode.
#include "tokenizers/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static peri_tokenizer *g_spm, *g_bpe;

static peri_tokenizer *make_spm(void) {
    static const char *normal[] = {"\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81" "a", "\xE2\x96\x81the", "1",
                                   "\xC3\xA9", "\xE2\x96\x81\xE2\x96\x81"};
    int n_norm = (int)(sizeof normal / sizeof normal[0]);
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_SPM, 4 + 256 + n_norm + 1);
    if (!t) return NULL;
    int id = 0;
    peri_tok_set_piece(t, id++, "<unk>", 5, 0, PERI_TOK_UNKNOWN);
    peri_tok_set_piece(t, id++, "<s>", 3, 0, PERI_TOK_CONTROL);
    peri_tok_set_piece(t, id++, "</s>", 4, 0, PERI_TOK_CONTROL);
    peri_tok_set_piece(t, id++, "[SEP]", 5, 0, PERI_TOK_USER_DEFINED);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        peri_tok_set_piece(t, id++, s, 6, 0, PERI_TOK_BYTE);
    }
    for (int i = 0; i < n_norm; i++) peri_tok_set_piece(t, id++, normal[i], strlen(normal[i]), -1.0f - (float)i, PERI_TOK_NORMAL);
    peri_tok_set_piece(t, id++, "zz", 2, -1, PERI_TOK_UNUSED);
    t->byte_fallback = true;
    t->spm_model_type = 1;
    if (peri_spm_finish(t) != PERI_OK) { peri_tokenizer_free(t); return NULL; }
    return t;
}

static peri_tokenizer *make_bpe(void) {
    // vocab: the 256 byte symbols, then merges "Ġ t", "h e", "Ġt he"; added <|im_end|>.
    peri_buf j = {0};
    peri_buf_put(&j, "{\"model\":{\"type\":\"BPE\",\"vocab\":{", 32);
    static const char hex[] = "0123456789abcdef";
    int n = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE) ? (uint32_t)b : 256 + (uint32_t)n++;
        char s[32];
        int l = snprintf(s, sizeof s, "%s\"\\u%c%c%c%c\":%d", b ? "," : "", hex[cp >> 12], hex[(cp >> 8) & 15],
                         hex[(cp >> 4) & 15], hex[cp & 15], b);
        peri_buf_put(&j, s, (size_t)l);
    }
    const char *tail =
        ",\"\\u0120t\":256,\"he\":257,\"\\u0120the\":258},\"merges\":[\"\\u0120 t\",\"h e\",\"\\u0120t he\"]},"
        "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
        "\"Split\",\"pattern\":{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"
        "\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
        "\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
        "\"added_tokens\":[{\"id\":259,\"content\":\"<|im_end|>\",\"special\":true}]}";
    peri_buf_put(&j, tail, strlen(tail));
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_BPE, 1);
    if (t && peri_bpe_load_json(t, j.p, j.n, "fuzz_tokenizer_encode") != PERI_OK) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s\n", peri_last_error());
        peri_tokenizer_free(t);
        t = NULL;
    }
    free(j.p);
    return t;
}

static void run(const peri_tokenizer *t, const uint8_t *data, size_t size) {
    if (!t) { abort(); }
    int64_t need = peri_tokenize(t, (const char *)data, size, NULL, 0, true);
    size_t n = need < 0 ? (size_t)-need : 0;
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    if (!ids) return;
    int64_t got = peri_tokenize(t, (const char *)data, size, ids, n, true);
    if (got != (int64_t)n) abort();
    int64_t dl = peri_detokenize(t, ids, n, NULL, 0, false);
    char *out = malloc(dl < 0 ? (size_t)-dl : 1);
    if (out) peri_detokenize(t, ids, n, out, dl < 0 ? (size_t)-dl : 0, false);
    free(out);
    free(ids);
    // The bytes read as ids (any value, out of range included).
    size_t m = size / 4;
    int32_t *raw = malloc((m + 1) * sizeof *raw);
    if (!raw) return;
    memcpy(raw, data, m * 4);
    for (size_t i = 0; i < m; i++) raw[i] = raw[i] % (t->n_vocab + 8);
    char buf[4096];
    peri_detokenize(t, raw, m, buf, sizeof buf, (size & 1) != 0);
    free(raw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_spm) g_spm = make_spm();
    if (!g_bpe) g_bpe = make_bpe();
    run(g_spm, data, size);
    run(g_bpe, data, size);
    return 0;
}
