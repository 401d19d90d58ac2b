// Thread-local error messages and the optional log sink.
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char g_msg[2048];
static peri_log_fn g_log_fn;
static void *g_log_ud;

const char *peri_last_error(void) { return g_msg; }

void peri_clear_error(void) { g_msg[0] = 0; }

int peri_fail(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return status;
}

int peri_fail_prefix(int status, const char *fmt, ...) {
    char old[sizeof g_msg];
    memcpy(old, g_msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof g_msg) {
        size_t room = sizeof g_msg - (size_t)n - 1, len = strlen(old);
        if (len > room) len = room;
        memcpy(g_msg + n, old, len);
        g_msg[(size_t)n + len] = 0;
    }
    return status;
}

const char *peri_status_name(int status) {
    switch (status) {
    case PERI_OK: return "ok";
    case PERI_E_IO: return "I/O error";
    case PERI_E_FORMAT: return "malformed input";
    case PERI_E_UNSUPPORTED: return "unsupported";
    case PERI_E_NOMEM: return "out of memory";
    case PERI_E_ARG: return "bad argument";
    case PERI_E_CONTEXT_FULL: return "context full";
    case PERI_E_ABORTED: return "aborted";
    default: return "unknown status";
    }
}

void peri_log_set(peri_log_fn fn, void *user_data) {
    g_log_fn = fn;
    g_log_ud = user_data;
}

void peri_log(int level, const char *fmt, ...) {
    if (!g_log_fn) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log_fn(level, buf, g_log_ud);
}

void peri_abort_assert(const char *file, int line, const char *expr) {
    fprintf(stderr, "peri: internal error at %s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}
