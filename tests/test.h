// Minimal test helpers (as sds's testhelp.h): CHECK records a failure and goes on; the summary line
// "N passed, N failed" is printed by TEST_END, which returns the exit code (1 on any failure).
// Tests that need ../shared call test_shared_dir() and return TEST_SKIP (77) when it is absent.
#ifndef PERI_TEST_H
#define PERI_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int test_passed, test_failed;

#define TEST_SKIP 77

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (cond) test_passed++;                                                           \
        else {                                                                             \
            test_failed++;                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
        }                                                                                  \
    } while (0)

#define CHECKF(cond, ...)                                                                  \
    do {                                                                                   \
        if (cond) test_passed++;                                                           \
        else {                                                                             \
            test_failed++;                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

#define TEST_END()                                                                         \
    (printf("%d passed, %d failed\n", test_passed, test_failed), test_failed ? 1 : 0)

// The ../shared folder (env PERI_SHARED_DIR), or NULL if it does not exist.
static inline const char *test_shared_dir(void) {
    const char *d = getenv("PERI_SHARED_DIR");
    struct stat st;
    if (!d || stat(d, &st) != 0 || !S_ISDIR(st.st_mode)) return NULL;
    return d;
}

// Max |a-b| over n floats (NaN anywhere counts as infinite).
static inline double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

#endif
