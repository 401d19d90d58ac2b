// Fuzz target: a Hugging Face tokenizer.json from arbitrary bytes; when it loads, encode and decode with it.
#include "tokenizers/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 20)) return 0;
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_BPE, 1);
    if (!t) return 0;
    if (peri_bpe_load_json(t, (const char *)data, size, "fuzz") == PERI_OK) {
        static const char *texts[] = {"", "Hello, world! 12345", "  x\r\n\n 's 'LL \xC3\xA9 e\xCC\x81",
                                      "<|im_start|>u<|im_end|>", "\xFF\xE4\xBD"};
        int32_t ids[256];
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            int64_t n = peri_tokenize(t, texts[i], strlen(texts[i]), ids, 256, i & 1);
            char out[1024];
            if (n > 0) peri_detokenize(t, ids, (size_t)n, out, sizeof out, i & 1);
        }
    }
    peri_tokenizer_free(t);
    return 0;
}
