// Text buffer and JSON writing helpers for the server's responses.
#include "server/jsonw.h"

#include "formats/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sb_free(sbuf *b) {
    free(b->p);
    *b = (sbuf){0};
}

void sb_clear(sbuf *b) {
    b->n = 0;
    if (b->p) b->p[0] = 0;
}

static bool sb_reserve(sbuf *b, size_t extra) {
    if (b->oom) return false;
    if (b->n + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) {
        if (cap > ((size_t)1 << 40)) { b->oom = true; return false; }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) { b->oom = true; return false; }
    b->p = p;
    b->cap = cap;
    return true;
}

void sb_put(sbuf *b, const void *s, size_t n) {
    if (!sb_reserve(b, n)) return;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) { sb_put(b, tmp, (size_t)n); return; }
    if (!sb_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void sb_json_str(sbuf *b, const char *s, size_t n) {
    size_t need = json_escape(NULL, 0, s, n);
    if (!sb_reserve(b, need)) return;
    json_escape(b->p + b->n, need + 1, s, n);
    b->n += need;
}

void sb_json_num(sbuf *b, double v) {
    if (isnan(v)) { sb_puts(b, "null"); return; }
    if (isinf(v)) v = v < 0 ? -9999.0 : 9999.0;
    sb_printf(b, "%.9g", v);
}
