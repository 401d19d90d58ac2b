// Argument helpers shared by the subcommands.
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int cli_model_option(const char *cmd, int argc, char **argv, int *i, struct peri_model_params *mp) {
    const char *a = argv[*i], *v;
    if (!strcmp(a, "--no-mmap")) {
        mp->use_mmap = false;
    } else if (!strcmp(a, "--no-repack")) {
        mp->use_repack = false;
    } else if (!strcmp(a, "--sparse-down")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "auto")) mp->sparse_down = PERI_SPARSE_DOWN_AUTO;
        else if (!strcmp(v, "on")) mp->sparse_down = PERI_SPARSE_DOWN_ON;
        else if (!strcmp(v, "off")) mp->sparse_down = PERI_SPARSE_DOWN_OFF;
        else {
            cli_error(cmd, "--sparse-down wants auto, on or off, not \"%s\"", v);
            return -1;
        }
    } else {
        return 0;
    }
    return 1;
}

const char *cli_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_error(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

// The model a command uses without -m: the shipped models/peri-pldr-small, found relative to the executable
// (a build tree: <exe dir>/../models; an install: <exe dir>/../share/peri/models) or at PERI_MODELS_DIR,
// set at compile time to the install location. PERI_DEFAULT_MODEL in the environment overrides all.
#define CLI_DEFAULT_MODEL_NAME "peri-pldr-small"

static bool cli_is_model_dir(const char *dir) {
    char path[4096];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path) return false;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

const char *cli_default_model(void) {
    static char found[4096];
    const char *env = getenv("PERI_DEFAULT_MODEL");
    if (env && *env) return env;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        const char *rel[] = {"/../models/", "/../share/peri/models/", "/models/"};
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            if (snprintf(found, sizeof found, "%s%s%s", exe, rel[i], CLI_DEFAULT_MODEL_NAME) < (int)sizeof found &&
                cli_is_model_dir(found))
                return found;
        }
    }
#ifdef PERI_MODELS_DIR
    if (snprintf(found, sizeof found, "%s/%s", PERI_MODELS_DIR, CLI_DEFAULT_MODEL_NAME) < (int)sizeof found &&
        cli_is_model_dir(found))
        return found;
#endif
    return NULL;
}

int cli_no_default_model(const char *cmd) {
    return cli_error(cmd, "no model: give -m MODEL. The built-in model " CLI_DEFAULT_MODEL_NAME " was not found "
                     "(looked in <peri's folder>/../models, <peri's folder>/../share/peri/models"
#ifdef PERI_MODELS_DIR
                     " and " PERI_MODELS_DIR
#endif
                     "); set PERI_DEFAULT_MODEL to a model folder, or reinstall peri with its models/ folder");
}

int cli_sampling_option(const char *cmd, int argc, char **argv, int *i, struct peri_sampler_params *sp) {
    const char *a = argv[*i], *v;
    double d;
    long l;
    if (!strcmp(a, "--temp")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || !cli_float(cmd, a, v, 0, 100, &d)) return -1;
        sp->temperature = (float)d;
    } else if (!strcmp(a, "--top-k")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || !cli_int(cmd, a, v, 0, 1 << 30, &l)) return -1;
        sp->top_k = (int32_t)l;
    } else if (!strcmp(a, "--top-p")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || !cli_float(cmd, a, v, 0, 1, &d)) return -1;
        sp->top_p = (float)d;
    } else if (!strcmp(a, "--min-p")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || !cli_float(cmd, a, v, 0, 1, &d)) return -1;
        sp->min_p = (float)d;
    } else if (!strcmp(a, "--repeat-penalty")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || !cli_float(cmd, a, v, 1e-3, 100, &d)) return -1;
        sp->repeat_penalty = (float)d;
    } else if (!strcmp(a, "--seed")) {
        if (!(v = cli_value(cmd, argc, argv, i)) || !cli_int(cmd, a, v, 0, 0x7fffffffL, &l)) return -1;
        sp->seed = (uint64_t)l;
    } else {
        return 0;
    }
    return 1;
}
