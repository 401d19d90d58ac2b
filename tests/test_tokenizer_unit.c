// Tokenizer building blocks without shared data: NFC and UTF-8 replacement against Python's unicodedata /
// bytes.decode('utf-8', 'replace') (values printed by Python 3.13), and, when ../shared is present, loading
// truncated and corrupted copies of the real tokenizer.model (must fail cleanly or work, never crash).
#include "test.h"

#include "tokenizers/tokenizer.h"
#include "tokenizers/unicode.h"

static const char *nfc_cases[][2] = {
    {"\x65\xcc\x81\x20\xc3\xa9", "\xc3\xa9\x20\xc3\xa9"},
    {"\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81"},
    {"\xe2\x84\xab\xe2\x84\xa6", "\xc3\x85\xce\xa9"},
    {"\x41\xcc\xa3\xcc\x87", "\xe1\xba\xa0\xcc\x87"},
    {"\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc"},
    {"\xef\xac\x81\xe2\x91\xa0\xef\xbc\xa1", "\xef\xac\x81\xe2\x91\xa0\xef\xbc\xa1"},
    {"\x61\xcc\x81\xcc\xa3\x62\xcc\xa7\xcc\x81", "\xe1\xba\xa1\xcc\x81\x62\xcc\xa7\xcc\x81"},
    {"\xcd\x84", "\xcc\x88\xcc\x81"},
    {"\xe1\xb8\x8a\xcc\xa3", "\xe1\xb8\x8c\xcc\x87"},
    {"\xea\xb0\x80\xe1\x86\xa8", "\xea\xb0\x81"},
    {"\x71\xcc\x87\xcc\xa3", "\x71\xcc\xa3\xcc\x87"},
};

// (bytes, number of U+FFFD, characters) from Python's decode('utf-8', 'replace').
static const struct { const char *s; int n_fffd, n_chars; } lossy[] = {
    {"\xe4\xbd\xff", 2, 2}, {"\xf0\x9f\x98", 1, 1}, {"\xed\xa0\x80", 3, 3}, {"\xc0\xaf", 2, 2},
    {"\xf4\x90\x80\x80", 4, 4}, {"\xe0\x80\x80\x61", 3, 4}, {"\xf0\x9f\x98\x80", 0, 1},
};

int main(void) {
    for (size_t i = 0; i < sizeof nfc_cases / sizeof nfc_cases[0]; i++) {
        char *out = NULL;
        size_t len = 0, cap = 0;
        CHECK(peri_nfc(nfc_cases[i][0], strlen(nfc_cases[i][0]), &out, &len, &cap) == 0);
        CHECKF(len == strlen(nfc_cases[i][1]) && memcmp(out, nfc_cases[i][1], len) == 0, "NFC case %zu", i);
        free(out);
    }
    CHECK(peri_nfc_quick("plain ascii \xc3\xa9", 14));
    CHECK(!peri_nfc_quick("e\xcc\x81", 3));

    for (size_t i = 0; i < sizeof lossy / sizeof lossy[0]; i++) {
        const unsigned char *s = (const unsigned char *)lossy[i].s;
        size_t n = strlen(lossy[i].s), k = 0;
        int fffd = 0, chars = 0;
        while (k < n) {
            uint32_t cp;
            size_t l = peri_utf8_decode(s + k, n - k, &cp);
            if (!l) { l = peri_utf8_invalid_len(s + k, n - k); fffd++; }
            chars++;
            k += l;
        }
        CHECKF(fffd == lossy[i].n_fffd && chars == lossy[i].n_chars, "lossy case %zu: %d/%d", i, fffd, chars);
    }
    CHECK(peri_uni_flags('a') & PERI_UNI_L);
    CHECK(peri_uni_flags(0x30EDE) & PERI_UNI_L);          // CJK Ext. G letter (Unicode 13)
    CHECK(peri_uni_flags(0x2460) & PERI_UNI_N);           // circled digit one: No
    CHECK(peri_uni_flags(0x3000) & PERI_UNI_WS);
    CHECK(!(peri_uni_flags(0x200B) & PERI_UNI_WS));       // ZWSP is not White_Space
    CHECK(!(peri_uni_flags(0x0301) & (PERI_UNI_L | PERI_UNI_N)));   // combining marks are neither

    const char *shared = test_shared_dir();
    if (shared) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizers/pldr/tokenizer.model", shared);
        FILE *f = fopen(path, "rb");
        unsigned char *buf = NULL;
        size_t size = 0;
        if (f) {
            fseek(f, 0, SEEK_END);
            size = (size_t)ftell(f);
            fseek(f, 0, SEEK_SET);
            buf = malloc(size);
            size = fread(buf, 1, size, f);
            fclose(f);
        }
        CHECK(buf && size > 100000);
        int loaded = 0, failed = 0;
        for (int k = 0; buf && k < 24; k++) {
            size_t cut = (size_t)k * (size / 24) + 13;
            unsigned char *copy = malloc(size);
            memcpy(copy, buf, size);
            size_t n = size;
            if (k % 2) n = cut;                                // truncated
            else for (int j = 0; j < 64; j++) copy[(cut + (size_t)j * 4099) % size] ^= (unsigned char)(0x5A + j);
            peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_SPM, 1);
            int rc = peri_spm_load_model(t, copy, n, "corrupt");
            if (rc == PERI_OK) {
                loaded++;
                int32_t ids[512];
                const char *text = "Tell me about the french revolution. \xEF\xBC\xA1\xE2\x80\xA6 \xFF\xF0\x9F\x98\x80";
                int64_t m = peri_tokenize(t, text, strlen(text), ids, 512, true);
                char out[4096];
                if (m > 0) peri_detokenize(t, ids, (size_t)m, out, sizeof out, false);
            } else {
                failed++;
                CHECK(peri_last_error()[0] != 0);
            }
            peri_tokenizer_free(t);
            free(copy);
        }
        CHECK(loaded + failed == 24);
        free(buf);
    }
    return TEST_END();
}
