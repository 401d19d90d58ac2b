// Model loading: open the files, pick the architecture, let it bind its weights; plus the generic
// accessors of the public API.
#include "runtime/model.h"

#include "core/error.h"
#include "kernels/ops.h"
#include "tensor/repack.h"
#include "tokenizers/tokenizer.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

// Every architecture peri runs. Order matters only if two could match the same files.
static const struct peri_arch_ops *const g_archs[] = {
    &peri_arch_pldr,
    &peri_arch_plm,
};

void peri_sb_printf(peri_strbuf *sb, const char *fmt, ...) {
    if (sb->oom) return;
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) { va_end(ap2); return; }
    if (sb->len + (size_t)n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 1024;
        while (cap < sb->len + (size_t)n + 1) cap *= 2;
        char *s = realloc(sb->s, cap);
        if (!s) { sb->oom = 1; va_end(ap2); return; }
        sb->s = s;
        sb->cap = cap;
    }
    vsnprintf(sb->s + sb->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    sb->len += (size_t)n;
}

struct peri_model_params peri_model_default_params(void) {
    return (struct peri_model_params){.n_threads = 0, .use_mmap = true, .use_repack = true};
}

void *peri_model_alloc(peri_model *m, size_t bytes) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **o = realloc(m->owned, sizeof(void *) * (size_t)cap);
        if (!o) { peri_fail(PERI_E_NOMEM, "out of memory"); return NULL; }
        m->owned = o;
        m->cap_owned = cap;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) { peri_fail(PERI_E_NOMEM, "out of memory allocating %zu bytes", bytes); return NULL; }
    m->owned[m->n_owned++] = p;
#if defined(MADV_HUGEPAGE)
    // Large buffers (weights rearranged at load) on 2 MB pages where the kernel allows them: the kernels read them by
    // scattered rows (PLM's sparse down projection), and with 4 KB pages nearly every row was a TLB miss. Only the
    // whole 2 MB pages inside the buffer are advised (no memory beyond it); advice, so a failure changes nothing.
    const uintptr_t huge = (uintptr_t)2 << 20, lo = ((uintptr_t)p + huge - 1) & ~(huge - 1),
                    hi = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#endif
    return p;
}

float *peri_model_f32_copy(peri_model *m, const peri_tensor *t) {
    const struct peri_type_traits *tr = peri_type_traits(t->type);
    if (!tr || !tr->to_float) {
        peri_fail(PERI_E_UNSUPPORTED, "tensor '%s' has type %s, which peri cannot read as numbers", t->name,
                  peri_type_name(t->type));
        return NULL;
    }
    int64_t n = peri_tensor_nelem(t);
    float *f = peri_model_alloc(m, sizeof(float) * (size_t)n);
    if (!f) return NULL;
    int64_t K = t->n_dims ? t->shape[t->n_dims - 1] : 1;
    size_t rs = peri_row_size(t->type, K);
    for (int64_t r = 0; r < n / K; r++) tr->to_float((const char *)t->data + (size_t)r * rs, f + r * K, K);
    return f;
}

static void shape_str(char *buf, size_t size, int n_dims, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, size - o, "[");
    for (int i = 0; i < n_dims && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < size) snprintf(buf + o, size - o, "]");
}

int peri_model_get(peri_model *m, const char *name, int n_dims, const int64_t *shape, const peri_tensor **out) {
    const peri_tensor *t = peri_weights_find(&m->w, name);
    *out = NULL;
    if (!t)
        return peri_fail(PERI_E_FORMAT, "'%s': tensor '%s' is missing; the file is incomplete or is not a %s model",
                         m->w.path, name, m->ops->name);
    int same = t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], got[128];
        shape_str(want, sizeof want, n_dims, shape);
        shape_str(got, sizeof got, t->n_dims, t->shape);
        return peri_fail(PERI_E_FORMAT, "'%s': tensor '%s' has shape %s but the config implies %s; "
                         "config.json and the weights do not belong together", m->w.path, name, got, want);
    }
    const struct peri_type_traits *tr = peri_type_traits(t->type);
    if (!tr || !tr->supported)
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': tensor '%s' has type %s, which peri does not compute with; "
                         "supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K..q6_K",
                         m->w.path, name, peri_type_name(t->type));
    *out = t;
    return PERI_OK;
}

int peri_model_get_f32(peri_model *m, const char *name, int n_dims, const int64_t *shape, float **out) {
    const peri_tensor *t;
    int rc = peri_model_get(m, name, n_dims, shape, &t);
    if (rc) return rc;
    *out = peri_model_f32_copy(m, t);
    return *out ? PERI_OK : PERI_E_NOMEM;
}

// Load-time layouts (tensor/repack.h): each GGUF weight whose type has one that the current kernel level computes
// with is rewritten in place, before the architecture binds its weights. Row sizes do not change.
static int repack_weights(peri_model *m) {
    peri_gguf *g = m->w.gguf;
    if (!m->params.use_repack || !g) return PERI_OK;
    for (int i = 0; i < m->w.n_tensors; i++) {
        peri_tensor *t = (peri_tensor *)m->w.tensors[i]; // the GGUF's own tensor table
        if (t->n_dims < 2) continue;
        const int64_t K = t->shape[t->n_dims - 1], rows = peri_tensor_nelem(t) / K;
        const int nt = peri_repack_type(t->type, K);
        if (nt < 0 || !peri_kernels_has_mm(nt)) continue;
        const size_t off = (size_t)((const unsigned char *)t->data - g->file.data);
        int rc = peri_mapfile_writable(&g->file, off, t->nbytes);
        if (!rc) rc = peri_repack_rows(t->type, (void *)t->data, K, rows);
        if (rc) return peri_fail_prefix(rc, "repacking '%s': ", t->name);
        t->type = nt;
    }
    return PERI_OK;
}

int peri_model_load(const char *path, struct peri_model_params params, peri_model **out) {
    *out = NULL;
    if (!path || !*path) return peri_fail(PERI_E_ARG, "no model path given");
    if (params.sparse_down < PERI_SPARSE_DOWN_AUTO || params.sparse_down > PERI_SPARSE_DOWN_OFF)
        return peri_fail(PERI_E_ARG, "peri_model_params.sparse_down is %d: use PERI_SPARSE_DOWN_AUTO, _ON or _OFF",
                         (int)params.sparse_down);
    peri_model *m = calloc(1, sizeof *m);
    if (!m) return peri_fail(PERI_E_NOMEM, "out of memory");
    m->params = params;
    m->bos = m->eos = m->pad = -1;
    int rc = peri_weights_open(&m->w, path, params.use_mmap);
    if (rc) { free(m); return rc; }
    for (size_t i = 0; i < sizeof g_archs / sizeof g_archs[0]; i++)
        if (g_archs[i]->match(&m->w)) { m->ops = g_archs[i]; break; }
    if (!m->ops) {
        peri_weights_close(&m->w);
        free(m);
        return peri_fail(PERI_E_UNSUPPORTED, "'%s': not a model peri knows: its config's model_type (or GGUF "
                         "general.architecture) must be 'pldrllm' or 'plm'", path);
    }
    rc = repack_weights(m);
    if (!rc) rc = peri_heads_detect(m);
    if (!rc) rc = m->ops->load(m);
    if (!rc) rc = peri_heads_bind(m);
    if (rc) {
        peri_fail_prefix(rc, "loading %s model '%s': ", m->ops->name, path);
        peri_model_free(m);
        return rc;
    }
    // The tokenizer is optional for the model itself (ids in, logits out).
    // (a GGUF without tokenizer.ggml.model carries no tokenizer, like a folder without tokenizer files)
    if (m->w.gguf) rc = peri_gguf_get(m->w.gguf, "tokenizer.ggml.model") ? peri_tokenizer_from_gguf(m->w.gguf, &m->tok) : 1;
    else rc = m->w.dir ? peri_tokenizer_load_dir(m->w.dir, &m->tok) : 1;
    if (rc < 0) {
        peri_fail_prefix(rc, "loading the tokenizer of '%s': ", path);
        peri_model_free(m);
        return rc;
    }
    if (m->ops->prepare && (rc = m->ops->prepare(m))) {
        peri_fail_prefix(rc, "preparing %s model '%s': ", m->ops->name, path);
        peri_model_free(m);
        return rc;
    }
    *out = m;
    return PERI_OK;
}

void peri_model_free(peri_model *m) {
    if (!m) return;
    if (m->ops && m->ops->free) m->ops->free(m);
    if (m->tok) peri_tokenizer_free(m->tok);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    peri_weights_close(&m->w);
    free(m);
}

const char *peri_model_arch(const peri_model *m) { return m->ops->name; }
int32_t peri_model_n_vocab(const peri_model *m) { return m->n_vocab; }
int32_t peri_model_n_embd(const peri_model *m) { return m->n_embd; }
int32_t peri_model_n_layer(const peri_model *m) { return m->n_layer; }
int32_t peri_model_n_ctx_train(const peri_model *m) { return m->n_ctx_train; }
peri_token peri_model_eos(const peri_model *m) { return m->eos; }
peri_token peri_model_bos(const peri_model *m) { return m->bos; }
peri_token peri_model_pad(const peri_model *m) { return m->pad; }
const peri_tokenizer *peri_model_tokenizer(const peri_model *m) { return m->tok; }

int64_t peri_model_decode_bytes(const peri_model *m) {
    if (m->ops->decode_bytes) return m->ops->decode_bytes(m);
    int64_t n = 0;
    for (int i = 0; i < m->w.n_tensors; i++) n += (int64_t)m->w.tensors[i]->nbytes;
    return n;
}

static void describe_gguf_value(peri_strbuf *sb, const gguf_value *v) {
    switch (v->type) {
    case GGUF_UINT8: case GGUF_UINT16: case GGUF_UINT32: case GGUF_UINT64:
        peri_sb_printf(sb, "%llu", (unsigned long long)v->v.u64); break;
    case GGUF_INT8: case GGUF_INT16: case GGUF_INT32: case GGUF_INT64:
        peri_sb_printf(sb, "%lld", (long long)v->v.i64); break;
    case GGUF_FLOAT32: case GGUF_FLOAT64: peri_sb_printf(sb, "%g", v->v.f64); break;
    case GGUF_BOOL: peri_sb_printf(sb, "%s", v->v.b ? "true" : "false"); break;
    case GGUF_STRING: {
        uint64_t n = v->v.str.len;
        int cut = n > 120;
        peri_sb_printf(sb, "\"");
        for (uint64_t i = 0; i < (cut ? 120 : n); i++) {
            char c = v->v.str.s[i];
            if (c == '\n') peri_sb_printf(sb, "\\n");
            else peri_sb_printf(sb, "%c", c);
        }
        peri_sb_printf(sb, "\"%s", cut ? "..." : "");
        break;
    }
    case GGUF_ARRAY: peri_sb_printf(sb, "[array of %llu]", (unsigned long long)v->v.arr.n); break;
    default: peri_sb_printf(sb, "?");
    }
}

int64_t peri_model_describe(const peri_model *m, char *buf, size_t size) {
    peri_strbuf sb = {0};
    peri_sb_printf(&sb, "architecture: %s\n", m->ops->name);
    peri_sb_printf(&sb, "path: %s\n", m->w.path);
    peri_sb_printf(&sb, "files: %.1f MiB in %s\n", (double)m->w.total_bytes / (1 << 20),
                   m->w.gguf ? "1 GGUF file" : (m->w.n_shards > 1 ? "sharded safetensors" : "safetensors"));
    peri_sb_printf(&sb, "vocab %d, embedding %d, layers %d, context %d, bos %d, eos %d, pad %d\n", m->n_vocab,
                   m->n_embd, m->n_layer, m->n_ctx_train, m->bos, m->eos, m->pad);
    if (m->ops->describe) m->ops->describe(m, &sb);
    peri_sb_printf(&sb, "tokenizer: %s\n", m->tok ? "yes" : "none found");
    if (m->w.gguf) {
        peri_sb_printf(&sb, "gguf version %u, %llu metadata keys:\n", m->w.gguf->version,
                       (unsigned long long)m->w.gguf->n_kv);
        for (uint64_t i = 0; i < m->w.gguf->n_kv; i++) {
            const gguf_kv *kv = &m->w.gguf->kv[i];
            peri_sb_printf(&sb, "  %.*s = ", (int)kv->key.len, kv->key.s);
            describe_gguf_value(&sb, &kv->value);
            peri_sb_printf(&sb, "\n");
        }
    }
    peri_sb_printf(&sb, "%d tensors:\n", m->w.n_tensors);
    for (int i = 0; i < m->w.n_tensors; i++) {
        const peri_tensor *t = m->w.tensors[i];
        char sh[128];
        shape_str(sh, sizeof sh, t->n_dims, t->shape);
        peri_sb_printf(&sb, "  %-60s %-6s %s\n", t->name, peri_type_name(t->type), sh);
    }
    if (sb.oom) { free(sb.s); return peri_fail(PERI_E_NOMEM, "out of memory describing the model"); }
    int64_t need = (int64_t)sb.len + 1;
    if (!buf || size < (size_t)need) { free(sb.s); return -need; }
    memcpy(buf, sb.s, sb.len + 1);
    free(sb.s);
    return (int64_t)sb.len;
}

const char *peri_version(void) { return "0.1.0"; }

const char *peri_system_info(void) { return peri_kernels_info(); }
