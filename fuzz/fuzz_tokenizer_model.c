// Fuzz target: a sentencepiece tokenizer.model (protobuf) from arbitrary bytes; when it loads, encode and
// decode with it. Nothing may crash, hang or grow without bound.
#include "tokenizers/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_SPM, 1);
    if (!t) return 0;
    if (peri_spm_load_model(t, data, size, "fuzz") == PERI_OK) {
        static const char *texts[] = {"", " ", "Hello  world\t\n", "\xE2\x96\x81x\xF0\x9F\x98\x80\xFF\xC0\xAF",
                                      "[SEP]a[CLS]", "\xEF\xBC\xA1\xE2\x80\x8B  "};
        int32_t ids[256];
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            int64_t n = peri_tokenize(t, texts[i], strlen(texts[i]), ids, 256, true);
            char out[1024];
            if (n > 0) peri_detokenize(t, ids, (size_t)n, out, sizeof out, false);
        }
        int32_t any[8];
        for (int i = 0; i < 8; i++) any[i] = (int32_t)((i * 7919) % (t->n_vocab + 2)) - 1;
        char out[1024];
        peri_detokenize(t, any, 8, out, sizeof out, false);
    }
    peri_tokenizer_free(t);
    return 0;
}
