// Growable text buffers for building HTTP responses and JSON documents (the writer side of
// src/formats/json.h). An allocation failure is sticky (sb.oom) so callers check once at the end.
#ifndef PERI_SERVER_JSONW_H
#define PERI_SERVER_JSONW_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sbuf {
    char *p;        // NUL-terminated when n > 0 (or p == NULL)
    size_t n, cap;
    bool oom;
} sbuf;

void sb_free(sbuf *b);
void sb_clear(sbuf *b);
void sb_put(sbuf *b, const void *s, size_t n);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
// A JSON string literal of s[0..n) (invalid UTF-8 becomes U+FFFD).
void sb_json_str(sbuf *b, const char *s, size_t n);
// A JSON number; JSON has no infinities, so -inf (a log-probability of 0) is written as -9999 as OpenAI does.
void sb_json_num(sbuf *b, double v);

#endif
