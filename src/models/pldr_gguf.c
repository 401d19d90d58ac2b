// PLDR-LLM GGUF (arch "pldrllm", docs/gguf-pldrllm.md): rebuilds the config.json tree from the
// pldrllm.config.* keys, so the Hugging Face config reader and the tensor binding work unchanged.
#include "core/error.h"
#include "formats/gguf.h"
#include "formats/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf { char *p; size_t n, cap; bool oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s, size_t n) {
    size_t need = json_escape(NULL, 0, s, n);
    char *tmp = malloc(need + 1);
    if (!tmp) { b->oom = true; return; }
    json_escape(tmp, need + 1, s, n);
    sb_put(b, tmp, need);
    free(tmp);
}

static void sb_num(sbuf *b, const gguf_value *v) {
    char t[64];
    switch (v->type) {
    case GGUF_FLOAT32:
    case GGUF_FLOAT64: {
        int n = snprintf(t, sizeof t, "%.17g", v->v.f64);
        // keep it a non-integer literal, as config.json's 10000.0
        if (!strpbrk(t, ".eEn")) snprintf(t + n, sizeof t - (size_t)n, ".0");
        break;
    }
    case GGUF_INT8: case GGUF_INT16: case GGUF_INT32: case GGUF_INT64:
        snprintf(t, sizeof t, "%lld", (long long)v->v.i64);
        break;
    default:
        snprintf(t, sizeof t, "%llu", (unsigned long long)v->v.u64);
        break;
    }
    sb_put(b, t, strlen(t));
}

int peri_pldr_config_from_gguf(const peri_gguf *g, json_value **out);

int peri_pldr_config_from_gguf(const peri_gguf *g, json_value **out) {
    static const char prefix[] = "pldrllm.config.";
    const size_t pl = sizeof prefix - 1;
    *out = NULL;
    sbuf b = {0};
    sb_put(&b, "{\"model_type\": \"pldrllm\"", 24);
    int n = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        if (kv->key.len <= pl || memcmp(kv->key.s, prefix, pl) != 0) continue;
        const char *k = kv->key.s + pl;
        size_t kl = (size_t)kv->key.len - pl;
        if (kl == 10 && !memcmp(k, "model_type", 10)) continue;
        const gguf_value *v = &kv->value;
        sb_put(&b, ", ", 2);
        sb_str(&b, k, kl);
        sb_put(&b, ": ", 2);
        if (v->type == GGUF_STRING) sb_str(&b, v->v.str.s, (size_t)v->v.str.len);
        else if (v->type == GGUF_BOOL) sb_put(&b, v->v.b ? "true" : "false", v->v.b ? 4 : 5);
        else if (v->type == GGUF_ARRAY && v->v.arr.type == GGUF_STRING) {
            sb_put(&b, "[", 1);
            for (uint64_t j = 0; j < v->v.arr.n; j++) {
                if (j) sb_put(&b, ", ", 2);
                sb_str(&b, v->v.arr.items[j].v.str.s, (size_t)v->v.arr.items[j].v.str.len);
            }
            sb_put(&b, "]", 1);
        } else if (v->type != GGUF_ARRAY) sb_num(&b, v);
        else {
            free(b.p);
            return peri_fail(PERI_E_FORMAT, "GGUF key '%.*s': arrays of numbers are not part of a PLDR-LLM config",
                             (int)kv->key.len, kv->key.s);
        }
        n++;
    }
    sb_put(&b, "}", 1);
    if (b.oom) {
        free(b.p);
        return peri_fail(PERI_E_NOMEM, "out of memory building the PLDR-LLM config from GGUF");
    }
    if (n == 0) {
        free(b.p);
        return peri_fail(PERI_E_FORMAT, "GGUF with general.architecture 'pldrllm' has no pldrllm.config.* keys; "
                         "convert the model with `peri convert` (docs/gguf-pldrllm.md)");
    }
    *out = json_parse(b.p, b.n, "GGUF pldrllm.config.*");
    free(b.p);
    return *out ? 0 : PERI_E_FORMAT;
}
