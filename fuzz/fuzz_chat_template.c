// Fuzz target for the chat template renderer (parser and interpreter). Input: the template, then optionally
// a NUL byte and message contents separated by NUL bytes (roles cycle system, user, assistant).
#include "tokenizers/chat_template.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    static const char *roles[] = {"system", "user", "assistant"};
    peri_chat_msg msgs[8];
    int n = 0;
    size_t tlen = strlen(buf);
    for (size_t i = tlen + 1; i <= size && n < 8; i += strlen(buf + i) + 1) {
        msgs[n].role = roles[n % 3];
        msgs[n].content = buf + i;
        n++;
    }
    if (n == 0) {
        msgs[0] = (peri_chat_msg){"user", "Hello {{ world }} \xc3\xa9\xf0\x9f\x98\x80"};
        msgs[1] = (peri_chat_msg){"assistant", NULL};
        n = 2;
    }
    char *out = NULL;
    if (peri_chat_render(buf, msgs, n, size % 2 == 0, "<s>", size % 3 ? "</s>" : NULL, &out) == 0) {
        // every byte of the result must be readable and the string terminated
        volatile size_t len = strlen(out);
        (void)len;
    }
    free(out);
    free(buf);
    return 0;
}
