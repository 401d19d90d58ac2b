// safetensors reader (validating every header field against the buffer) and writer.
#include "formats/safetensors.h"

#include "core/error.h"
#include "formats/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER (100u * 1024 * 1024)

// dtype names, peri types, item sizes, and the rank of the dtype in the safetensors crate's Dtype enum
// (its writer orders tensors by that rank, descending, then by name; we write the same order).
static const struct st_dtype {
    const char *name;
    int type;
    size_t size;
    int rank;
} g_dtypes[] = {
    {"F32", PERI_TYPE_F32, 4, 11}, {"F16", PERI_TYPE_F16, 2, 7},  {"BF16", PERI_TYPE_BF16, 2, 8},
    {"I32", PERI_TYPE_I32, 4, 9},  {"U8", PERI_TYPE_U8, 1, 1},    {"BOOL", PERI_TYPE_BOOL, 1, 0},
    {"F64", PERI_TYPE_F64, 8, 12}, {"I64", PERI_TYPE_I64, 8, 13}, {"I8", PERI_TYPE_I8, 1, 2},
    {"I16", PERI_TYPE_I16, 2, 5},
};
#define N_DTYPES (int)(sizeof g_dtypes / sizeof g_dtypes[0])

static const struct st_dtype *dtype_by_name(const char *s) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(g_dtypes[i].name, s) == 0) return &g_dtypes[i];
    return NULL;
}

static const struct st_dtype *dtype_by_type(int type) {
    for (int i = 0; i < N_DTYPES; i++)
        if (g_dtypes[i].type == type) return &g_dtypes[i];
    return NULL;
}

static const char *where_or(const char *where) { return where ? where : "safetensors buffer"; }

void peri_safetensors_close(peri_safetensors *st) {
    if (!st) return;
    if (st->tensors) {
        for (int i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
        free(st->tensors);
    }
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    free(st->sorted);
    peri_mapfile_close(&st->file);
    memset(st, 0, sizeof *st);
}

static int cmp_by_offset(const void *a, const void *b) {
    const peri_tensor *x = *(const peri_tensor *const *)a, *y = *(const peri_tensor *const *)b;
    const unsigned char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py ? 1 : 0;
}

static int cmp_index_by_name(const void *a, const void *b, void *ctx) {
    const peri_tensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

// A JSON number that is a non-negative integer within uint64 (safetensors writes them as plain digits).
static bool json_u64(const json_value *v, uint64_t *out) {
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->integer < 0) return false;
    *out = (uint64_t)v->integer;
    return true;
}

static int parse_entry(peri_safetensors *st, const char *w, const char *name, const json_value *e,
                       const unsigned char *data, uint64_t data_size, peri_tensor *t) {
    if (e->type != JSON_OBJECT)
        return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': header entry is not an object", w, name);
    const json_value *dt = json_get(e, "dtype"), *shape = json_get(e, "shape"), *offs = json_get(e, "data_offsets");
    if (!dt || dt->type != JSON_STRING)
        return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", w, name);
    if (!shape || shape->type != JSON_ARRAY)
        return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", w, name);
    if (!offs || offs->type != JSON_ARRAY || offs->len != 2)
        return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': \"data_offsets\" must be an array [begin, end]", w, name);
    const struct st_dtype *d = dtype_by_name(dt->str);
    if (!d)
        return peri_fail(PERI_E_UNSUPPORTED,
                         "%s: tensor '%s' has dtype %s, which peri does not read (supported: F32, F16, BF16, "
                         "F64, I64, I32, I16, I8, U8, BOOL); convert the model to F32, F16 or BF16",
                         w, name, dt->str);
    if (shape->len > PERI_MAX_DIMS)
        return peri_fail(PERI_E_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions, more than the %d peri supports",
                         w, name, shape->len, PERI_MAX_DIMS);
    uint64_t nelem = 1;
    bool overflow = false;
    t->n_dims = (int)shape->len;
    for (size_t i = 0; i < shape->len; i++) {
        uint64_t dim;
        if (!json_u64(&shape->items[i], &dim))
            return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", w, name, i);
        t->shape[i] = (int64_t)dim;
        if (dim && nelem > UINT64_MAX / dim) overflow = true;
        else nelem *= dim;
    }
    uint64_t begin, end;
    if (!json_u64(&offs->items[0], &begin) || !json_u64(&offs->items[1], &end))
        return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': data_offsets are not non-negative integers", w, name);
    if (begin > end)
        return peri_fail(PERI_E_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", w, name,
                         (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return peri_fail(PERI_E_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] reach past the data section (%llu bytes); "
                         "the file is truncated or corrupt", w, name, (unsigned long long)begin,
                         (unsigned long long)end, (unsigned long long)data_size);
    if (overflow || nelem > UINT64_MAX / d->size || nelem * d->size != end - begin)
        return peri_fail(PERI_E_FORMAT,
                         "%s: tensor '%s': shape x %s size does not equal its %llu bytes of data_offsets", w, name,
                         d->name, (unsigned long long)(end - begin));
    t->type = d->type;
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    (void)st;
    return PERI_OK;
}

int peri_safetensors_parse(peri_safetensors *st, const unsigned char *data, size_t size, const char *where) {
    memset(st, 0, sizeof *st);
    const char *w = where_or(where);
    if (size < 8)
        return peri_fail(PERI_E_FORMAT, "%s: %zu bytes is too short for a safetensors file (8-byte header length)", w, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | data[i];
    if (n < 2 || n > ST_MAX_HEADER || n > size - 8)
        return peri_fail(PERI_E_FORMAT,
                         "%s: header length %llu is invalid (must be 2..%u and fit in the %zu-byte file); "
                         "this is not a safetensors file or it is truncated",
                         w, (unsigned long long)n, ST_MAX_HEADER, size);
    char hw[1024];
    snprintf(hw, sizeof hw, "%s (safetensors header)", w);
    json_value *h = json_parse((const char *)data + 8, (size_t)n, hw);
    if (!h) return PERI_E_FORMAT;
    int rc = PERI_OK;
    if (h->type != JSON_OBJECT) {
        rc = peri_fail(PERI_E_FORMAT, "%s: the safetensors header is not a JSON object", w);
        goto done;
    }
    size_t n_t = 0;
    for (size_t i = 0; i < h->len; i++)
        if (strcmp(h->keys[i], "__metadata__") != 0) n_t++;
    if (n_t > (size_t)INT32_MAX / 2) {
        rc = peri_fail(PERI_E_FORMAT, "%s: too many tensors", w);
        goto done;
    }
    st->tensors = calloc(n_t ? n_t : 1, sizeof *st->tensors);
    st->sorted = calloc(n_t ? n_t : 1, sizeof *st->sorted);
    if (!st->tensors || !st->sorted) {
        rc = peri_fail(PERI_E_NOMEM, "%s: out of memory for %zu tensors", w, n_t);
        goto done;
    }
    const unsigned char *base = data + 8 + n;
    uint64_t data_size = size - 8 - n;
    bool seen_meta = false;
    for (size_t i = 0; i < h->len; i++) {
        const char *key = h->keys[i];
        const json_value *e = &h->items[i];
        if (strcmp(key, "__metadata__") == 0) {
            if (seen_meta) {
                rc = peri_fail(PERI_E_FORMAT, "%s: \"__metadata__\" appears twice", w);
                goto done;
            }
            seen_meta = true;
            if (e->type != JSON_OBJECT) {
                rc = peri_fail(PERI_E_FORMAT, "%s: \"__metadata__\" must be an object of strings", w);
                goto done;
            }
            st->meta_keys = calloc(e->len ? e->len : 1, sizeof(char *));
            st->meta_values = calloc(e->len ? e->len : 1, sizeof(char *));
            if (!st->meta_keys || !st->meta_values) {
                rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", w);
                goto done;
            }
            for (size_t j = 0; j < e->len; j++) {
                if (e->items[j].type != JSON_STRING) {
                    rc = peri_fail(PERI_E_FORMAT, "%s: __metadata__ \"%s\" is not a string (metadata is string -> string)",
                                   w, e->keys[j]);
                    goto done;
                }
                st->meta_keys[j] = strdup(e->keys[j]);
                st->meta_values[j] = malloc(e->items[j].len + 1);
                st->n_meta = (int)j + 1;
                if (!st->meta_keys[j] || !st->meta_values[j]) {
                    rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", w);
                    goto done;
                }
                memcpy(st->meta_values[j], e->items[j].str, e->items[j].len + 1);
            }
            continue;
        }
        peri_tensor *t = &st->tensors[st->n_tensors];
        rc = parse_entry(st, w, key, e, base, data_size, t);
        if (rc) goto done;
        t->name = strdup(key);
        if (!t->name) {
            rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", w);
            goto done;
        }
        st->sorted[st->n_tensors] = st->n_tensors;
        st->n_tensors++;
    }
    // Names must be unique (JSON would silently keep the last), and byte ranges must not overlap.
    qsort_r(st->sorted, (size_t)st->n_tensors, sizeof *st->sorted, cmp_index_by_name, st->tensors);
    for (int i = 1; i < st->n_tensors; i++) {
        if (strcmp(st->tensors[st->sorted[i - 1]].name, st->tensors[st->sorted[i]].name) == 0) {
            rc = peri_fail(PERI_E_FORMAT, "%s: tensor '%s' appears twice in the header", w,
                           st->tensors[st->sorted[i]].name);
            goto done;
        }
    }
    if (st->n_tensors > 1) {
        const peri_tensor **by_off = malloc((size_t)st->n_tensors * sizeof *by_off);
        if (!by_off) {
            rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", w);
            goto done;
        }
        int m = 0;
        for (int i = 0; i < st->n_tensors; i++)
            if (st->tensors[i].nbytes) by_off[m++] = &st->tensors[i];
        qsort(by_off, (size_t)m, sizeof *by_off, cmp_by_offset);
        for (int i = 1; i < m; i++) {
            const unsigned char *prev_end = (const unsigned char *)by_off[i - 1]->data + by_off[i - 1]->nbytes;
            if ((const unsigned char *)by_off[i]->data < prev_end) {
                rc = peri_fail(PERI_E_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section", w,
                               by_off[i - 1]->name, by_off[i]->name);
                break;
            }
        }
        free(by_off);
    }
done:
    json_free(h);
    if (rc) peri_safetensors_close(st);
    return rc;
}

int peri_safetensors_open(peri_safetensors *st, const char *path, bool use_mmap) {
    memset(st, 0, sizeof *st);
    peri_mapfile f;
    int rc = peri_mapfile_open(&f, path, use_mmap);
    if (rc) return rc;
    rc = peri_safetensors_parse(st, f.data, f.size, path);
    if (rc) {
        peri_mapfile_close(&f);
        return rc;
    }
    st->file = f;
    return PERI_OK;
}

const peri_tensor *peri_safetensors_find(const peri_safetensors *st, const char *name) {
    if (!st || !name || !st->sorted) return NULL;
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const peri_tensor *t = &st->tensors[st->sorted[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

// ---- writer -----------------------------------------------------------------------------------------------

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) { b->oom = true; return; }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_str(sbuf *b, const char *s) {
    size_t n = json_escape(NULL, 0, s, strlen(s));
    char *tmp = malloc(n + 1);
    if (!tmp) { b->oom = true; return; }
    json_escape(tmp, n + 1, s, strlen(s));
    sb_put(b, tmp, n);
    free(tmp);
}

typedef struct {
    const peri_tensor *t;
    const struct st_dtype *d;
} wentry;

static int cmp_write_order(const void *a, const void *b) {
    const wentry *x = a, *y = b;
    if (x->d->rank != y->d->rank) return y->d->rank - x->d->rank;
    return strcmp(x->t->name, y->t->name);
}

int peri_safetensors_write(const char *path, const peri_tensor *tensors, int n, const char *const *meta_kv,
                           int n_meta_pairs) {
    if (n < 0 || n_meta_pairs < 0 || (n && !tensors) || (n_meta_pairs && !meta_kv))
        return peri_fail(PERI_E_ARG, "peri_safetensors_write('%s'): bad arguments", path);
    wentry *e = calloc(n ? (size_t)n : 1, sizeof *e);
    if (!e) return peri_fail(PERI_E_NOMEM, "out of memory writing '%s'", path);
    int rc = PERI_OK;
    for (int i = 0; i < n; i++) {
        const peri_tensor *t = &tensors[i];
        e[i].t = t;
        e[i].d = dtype_by_type(t->type);
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0) {
            rc = peri_fail(PERI_E_ARG, "writing '%s': tensor %d has no usable name", path, i);
            goto out;
        }
        if (!e[i].d) {
            rc = peri_fail(PERI_E_UNSUPPORTED, "writing '%s': tensor '%s' has type %s, which safetensors cannot hold",
                           path, t->name, peri_type_name(t->type));
            goto out;
        }
        if (t->n_dims < 0 || t->n_dims > PERI_MAX_DIMS) {
            rc = peri_fail(PERI_E_ARG, "writing '%s': tensor '%s' has %d dimensions", path, t->name, t->n_dims);
            goto out;
        }
        uint64_t nelem = 1;
        for (int k = 0; k < t->n_dims; k++) {
            if (t->shape[k] < 0 || (t->shape[k] && nelem > UINT64_MAX / (uint64_t)t->shape[k])) {
                rc = peri_fail(PERI_E_ARG, "writing '%s': tensor '%s' has a bad shape", path, t->name);
                goto out;
            }
            nelem *= (uint64_t)t->shape[k];
        }
        if (nelem > SIZE_MAX / e[i].d->size || nelem * e[i].d->size != t->nbytes || (t->nbytes && !t->data)) {
            rc = peri_fail(PERI_E_ARG, "writing '%s': tensor '%s': shape x %s size is not its %zu bytes", path,
                           t->name, e[i].d->name, t->nbytes);
            goto out;
        }
    }
    qsort(e, (size_t)n, sizeof *e, cmp_write_order);
    for (int i = 1; i < n; i++)
        if (strcmp(e[i - 1].t->name, e[i].t->name) == 0) {
            rc = peri_fail(PERI_E_ARG, "writing '%s': tensor '%s' is given twice", path, e[i].t->name);
            goto out;
        }

    sbuf h = {0};
    char num[64];
    sb_str(&h, "{");
    bool first = true;
    // __metadata__ goes first, with the pairs in the given order, as the safetensors crate writes it.
    if (n_meta_pairs) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta_pairs; i++) {
            if (i) sb_str(&h, ",");
            sb_json_str(&h, meta_kv[2 * i] ? meta_kv[2 * i] : "");
            sb_str(&h, ":");
            sb_json_str(&h, meta_kv[2 * i + 1] ? meta_kv[2 * i + 1] : "");
        }
        sb_str(&h, "}");
        first = false;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const peri_tensor *t = e[i].t;
        if (!first) sb_str(&h, ",");
        first = false;
        sb_json_str(&h, t->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, e[i].d->name);
        sb_str(&h, "\",\"shape\":[");
        for (int k = 0; k < t->n_dims; k++) {
            snprintf(num, sizeof num, "%s%lld", k ? "," : "", (long long)t->shape[k]);
            sb_str(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + t->nbytes));
        sb_str(&h, num);
        off += t->nbytes;
    }
    sb_str(&h, "}");
    // Pad with spaces so the data section starts 8-aligned (as the safetensors crate does).
    while (!h.oom && h.len % 8) sb_str(&h, " ");
    if (h.oom) {
        free(h.buf);
        rc = peri_fail(PERI_E_NOMEM, "out of memory writing '%s'", path);
        goto out;
    }
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(h.buf);
        rc = peri_fail(PERI_E_IO, "cannot create '%s'", path);
        goto out;
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    bool ok = fwrite(lenb, 1, 8, fp) == 8 && fwrite(h.buf, 1, h.len, fp) == h.len;
    for (int i = 0; ok && i < n; i++)
        if (e[i].t->nbytes) ok = fwrite(e[i].t->data, 1, e[i].t->nbytes, fp) == e[i].t->nbytes;
    if (fclose(fp) != 0) ok = false;
    free(h.buf);
    if (!ok) {
        remove(path);
        rc = peri_fail(PERI_E_IO, "cannot write '%s' (disk full?)", path);
    }
out:
    free(e);
    return rc;
}
