// `peri init`: random models of any config, for tests, benchmarks and as training's starting point.
#include "runtime/init.h"

#include "core/error.h"
#include "core/mapfile.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "runtime/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(uint64_t s[4]) { // xoshiro256**
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}

static double uniform01(uint64_t s[4]) { return ((next_u64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static double normal(uint64_t s[4]) { // Box-Muller
    double u = uniform01(s), v = uniform01(s);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

void peri_init_list_begin(peri_init_list *L, uint64_t seed) {
    memset(L, 0, sizeof *L);
    uint64_t z = seed;
    for (int i = 0; i < 4; i++) { // splitmix64 seeding
        z += 0x9e3779b97f4a7c15ull;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        L->rng[i] = x ^ (x >> 31);
    }
}

void peri_init_add(peri_init_list *L, const char *name, int n_dims, const int64_t *shape, int rule, float a, float b) {
    if (L->oom) return;
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 64;
        peri_tensor *t = realloc(L->t, sizeof *t * (size_t)cap);
        if (!t) { L->oom = 1; return; }
        L->t = t;
        L->cap = cap;
    }
    peri_tensor *t = &L->t[L->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->type = PERI_TYPE_F32;
    t->n_dims = n_dims;
    int64_t n = 1;
    for (int i = 0; i < n_dims; i++) { t->shape[i] = shape[i]; n *= shape[i]; }
    float *d = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!d || !t->name) { free(d); free((void *)t->name); L->oom = 1; return; }
    t->data = d;
    t->nbytes = sizeof(float) * (size_t)n;
    L->n++;
    double lim = 0;
    if (rule == PERI_INIT_XAVIER_UNIFORM) {
        int64_t fan_out = n_dims >= 2 ? shape[n_dims - 2] : 1, fan_in = shape[n_dims - 1];
        lim = sqrt(6.0 / (double)(fan_in + fan_out));
    }
    for (int64_t i = 0; i < n; i++) {
        switch (rule) {
        case PERI_INIT_ZERO: d[i] = 0; break;
        case PERI_INIT_ONE: d[i] = 1; break;
        case PERI_INIT_NORMAL: d[i] = (float)(a * normal(L->rng) + b); break;
        default: d[i] = (float)((2 * uniform01(L->rng) - 1) * lim); break;
        }
    }
}

void peri_init_list_free(peri_init_list *L) {
    for (int i = 0; i < L->n; i++) {
        free((void *)L->t[i].name);
        free((void *)L->t[i].data);
    }
    free(L->t);
    memset(L, 0, sizeof *L);
}

int peri_init_list_write(peri_init_list *L, const char *out_dir) {
    if (L->oom) { peri_init_list_free(L); return peri_fail(PERI_E_NOMEM, "out of memory creating random weights"); }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    const char *meta[] = {"format", "pt", "generator", "peri init"};
    int rc = peri_safetensors_write(path, L->t, L->n, meta, 2);
    peri_init_list_free(L);
    return rc;
}

int peri_model_init_random(const char *config_json, uint64_t seed, const char *out_dir) {
    if (!config_json || !out_dir) return peri_fail(PERI_E_ARG, "peri_model_init_random: no config or folder");
    json_value *cfg = json_parse(config_json, strlen(config_json), "config");
    if (!cfg) return PERI_E_FORMAT;
    int rc = PERI_OK;
    const char *mt;
    if (cfg->type != JSON_OBJECT || !json_get_str(cfg, "model_type", NULL, &mt) || !mt) {
        json_free(cfg);
        return peri_fail(PERI_E_FORMAT, "the config has no \"model_type\"; use \"pldrllm\" or \"plm\"");
    }
    const struct peri_arch_ops *ops = NULL;
    if (!strcmp(mt, peri_arch_pldr.model_type)) ops = &peri_arch_pldr;
    else if (!strcmp(mt, peri_arch_plm.model_type)) ops = &peri_arch_plm;
    if (!ops || !ops->init_random) {
        json_free(cfg);
        return peri_fail(PERI_E_UNSUPPORTED, "peri init: model_type '%s' is not one peri can initialise (pldrllm, plm)", mt);
    }
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        json_free(cfg);
        return peri_fail(PERI_E_IO, "cannot create folder '%s': %s", out_dir, strerror(errno));
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(config_json, 1, strlen(config_json), f) != strlen(config_json)) rc = peri_fail(PERI_E_IO, "cannot write '%s'", path);
    if (f) fclose(f);
    if (!rc) rc = ops->init_random(cfg, seed, out_dir);
    json_free(cfg);
    return rc;
}
