// Fuzz target: the HTTP/1.1 request head parser of `peri serve` on arbitrary bytes, at every prefix length
// that matters (whole input and a few cut points), checking that spans stay inside the input.
#include "server/http.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static void check(const char *buf, size_t len) {
    http_request r;
    int64_t n = http_parse_request(buf, len, 4096, 1 << 20, &r);
    if (n > 0) {
        if ((size_t)n > len) abort();
        http_span spans[] = {r.method, r.target, r.path, r.query, r.authorization};
        for (size_t i = 0; i < sizeof spans / sizeof spans[0]; i++)
            if (spans[i].n && (spans[i].p < buf || spans[i].p + spans[i].n > buf + n)) abort();
        for (int i = 0; i < r.n_headers; i++)
            if (r.header_values[i].n && (r.header_values[i].p < buf || r.header_values[i].p + r.header_values[i].n > buf + n)) abort();
        http_header(&r, "content-type", NULL);
    } else if (n != 0 && n != -400 && n != -413 && n != -431 && n != -501 && n != -505) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // Copy so that reads past the end are caught by ASan.
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    for (size_t i = 0; i < size; i++) buf[i] = (char)data[i];
    check(buf, size);
    check(buf, size / 2);
    free(buf);
    return 0;
}
