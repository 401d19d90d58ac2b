// GGUF v2/v3 reader (bounds-checked against the buffer before every read and allocation) and v3 writer.
#include "formats/gguf.h"

#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 16
#define GGUF_MAX_NAME 64   // ggml's GGML_MAX_NAME, including the NUL

static const size_t g_vsize[GGUF_VTYPE_COUNT] = {
    [GGUF_UINT8] = 1, [GGUF_INT8] = 1, [GGUF_UINT16] = 2, [GGUF_INT16] = 2, [GGUF_UINT32] = 4,
    [GGUF_INT32] = 4, [GGUF_FLOAT32] = 4, [GGUF_BOOL] = 1, [GGUF_STRING] = 0, [GGUF_ARRAY] = 0,
    [GGUF_UINT64] = 8, [GGUF_INT64] = 8, [GGUF_FLOAT64] = 8,
};

static const char *vtype_name(int t) {
    static const char *names[GGUF_VTYPE_COUNT] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                                  "bool", "string", "array", "uint64", "int64", "float64"};
    return t >= 0 && t < GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

// Bytes an element of this type takes at least in the file (used to bound counts before allocating).
static uint64_t min_elem_size(int t) {
    if (t == GGUF_STRING) return 8;
    if (t == GGUF_ARRAY) return 12;
    return g_vsize[t];
}

typedef struct {
    const unsigned char *data;
    size_t size, pos;
    const char *where;
} reader;

static uint64_t rd_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int need(reader *r, uint64_t n, const char *what) {
    if (n > r->size - r->pos)
        return peri_fail(PERI_E_FORMAT, "%s: truncated GGUF file: %s at offset %zu needs %llu bytes, %zu remain",
                         r->where, what, r->pos, (unsigned long long)n, r->size - r->pos);
    return PERI_OK;
}

static int rd_u32(reader *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc) return rc;
    *v = (uint32_t)rd_le(r->data + r->pos, 4);
    r->pos += 4;
    return PERI_OK;
}

static int rd_u64(reader *r, uint64_t *v, const char *what) {
    int rc = need(r, 8, what);
    if (rc) return rc;
    *v = rd_le(r->data + r->pos, 8);
    r->pos += 8;
    return PERI_OK;
}

static int rd_str(reader *r, gguf_str *s, const char *what) {
    uint64_t n;
    int rc = rd_u64(r, &n, what);
    if (rc) return rc;
    if ((rc = need(r, n, what))) return rc;
    s->s = (const char *)r->data + r->pos;
    s->len = n;
    r->pos += (size_t)n;
    return PERI_OK;
}

static void free_value(gguf_value *v) {
    if (v->type != GGUF_ARRAY || !v->v.arr.items) return;
    if (v->v.arr.type == GGUF_ARRAY)
        for (uint64_t i = 0; i < v->v.arr.n; i++) free_value(&v->v.arr.items[i]);
    free(v->v.arr.items);
    v->v.arr.items = NULL;
}

static int rd_value(reader *r, gguf_value *v, int type, int depth, const char *key);

static int rd_array(reader *r, gguf_value *v, int depth, const char *key) {
    uint32_t et;
    uint64_t n;
    int rc;
    if (depth >= GGUF_MAX_ARRAY_DEPTH)
        return peri_fail(PERI_E_FORMAT, "%s: key '%s': arrays nested more than %d deep", r->where, key, GGUF_MAX_ARRAY_DEPTH);
    if ((rc = rd_u32(r, &et, "array element type"))) return rc;
    if (et >= GGUF_VTYPE_COUNT)
        return peri_fail(PERI_E_FORMAT, "%s: key '%s': unknown array element type %u at offset %zu", r->where, key, et,
                         r->pos - 4);
    if ((rc = rd_u64(r, &n, "array length"))) return rc;
    uint64_t min = min_elem_size((int)et);
    if (n > (r->size - r->pos) / min)
        return peri_fail(PERI_E_FORMAT, "%s: key '%s': array of %llu %s elements cannot fit in the %zu bytes left",
                         r->where, key, (unsigned long long)n, vtype_name((int)et), r->size - r->pos);
    v->v.arr.type = (int)et;
    v->v.arr.n = n;
    v->v.arr.data = r->data + r->pos;
    v->v.arr.items = NULL;
    if (et != GGUF_STRING && et != GGUF_ARRAY) {
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (r->data[r->pos + i] > 1)
                    return peri_fail(PERI_E_FORMAT, "%s: key '%s': bool array element %llu is %u, not 0 or 1",
                                     r->where, key, (unsigned long long)i, r->data[r->pos + i]);
        r->pos += (size_t)(n * min);
        return PERI_OK;
    }
    if (n == 0) return PERI_OK;
    v->v.arr.items = calloc((size_t)n, sizeof(gguf_value));
    if (!v->v.arr.items) return peri_fail(PERI_E_NOMEM, "%s: key '%s': out of memory for %llu array items", r->where,
                                          key, (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        if ((rc = rd_value(r, &v->v.arr.items[i], (int)et, depth + 1, key))) {
            v->v.arr.n = i + 1;   // free only what was filled (calloc'd rest is harmless too)
            return rc;
        }
    }
    return PERI_OK;
}

static int rd_value(reader *r, gguf_value *v, int type, int depth, const char *key) {
    int rc;
    v->type = type;
    switch (type) {
    case GGUF_STRING: return rd_str(r, &v->v.str, "string value");
    case GGUF_ARRAY: return rd_array(r, v, depth, key);
    default: break;
    }
    size_t n = g_vsize[type];
    if ((rc = need(r, n, "value"))) return rc;
    uint64_t raw = rd_le(r->data + r->pos, (int)n);
    r->pos += n;
    switch (type) {
    case GGUF_UINT8: case GGUF_UINT16: case GGUF_UINT32: case GGUF_UINT64: v->v.u64 = raw; break;
    case GGUF_INT8: v->v.i64 = (int8_t)raw; break;
    case GGUF_INT16: v->v.i64 = (int16_t)raw; break;
    case GGUF_INT32: v->v.i64 = (int32_t)raw; break;
    case GGUF_INT64: v->v.i64 = (int64_t)raw; break;
    case GGUF_FLOAT32: {
        uint32_t b = (uint32_t)raw;
        float f;
        memcpy(&f, &b, 4);
        v->v.f64 = f;
        break;
    }
    case GGUF_FLOAT64: memcpy(&v->v.f64, &raw, 8); break;
    case GGUF_BOOL:
        if (raw > 1)
            return peri_fail(PERI_E_FORMAT, "%s: key '%s': bool value is %u, not 0 or 1", r->where, key, (unsigned)raw);
        v->v.b = raw != 0;
        break;
    }
    return PERI_OK;
}

void peri_gguf_close(peri_gguf *g) {
    if (!g) return;
    if (g->kv) {
        for (uint64_t i = 0; i < g->n_kv; i++) free_value(&g->kv[i].value);
        free(g->kv);
    }
    if (g->tensors) {
        for (int i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
        free(g->tensors);
    }
    free(g->sorted);
    peri_mapfile_close(&g->file);
    memset(g, 0, sizeof *g);
}

static int cmp_idx_name(const void *a, const void *b, void *ctx) {
    const peri_tensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

static int cmp_idx_offset(const void *a, const void *b, void *ctx) {
    const peri_tensor *t = ctx;
    const unsigned char *x = t[*(const int *)a].data, *y = t[*(const int *)b].data;
    return x < y ? -1 : x > y ? 1 : 0;
}

static int cmp_kv_key(const void *a, const void *b) {
    const gguf_kv *x = *(const gguf_kv *const *)a, *y = *(const gguf_kv *const *)b;
    uint64_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.s, y->key.s, (size_t)n);
    if (c) return c;
    return x->key.len < y->key.len ? -1 : x->key.len > y->key.len;
}

static bool is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

int peri_gguf_parse(peri_gguf *g, const unsigned char *data, size_t size, const char *where) {
    memset(g, 0, sizeof *g);
    reader r = {data, size, 0, where ? where : "GGUF buffer"};
    const char *w = r.where;
    int rc;
    if (size < 4 || memcmp(data, GGUF_MAGIC, 4) != 0)
        return peri_fail(PERI_E_FORMAT, "%s: not a GGUF file (the first 4 bytes are not \"GGUF\")", w);
    r.pos = 4;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    if ((rc = rd_u32(&r, &version, "version"))) return rc;
    if (version == 1)
        return peri_fail(PERI_E_UNSUPPORTED, "%s: GGUF version 1 is not supported (it used 32-bit counts); "
                         "re-convert the model with a current llama.cpp", w);
    if ((version & 0xFFFF) == 0)
        return peri_fail(PERI_E_UNSUPPORTED, "%s: GGUF version field 0x%08x looks byte-swapped: big-endian GGUF files "
                         "are not supported", w, version);
    if (version != 2 && version != 3)
        return peri_fail(PERI_E_UNSUPPORTED, "%s: GGUF version %u is not supported (peri reads versions 2 and 3)", w, version);
    g->version = version;
    if ((rc = rd_u64(&r, &n_tensors, "tensor count"))) return rc;
    if ((rc = rd_u64(&r, &n_kv, "key-value count"))) return rc;
    // Each key-value takes at least 13 bytes and each tensor info at least 32: bound the counts by the file.
    if (n_kv > (size - r.pos) / 13)
        return peri_fail(PERI_E_FORMAT, "%s: %llu key-values cannot fit in a %zu-byte file", w, (unsigned long long)n_kv, size);
    if (n_tensors > (size - r.pos) / 32 || n_tensors > INT32_MAX)
        return peri_fail(PERI_E_FORMAT, "%s: %llu tensors cannot fit in a %zu-byte file", w,
                         (unsigned long long)n_tensors, size);

    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    if (!g->kv) return peri_fail(PERI_E_NOMEM, "%s: out of memory for %llu key-values", w, (unsigned long long)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        uint32_t type;
        g->n_kv = i + 1;
        if ((rc = rd_str(&r, &kv->key, "key"))) goto fail;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 100 ? kv->key.len : 100), kv->key.s);
        if ((rc = rd_u32(&r, &type, "value type"))) goto fail;
        if (type >= GGUF_VTYPE_COUNT) {
            rc = peri_fail(PERI_E_FORMAT, "%s: key '%s' has unknown value type %u (offset %zu)", w, key, type, r.pos - 4);
            goto fail;
        }
        if ((rc = rd_value(&r, &kv->value, (int)type, 0, key))) goto fail;
    }
    if (n_kv > 1) {   // duplicate keys would make lookups ambiguous; ggml rejects them too
        const gguf_kv **order = malloc((size_t)n_kv * sizeof *order);
        if (!order) { rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", w); goto fail; }
        for (uint64_t i = 0; i < n_kv; i++) order[i] = &g->kv[i];
        qsort(order, (size_t)n_kv, sizeof *order, cmp_kv_key);
        for (uint64_t i = 1; i < n_kv; i++)
            if (cmp_kv_key(&order[i - 1], &order[i]) == 0) {
                rc = peri_fail(PERI_E_FORMAT, "%s: key '%.*s' appears twice", w, (int)(order[i]->key.len < 200 ? order[i]->key.len : 200),
                               order[i]->key.s);
                break;
            }
        free(order);
        if (rc) goto fail;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_value *al = peri_gguf_get(g, "general.alignment");
    if (al) {
        uint64_t a = 0;
        bool is_int = peri_gguf_get_u64(g, "general.alignment", &a);
        if (!is_int || !is_pow2(a) || a > (1u << 30)) {
            if (is_int)
                rc = peri_fail(PERI_E_FORMAT, "%s: general.alignment is %llu; it must be a power of two (usually 32)", w,
                               (unsigned long long)a);
            else
                rc = peri_fail(PERI_E_FORMAT, "%s: general.alignment must be an integer power of two, not a %s", w,
                               vtype_name(al->type));
            goto fail;
        }
        g->alignment = a;
    }

    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    g->sorted = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->sorted);
    uint64_t *offsets = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *offsets);
    if (!g->tensors || !g->sorted || !offsets) {
        free(offsets);
        rc = peri_fail(PERI_E_NOMEM, "%s: out of memory for %llu tensors", w, (unsigned long long)n_tensors);
        goto fail;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        peri_tensor *t = &g->tensors[i];
        gguf_str name;
        uint32_t n_dims, type;
        if ((rc = rd_str(&r, &name, "tensor name"))) break;
        char *nm = malloc((size_t)name.len + 1);
        if (!nm) { rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", w); break; }
        memcpy(nm, name.s, (size_t)name.len);
        nm[name.len] = 0;
        t->name = nm;
        g->n_tensors = (int)i + 1;
        if (strlen(nm) != name.len) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor %llu has a NUL byte in its name", w, (unsigned long long)i);
            break;
        }
        if ((rc = rd_u32(&r, &n_dims, "tensor dimension count"))) break;
        if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' has %u dimensions (GGUF allows 1 to 4)", w, nm, n_dims);
            break;
        }
        int64_t ne[GGUF_MAX_DIMS];
        for (uint32_t d = 0; d < n_dims && !rc; d++) {
            uint64_t v;
            if ((rc = rd_u64(&r, &v, "tensor dimension"))) break;
            if (v == 0 || v > INT64_MAX) {
                rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' has dimension ne[%u] = %llu (must be > 0)", w, nm, d,
                               (unsigned long long)v);
                break;
            }
            ne[d] = (int64_t)v;
        }
        if (rc) break;
        if ((rc = rd_u32(&r, &type, "tensor type"))) break;
        if ((rc = rd_u64(&r, &offsets[i], "tensor offset"))) break;
        const struct peri_type_traits *tr = peri_type_traits((int)type);
        if (!tr || type == PERI_TYPE_BOOL || type == PERI_TYPE_U8 || peri_type_is_layout((int)type) ||
            tr->blck_size <= 0) {
            rc = peri_fail(PERI_E_UNSUPPORTED, "%s: tensor '%s' has unknown type id %u; a newer llama.cpp may have "
                           "written it", w, nm, type);
            break;
        }
        if (ne[0] % tr->blck_size) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s': row length %lld is not a multiple of the %s block size %lld",
                           w, nm, (long long)ne[0], tr->name, (long long)tr->blck_size);
            break;
        }
        // nbytes = blocks per row x block size x rows, each step checked against the file size.
        uint64_t nb = (uint64_t)(ne[0] / tr->blck_size);
        bool big = nb > size / tr->type_size;
        nb *= tr->type_size;
        for (uint32_t d = 1; d < n_dims && !big; d++) {
            if ((uint64_t)ne[d] > size / nb) big = true;
            else nb *= (uint64_t)ne[d];
        }
        if (big || nb > size) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' is larger than the whole file", w, nm);
            break;
        }
        t->type = (int)type;
        t->n_dims = (int)n_dims;
        for (uint32_t d = 0; d < n_dims; d++) t->shape[d] = ne[n_dims - 1 - d];
        t->nbytes = (size_t)nb;
        g->sorted[i] = (int)i;
    }
    if (rc) { free(offsets); goto fail; }
    uint64_t data_off = ((uint64_t)r.pos + g->alignment - 1) / g->alignment * g->alignment;
    g->data_offset = data_off;
    if (n_tensors && data_off > size) {
        free(offsets);
        rc = peri_fail(PERI_E_FORMAT, "%s: truncated GGUF file: the data section would start at %llu, past its end", w,
                       (unsigned long long)data_off);
        goto fail;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        peri_tensor *t = &g->tensors[i];
        uint64_t off = offsets[i];
        if (off % g->alignment) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' data offset %llu is not a multiple of the alignment %llu", w,
                           t->name, (unsigned long long)off, (unsigned long long)g->alignment);
            break;
        }
        if (off > size - data_off || t->nbytes > size - data_off - off) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' (%zu bytes at data offset %llu) reaches past the end of the "
                           "file (%zu bytes); the file is truncated", w, t->name, t->nbytes, (unsigned long long)off, size);
            break;
        }
        t->data = data + data_off + off;
    }
    free(offsets);
    if (rc) goto fail;
    if (n_tensors > 1) {
        int n = (int)n_tensors;
        qsort_r(g->sorted, (size_t)n, sizeof *g->sorted, cmp_idx_offset, g->tensors);
        for (int i = 1; i < n; i++) {
            const peri_tensor *a = &g->tensors[g->sorted[i - 1]], *b = &g->tensors[g->sorted[i]];
            if ((const unsigned char *)b->data < (const unsigned char *)a->data + a->nbytes) {
                rc = peri_fail(PERI_E_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section", w, a->name, b->name);
                goto fail;
            }
        }
        qsort_r(g->sorted, (size_t)n, sizeof *g->sorted, cmp_idx_name, g->tensors);
        for (int i = 1; i < n; i++)
            if (strcmp(g->tensors[g->sorted[i - 1]].name, g->tensors[g->sorted[i]].name) == 0) {
                rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' appears twice", w, g->tensors[g->sorted[i]].name);
                goto fail;
            }
    }
    return PERI_OK;
fail:
    peri_gguf_close(g);
    return rc;
}

int peri_gguf_open(peri_gguf *g, const char *path, bool use_mmap) {
    memset(g, 0, sizeof *g);
    peri_mapfile f;
    int rc = peri_mapfile_open(&f, path, use_mmap);
    if (rc) return rc;
    rc = peri_gguf_parse(g, f.data, f.size, path);
    if (rc) {
        peri_mapfile_close(&f);
        return rc;
    }
    g->file = f;
    return PERI_OK;
}

// ---- lookups ----------------------------------------------------------------------------------------------

const gguf_value *peri_gguf_get(const peri_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.len == n && memcmp(g->kv[i].key.s, key, n) == 0) return &g->kv[i].value;
    return NULL;
}

const peri_tensor *peri_gguf_find(const peri_gguf *g, const char *name) {
    if (!g || !name || !g->sorted) return NULL;
    int lo = 0, hi = g->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const peri_tensor *t = &g->tensors[g->sorted[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

static bool is_uint(int t) { return t == GGUF_UINT8 || t == GGUF_UINT16 || t == GGUF_UINT32 || t == GGUF_UINT64; }
static bool is_sint(int t) { return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64; }

bool peri_gguf_get_u64(const peri_gguf *g, const char *key, uint64_t *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v) return false;
    if (is_uint(v->type)) { *out = v->v.u64; return true; }
    if (is_sint(v->type) && v->v.i64 >= 0) { *out = (uint64_t)v->v.i64; return true; }
    return false;
}

bool peri_gguf_get_i64(const peri_gguf *g, const char *key, int64_t *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v) return false;
    if (is_sint(v->type)) { *out = v->v.i64; return true; }
    if (is_uint(v->type) && v->v.u64 <= INT64_MAX) { *out = (int64_t)v->v.u64; return true; }
    return false;
}

bool peri_gguf_get_f64(const peri_gguf *g, const char *key, double *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v) return false;
    if (v->type == GGUF_FLOAT32 || v->type == GGUF_FLOAT64) { *out = v->v.f64; return true; }
    if (is_sint(v->type)) { *out = (double)v->v.i64; return true; }
    if (is_uint(v->type)) { *out = (double)v->v.u64; return true; }
    return false;
}

bool peri_gguf_get_bool(const peri_gguf *g, const char *key, bool *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v || v->type != GGUF_BOOL) return false;
    *out = v->v.b;
    return true;
}

bool peri_gguf_get_str(const peri_gguf *g, const char *key, gguf_str *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v || v->type != GGUF_STRING) return false;
    *out = v->v.str;
    return true;
}

bool peri_gguf_get_arr(const peri_gguf *g, const char *key, int *elem_type, uint64_t *n) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v || v->type != GGUF_ARRAY) return false;
    if (elem_type) *elem_type = v->v.arr.type;
    if (n) *n = v->v.arr.n;
    return true;
}

bool peri_gguf_arr_str(const peri_gguf *g, const char *key, uint64_t i, gguf_str *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v || v->type != GGUF_ARRAY || v->v.arr.type != GGUF_STRING || i >= v->v.arr.n) return false;
    *out = v->v.arr.items[i].v.str;
    return true;
}

// Element i of a scalar array, decoded like a scalar value.
static bool arr_elem(const peri_gguf *g, const char *key, uint64_t i, gguf_value *out) {
    const gguf_value *v = peri_gguf_get(g, key);
    if (!v || v->type != GGUF_ARRAY || i >= v->v.arr.n) return false;
    int t = v->v.arr.type;
    if (t == GGUF_STRING || t == GGUF_ARRAY) return false;
    size_t n = g_vsize[t];
    uint64_t raw = rd_le((const unsigned char *)v->v.arr.data + i * n, (int)n);
    out->type = t;
    switch (t) {
    case GGUF_INT8: out->v.i64 = (int8_t)raw; break;
    case GGUF_INT16: out->v.i64 = (int16_t)raw; break;
    case GGUF_INT32: out->v.i64 = (int32_t)raw; break;
    case GGUF_INT64: out->v.i64 = (int64_t)raw; break;
    case GGUF_FLOAT32: {
        uint32_t b = (uint32_t)raw;
        float f;
        memcpy(&f, &b, 4);
        out->v.f64 = f;
        break;
    }
    case GGUF_FLOAT64: memcpy(&out->v.f64, &raw, 8); break;
    case GGUF_BOOL: out->v.b = raw != 0; break;
    default: out->v.u64 = raw; break;
    }
    return true;
}

bool peri_gguf_arr_f64(const peri_gguf *g, const char *key, uint64_t i, double *out) {
    gguf_value e;
    if (!arr_elem(g, key, i, &e)) return false;
    if (e.type == GGUF_FLOAT32 || e.type == GGUF_FLOAT64) *out = e.v.f64;
    else if (is_sint(e.type)) *out = (double)e.v.i64;
    else if (is_uint(e.type)) *out = (double)e.v.u64;
    else if (e.type == GGUF_BOOL) *out = e.v.b;
    else return false;
    return true;
}

bool peri_gguf_arr_i64(const peri_gguf *g, const char *key, uint64_t i, int64_t *out) {
    gguf_value e;
    if (!arr_elem(g, key, i, &e)) return false;
    if (is_sint(e.type)) *out = e.v.i64;
    else if (is_uint(e.type) && e.v.u64 <= INT64_MAX) *out = (int64_t)e.v.u64;
    else if (e.type == GGUF_BOOL) *out = e.v.b;
    else return false;
    return true;
}

// ---- writer -----------------------------------------------------------------------------------------------

typedef struct {
    unsigned char *p;
    size_t len, cap;
    bool oom;
} bbuf;

static void bb_put(bbuf *b, const void *s, size_t n) {
    if (b->oom || !n) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) { b->oom = true; return; }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void bb_le(bbuf *b, uint64_t v, int n) {
    unsigned char tmp[8];
    for (int i = 0; i < n; i++) tmp[i] = (unsigned char)(v >> (8 * i));
    bb_put(b, tmp, (size_t)n);
}

static void bb_str(bbuf *b, const char *s, uint64_t n) {
    bb_le(b, n, 8);
    bb_put(b, s, (size_t)n);
}

typedef struct {
    char *key;
    bbuf val;     // type id + payload, as in the file
} wkv;

typedef struct {
    char *name;
    int type, n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    const void *data;
    size_t nbytes;
} wtensor;

struct peri_gguf_writer {
    wkv *kv;
    int n_kv, cap_kv;
    wtensor *t;
    int n_t, cap_t;
};

peri_gguf_writer *peri_gguf_writer_new(void) { return calloc(1, sizeof(peri_gguf_writer)); }

void peri_gguf_writer_free(peri_gguf_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val.p);
    }
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

// Takes ownership of val. Setting an existing key replaces its value in place (as gguf_set_* does).
static int put_kv(peri_gguf_writer *w, const char *key, bbuf *val) {
    if (!w || !key) { free(val->p); return peri_fail(PERI_E_ARG, "GGUF writer: NULL writer or key"); }
    if (val->oom) { free(val->p); return peri_fail(PERI_E_NOMEM, "GGUF writer: out of memory for key '%s'", key); }
    for (int i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].val.p);
            w->kv[i].val = *val;
            return PERI_OK;
        }
    if (w->n_kv == w->cap_kv) {
        int cap = w->cap_kv ? w->cap_kv * 2 : 32;
        wkv *nk = realloc(w->kv, (size_t)cap * sizeof *nk);
        if (!nk) { free(val->p); return peri_fail(PERI_E_NOMEM, "GGUF writer: out of memory"); }
        w->kv = nk;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) { free(val->p); return peri_fail(PERI_E_NOMEM, "GGUF writer: out of memory"); }
    w->kv[w->n_kv].key = k;
    w->kv[w->n_kv].val = *val;
    w->n_kv++;
    return PERI_OK;
}

static int set_scalar(peri_gguf_writer *w, const char *key, int type, uint64_t raw) {
    bbuf b = {0};
    bb_le(&b, (uint64_t)type, 4);
    bb_le(&b, raw, (int)g_vsize[type]);
    return put_kv(w, key, &b);
}

int peri_gguf_set_u32(peri_gguf_writer *w, const char *key, uint32_t v) { return set_scalar(w, key, GGUF_UINT32, v); }
int peri_gguf_set_i32(peri_gguf_writer *w, const char *key, int32_t v) { return set_scalar(w, key, GGUF_INT32, (uint32_t)v); }
int peri_gguf_set_u64(peri_gguf_writer *w, const char *key, uint64_t v) { return set_scalar(w, key, GGUF_UINT64, v); }
int peri_gguf_set_bool(peri_gguf_writer *w, const char *key, bool v) { return set_scalar(w, key, GGUF_BOOL, v ? 1 : 0); }
int peri_gguf_set_f32(peri_gguf_writer *w, const char *key, float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return set_scalar(w, key, GGUF_FLOAT32, b);
}

int peri_gguf_set_str(peri_gguf_writer *w, const char *key, const char *v) {
    if (!v) return peri_fail(PERI_E_ARG, "GGUF writer: NULL string for key '%s'", key ? key : "");
    bbuf b = {0};
    bb_le(&b, GGUF_STRING, 4);
    bb_str(&b, v, strlen(v));
    return put_kv(w, key, &b);
}

int peri_gguf_set_arr_str(peri_gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    if (n && !v) return peri_fail(PERI_E_ARG, "GGUF writer: NULL array for key '%s'", key ? key : "");
    bbuf b = {0};
    bb_le(&b, GGUF_ARRAY, 4);
    bb_le(&b, GGUF_STRING, 4);
    bb_le(&b, n, 8);
    for (uint64_t i = 0; i < n; i++) {
        const char *s = v[i] ? v[i] : "";
        bb_str(&b, s, strlen(s));
    }
    return put_kv(w, key, &b);
}

int peri_gguf_set_arr_data(peri_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n) {
    if (elem_type < 0 || elem_type >= GGUF_VTYPE_COUNT || elem_type == GGUF_STRING || elem_type == GGUF_ARRAY)
        return peri_fail(PERI_E_ARG, "GGUF writer: key '%s': element type %d is not a scalar type (use "
                         "peri_gguf_set_arr_str for strings)", key ? key : "", elem_type);
    if (n && !data) return peri_fail(PERI_E_ARG, "GGUF writer: NULL array for key '%s'", key ? key : "");
    if (n > SIZE_MAX / 16) return peri_fail(PERI_E_ARG, "GGUF writer: key '%s': array too long", key ? key : "");
    bbuf b = {0};
    bb_le(&b, GGUF_ARRAY, 4);
    bb_le(&b, (uint64_t)elem_type, 4);
    bb_le(&b, n, 8);
    bb_put(&b, data, (size_t)(n * g_vsize[elem_type]));   // host little-endian, as ggml assumes
    return put_kv(w, key, &b);
}

static void put_value(bbuf *b, const gguf_value *v, bool with_type) {
    if (with_type) bb_le(b, (uint64_t)v->type, 4);
    switch (v->type) {
    case GGUF_STRING: bb_str(b, v->v.str.s, v->v.str.len); return;
    case GGUF_ARRAY: {
        int et = v->v.arr.type;
        bb_le(b, (uint64_t)et, 4);
        bb_le(b, v->v.arr.n, 8);
        if (et == GGUF_STRING || et == GGUF_ARRAY) {
            for (uint64_t i = 0; i < v->v.arr.n; i++) put_value(b, &v->v.arr.items[i], false);
        } else {
            bb_put(b, v->v.arr.data, (size_t)(v->v.arr.n * g_vsize[et]));
        }
        return;
    }
    case GGUF_FLOAT32: {
        float f = (float)v->v.f64;
        uint32_t r;
        memcpy(&r, &f, 4);
        bb_le(b, r, 4);
        return;
    }
    case GGUF_FLOAT64: {
        uint64_t r;
        memcpy(&r, &v->v.f64, 8);
        bb_le(b, r, 8);
        return;
    }
    case GGUF_BOOL: bb_le(b, v->v.b ? 1 : 0, 1); return;
    default:
        // Signed values are stored sign-extended in i64; the low bytes are the two's complement encoding.
        bb_le(b, is_sint(v->type) ? (uint64_t)v->v.i64 : v->v.u64, (int)g_vsize[v->type]);
        return;
    }
}

int peri_gguf_set_kv_from(peri_gguf_writer *w, const gguf_kv *kv) {
    if (!kv || kv->value.type < 0 || kv->value.type >= GGUF_VTYPE_COUNT)
        return peri_fail(PERI_E_ARG, "GGUF writer: bad key-value");
    char *key = malloc((size_t)kv->key.len + 1);
    if (!key) return peri_fail(PERI_E_NOMEM, "GGUF writer: out of memory");
    memcpy(key, kv->key.s, (size_t)kv->key.len);
    key[kv->key.len] = 0;
    bbuf b = {0};
    put_value(&b, &kv->value, true);
    int rc = put_kv(w, key, &b);
    free(key);
    return rc;
}

int peri_gguf_add_tensor(peri_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *shape,
                         const void *data, size_t nbytes) {
    if (!w || !name || !shape) return peri_fail(PERI_E_ARG, "GGUF writer: NULL argument");
    if (strlen(name) >= GGUF_MAX_NAME)
        return peri_fail(PERI_E_ARG, "GGUF writer: tensor name '%s' is longer than the %d bytes ggml allows", name,
                         GGUF_MAX_NAME - 1);
    const struct peri_type_traits *tr = peri_type_traits(type);
    if (!tr || type == PERI_TYPE_BOOL || type == PERI_TYPE_U8 || peri_type_is_layout(type))
        return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s': type %d cannot be stored in GGUF", name, type);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s' has %d dimensions (GGUF allows 1 to 4)", name, n_dims);
    for (int i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s' added twice", name);
    wtensor t = {.type = type, .n_dims = n_dims, .data = data, .nbytes = nbytes};
    uint64_t rows = 1;
    for (int d = 0; d < n_dims; d++) {
        int64_t v = shape[n_dims - 1 - d];
        if (v <= 0) return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s' has a dimension %lld", name, (long long)v);
        t.ne[d] = v;
        if (d) {
            if (rows > UINT64_MAX / (uint64_t)v) return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s' too big", name);
            rows *= (uint64_t)v;
        }
    }
    size_t row = peri_row_size(type, t.ne[0]);
    if (!row)
        return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s': row length %lld is not a multiple of the %s block size",
                         name, (long long)t.ne[0], tr->name);
    if (rows > SIZE_MAX / row || row * rows != nbytes || (nbytes && !data))
        return peri_fail(PERI_E_ARG, "GGUF writer: tensor '%s': %zu bytes given, its shape needs %llu", name, nbytes,
                         (unsigned long long)(row * rows));
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return peri_fail(PERI_E_NOMEM, "GGUF writer: out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    t.name = strdup(name);
    if (!t.name) return peri_fail(PERI_E_NOMEM, "GGUF writer: out of memory");
    w->t[w->n_t++] = t;
    return PERI_OK;
}

static uint64_t writer_alignment(const peri_gguf_writer *w) {
    for (int i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment") != 0) continue;
        const unsigned char *p = w->kv[i].val.p;
        uint32_t type = (uint32_t)rd_le(p, 4);
        // ggml reads general.alignment with gguf_get_val_u32 (asserting the type), so only uint32 is written.
        return type == GGUF_UINT32 ? rd_le(p + 4, 4) : 0;
    }
    return GGUF_DEFAULT_ALIGNMENT;
}

static bool write_zeros(FILE *fp, uint64_t n) {
    static const unsigned char z[256];
    while (n) {
        size_t k = n < sizeof z ? (size_t)n : sizeof z;
        if (fwrite(z, 1, k, fp) != k) return false;
        n -= k;
    }
    return true;
}

int peri_gguf_write(peri_gguf_writer *w, const char *path) {
    if (!w || !path) return peri_fail(PERI_E_ARG, "GGUF writer: NULL argument");
    uint64_t align = writer_alignment(w);
    if (!is_pow2(align) || align > (1u << 30))
        return peri_fail(PERI_E_ARG, "writing '%s': general.alignment must be a uint32 power of two", path);
    bbuf h = {0};
    bb_put(&h, GGUF_MAGIC, 4);
    bb_le(&h, 3, 4);
    bb_le(&h, (uint64_t)w->n_t, 8);
    bb_le(&h, (uint64_t)w->n_kv, 8);
    for (int i = 0; i < w->n_kv; i++) {
        bb_str(&h, w->kv[i].key, strlen(w->kv[i].key));
        bb_put(&h, w->kv[i].val.p, w->kv[i].val.len);
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        bb_str(&h, t->name, strlen(t->name));
        bb_le(&h, (uint64_t)t->n_dims, 4);
        for (int d = 0; d < t->n_dims; d++) bb_le(&h, (uint64_t)t->ne[d], 8);
        bb_le(&h, (uint64_t)t->type, 4);
        bb_le(&h, off, 8);
        off += (t->nbytes + align - 1) / align * align;
    }
    if (h.oom) {
        free(h.p);
        return peri_fail(PERI_E_NOMEM, "writing '%s': out of memory", path);
    }
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(h.p);
        return peri_fail(PERI_E_IO, "cannot create '%s'", path);
    }
    bool ok = fwrite(h.p, 1, h.len, fp) == h.len;
    // ggml pads the header to the alignment only when there is data to follow.
    if (ok && w->n_t) ok = write_zeros(fp, (align - h.len % align) % align);
    for (int i = 0; ok && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        if (t->nbytes) ok = fwrite(t->data, 1, t->nbytes, fp) == t->nbytes;
        if (ok) ok = write_zeros(fp, (align - t->nbytes % align) % align);
    }
    if (fclose(fp) != 0) ok = false;
    free(h.p);
    if (!ok) {
        remove(path);
        return peri_fail(PERI_E_IO, "cannot write '%s' (disk full?)", path);
    }
    return PERI_OK;
}
