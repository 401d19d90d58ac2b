// Internal error reporting: set the thread-local message that peri_last_error() returns, and return the
// status code, so a failing function ends with `return peri_fail(PERI_E_FORMAT, "...", ...);`.
// Messages say what is wrong, where (file, offset, key), and what to do.
#ifndef PERI_CORE_ERROR_H
#define PERI_CORE_ERROR_H

#include "peri.h"

#if defined(__GNUC__)
#define PERI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PERI_PRINTF(a, b)
#endif

int peri_fail(int status, const char *fmt, ...) PERI_PRINTF(2, 3);
// Prepends context to the current message ("loading X: " + old message); returns status.
int peri_fail_prefix(int status, const char *fmt, ...) PERI_PRINTF(2, 3);
void peri_clear_error(void);
void peri_log(int level, const char *fmt, ...) PERI_PRINTF(2, 3);

// For bugs only (never for bad input): prints file:line and aborts.
#define PERI_ASSERT(x)                                                                            \
    do {                                                                                          \
        if (!(x)) peri_abort_assert(__FILE__, __LINE__, #x);                                      \
    } while (0)
_Noreturn void peri_abort_assert(const char *file, int line, const char *expr);

#endif
