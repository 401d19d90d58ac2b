// Argument helpers shared by the subcommands.
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "peri %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_lib_error(const char *cmd, const char *what) {
    fprintf(stderr, "peri %s: %s: %s\n", cmd, what, peri_last_error());
    return 1;
}

int cli_parse_ids(const char *cmd, const char *s, peri_token **out) {
    size_t cap = 16, n = 0;
    peri_token *ids = malloc(cap * sizeof *ids);
    if (!ids) return cli_error(cmd, "out of memory"), -1;
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            free(ids);
            cli_error(cmd, "bad token id near \"%.20s\": ids are non-negative integers separated by spaces", p);
            return -1;
        }
        if (n == cap) {
            cap *= 2;
            if (cap > (1u << 24)) { free(ids); cli_error(cmd, "too many ids"); return -1; }
            peri_token *t = realloc(ids, cap * sizeof *ids);
            if (!t) { free(ids); cli_error(cmd, "out of memory"); return -1; }
            ids = t;
        }
        ids[n++] = (peri_token)v;
        p = end;
    }
    *out = ids;
    return (int)n;
}

bool cli_int(const char *cmd, const char *opt, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        cli_error(cmd, "%s wants an integer from %ld to %ld, not \"%s\"", opt, lo, hi, v);
        return false;
    }
    *out = x;
    return true;
}

bool cli_float(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !(x >= lo && x <= hi)) {
        cli_error(cmd, "%s wants a number from %g to %g, not \"%s\"", opt, lo, hi, v);
        return false;
    }
    *out = x;
    return true;
}

const char *cli_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_error(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}
