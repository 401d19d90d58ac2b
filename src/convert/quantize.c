// GGUF re-quantization with llama-quantize's per-tensor type rules (llama_tensor_get_type, no imatrix).
#include "convert/convert.h"

#include "core/error.h"
#include "formats/gguf.h"
#include "tensor/types.h"

#include <ctype.h>
#include <strings.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// llama_ftype ids (llama.h).
enum {
    FT_F32 = 0, FT_F16 = 1, FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9, FT_Q2_K = 10,
    FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14, FT_Q4_K_M = 15, FT_Q5_K_S = 16,
    FT_Q5_K_M = 17, FT_Q6_K = 18, FT_BF16 = 32,
};

static const struct peri_ftype_info g_ftypes[] = {
    {"f32", FT_F32, PERI_TYPE_F32},        {"f16", FT_F16, PERI_TYPE_F16},        {"bf16", FT_BF16, PERI_TYPE_BF16},
    {"q8_0", FT_Q8_0, PERI_TYPE_Q8_0},     {"q4_0", FT_Q4_0, PERI_TYPE_Q4_0},     {"q4_1", FT_Q4_1, PERI_TYPE_Q4_1},
    {"q5_0", FT_Q5_0, PERI_TYPE_Q5_0},     {"q5_1", FT_Q5_1, PERI_TYPE_Q5_1},     {"q2_k", FT_Q2_K, PERI_TYPE_Q2_K},
    {"q3_k_s", FT_Q3_K_S, PERI_TYPE_Q3_K}, {"q3_k_m", FT_Q3_K_M, PERI_TYPE_Q3_K}, {"q3_k_l", FT_Q3_K_L, PERI_TYPE_Q3_K},
    {"q4_k_s", FT_Q4_K_S, PERI_TYPE_Q4_K}, {"q4_k_m", FT_Q4_K_M, PERI_TYPE_Q4_K}, {"q5_k_s", FT_Q5_K_S, PERI_TYPE_Q5_K},
    {"q5_k_m", FT_Q5_K_M, PERI_TYPE_Q5_K}, {"q6_k", FT_Q6_K, PERI_TYPE_Q6_K},
};
#define N_FTYPES (int)(sizeof g_ftypes / sizeof g_ftypes[0])

const char *peri_ftype_names(void) {
    return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, "
           "q5_k_m, q6_k";
}

const struct peri_ftype_info *peri_ftype_lookup(const char *name) {
    if (name) {
        for (int i = 0; i < N_FTYPES; i++) {
            const char *a = g_ftypes[i].name, *b = name;
            while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) a++, b++;
            if (!*a && !*b) return &g_ftypes[i];
        }
        // llama-quantize also accepts the bare K names for the _M mixes' siblings: Q4_K = Q4_K_M, Q5_K = Q5_K_M.
        if (!strcasecmp(name, "q4_k")) return peri_ftype_lookup("q4_k_m");
        if (!strcasecmp(name, "q5_k")) return peri_ftype_lookup("q5_k_m");
        if (!strcasecmp(name, "q3_k")) return peri_ftype_lookup("q3_k_m");
    }
    peri_fail(PERI_E_ARG, "unknown type '%s'; use one of: %s", name ? name : "(null)", peri_ftype_names());
    return NULL;
}

static bool contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }
static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !memcmp(s + a - b, suf, b);
}

typedef struct qstate {
    int ftype;
    bool has_output;
    int n_attention_wv, i_attention_wv;
    int n_ffn_down, i_ffn_down;
    int64_t n_head, n_head_kv;
    int n_fallback;
    peri_convert_log_fn log;
    void *log_user;
} qstate;

static void qlog(const qstate *qs, const char *fmt, ...) {
    if (!qs->log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    qs->log(line, qs->log_user);
}

static bool use_more_bits(int i_layer, int n_layers) {
    return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

// ggml_n_dims: the index of the last dimension > 1, plus one.
static int ggml_n_dims(const peri_tensor *t) {
    for (int i = 0; i < t->n_dims; i++)   // shape is row-major: shape[0] is ne[n_dims - 1]
        if (t->shape[i] > 1) return t->n_dims - i;
    return 1;
}

// llama_tensor_get_type for the mixes peri writes (no MoE, no Falcon, no IQ types, no imatrix).
// Returns the type, or -1 (error set) when no fallback exists.
static int tensor_get_type(qstate *qs, int new_type, const peri_tensor *t) {
    const char *name = t->name;
    const int ft = qs->ftype;
    const int64_t nx = t->shape[t->n_dims - 1];
    if (!strcmp(name, "output.weight") || (!qs->has_output && !strcmp(name, "token_embd.weight"))) {
        int64_t qk = peri_type_traits(new_type)->blck_size;
        if (nx % qk != 0) new_type = PERI_TYPE_Q8_0;
        else if (new_type != PERI_TYPE_Q8_0) new_type = PERI_TYPE_Q6_K;
    } else if (!strcmp(name, "token_embd.weight")) {
        // only IQ/TQ mixes change it
    } else if (contains(name, "attn_v.weight")) {
        int64_t n_gqa = qs->n_head_kv > 0 ? qs->n_head / qs->n_head_kv : 1;
        if (ft == FT_Q2_K) new_type = n_gqa >= 4 ? PERI_TYPE_Q4_K : PERI_TYPE_Q3_K;
        else if (ft == FT_Q3_K_M) new_type = qs->i_attention_wv < 2 ? PERI_TYPE_Q5_K : PERI_TYPE_Q4_K;
        else if (ft == FT_Q3_K_L) new_type = PERI_TYPE_Q5_K;
        else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && use_more_bits(qs->i_attention_wv, qs->n_attention_wv))
            new_type = PERI_TYPE_Q6_K;
        else if (ft == FT_Q4_K_S && qs->i_attention_wv < 4) new_type = PERI_TYPE_Q5_K;
        ++qs->i_attention_wv;
    } else if (contains(name, "attn_k.weight") || contains(name, "attn_q.weight")) {
        // only IQ mixes change these
    } else if (contains(name, "ffn_down")) {
        int i_layer = qs->i_ffn_down, n_layer = qs->n_ffn_down;
        if (ft == FT_Q2_K) new_type = PERI_TYPE_Q3_K;
        else if (ft == FT_Q3_K_M)
            new_type = i_layer < n_layer / 16 ? PERI_TYPE_Q5_K : PERI_TYPE_Q4_K;   // non-Falcon
        else if (ft == FT_Q3_K_L) new_type = PERI_TYPE_Q5_K;
        else if (ft == FT_Q4_K_M) {
            if (use_more_bits(i_layer, n_layer)) new_type = PERI_TYPE_Q6_K;
        } else if (ft == FT_Q5_K_M && use_more_bits(i_layer, n_layer)) new_type = PERI_TYPE_Q6_K;
        else if (ft == FT_Q4_K_S && i_layer < n_layer / 8) new_type = PERI_TYPE_Q5_K;
        ++qs->i_ffn_down;
    } else if (contains(name, "attn_output.weight")) {
        if (ft == FT_Q2_K) new_type = PERI_TYPE_Q3_K;
        else if (ft == FT_Q3_K_M) new_type = PERI_TYPE_Q4_K;
        else if (ft == FT_Q3_K_L) new_type = PERI_TYPE_Q5_K;
    } else if (contains(name, "attn_qkv.weight")) {
        if (ft == FT_Q3_K_M || ft == FT_Q3_K_L) new_type = PERI_TYPE_Q4_K;
        else if (ft == FT_Q4_K_M) new_type = PERI_TYPE_Q5_K;
        else if (ft == FT_Q5_K_M) new_type = PERI_TYPE_Q6_K;
    }
    int64_t qk = peri_type_traits(new_type)->blck_size;
    if (nx % qk != 0) {
        int fb;
        switch (new_type) {
        case PERI_TYPE_Q4_K: fb = PERI_TYPE_Q5_0; break;
        case PERI_TYPE_Q5_K: fb = PERI_TYPE_Q5_1; break;
        case PERI_TYPE_Q6_K: fb = PERI_TYPE_Q8_0; break;
        case PERI_TYPE_Q2_K:
        case PERI_TYPE_Q3_K:
            return peri_fail(PERI_E_UNSUPPORTED, "tensor '%s': rows of %lld are not a multiple of 256; llama-quantize "
                             "would fall back to iq4_nl, which peri cannot write yet", name, (long long)nx);
        default:
            return peri_fail(PERI_E_UNSUPPORTED, "tensor '%s': rows of %lld values cannot be quantized to %s "
                             "(block size %lld)", name, (long long)nx, peri_type_name(new_type), (long long)qk);
        }
        if (nx % peri_type_traits(fb)->blck_size != 0) fb = PERI_TYPE_F16;
        qlog(qs, "tensor cols %lld x %lld are not divisible by %lld, required for %s - using fallback quantization %s",
             (long long)nx, (long long)(peri_tensor_nelem(t) / nx), (long long)qk, peri_type_name(new_type),
             peri_type_name(fb));
        new_type = fb;
        qs->n_fallback++;
    }
    return new_type;
}

static int layer_of(const char *name) {
    int l = -1;
    if (sscanf(name, "blk.%d.", &l) != 1) l = -1;
    return l;
}

// llama.cpp's weight_name_comparer: by layer number (non-block tensors first), then by name.
static int cmp_tensor(const void *a, const void *b) {
    const peri_tensor *x = *(const peri_tensor *const *)a, *y = *(const peri_tensor *const *)b;
    int la = layer_of(x->name), lb = layer_of(y->name);
    if (la != lb) return la < lb ? -1 : 1;
    return strcmp(x->name, y->name);
}

static bool key_is(const gguf_kv *kv, const char *k) {
    size_t n = strlen(k);
    return kv->key.len == n && !memcmp(kv->key.s, k, n);
}

static int arch_key_i64(const peri_gguf *g, const char *arch, const char *suffix, int64_t def, int64_t *out) {
    char k[256];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    *out = def;
    if (peri_gguf_get(g, k) && !peri_gguf_get_i64(g, k, out))
        return peri_fail(PERI_E_FORMAT, "GGUF key '%s' is not an integer", k);
    return PERI_OK;
}

// Converts a tensor of any supported type to float32 (malloc'd).
static float *to_f32(const peri_tensor *t) {
    const struct peri_type_traits *tr = peri_type_traits(t->type);
    int64_t n = peri_tensor_nelem(t);
    if (!tr || !tr->to_float) {
        peri_fail(PERI_E_UNSUPPORTED, "tensor '%s' of type %s cannot be converted to float", t->name,
                  peri_type_name(t->type));
        return NULL;
    }
    int64_t nx = t->shape[t->n_dims - 1];
    float *f = malloc((size_t)n * sizeof *f);
    if (!f) {
        peri_fail(PERI_E_NOMEM, "out of memory converting tensor '%s'", t->name);
        return NULL;
    }
    size_t rs = peri_row_size(t->type, nx);
    for (int64_t r = 0; r < n / nx; r++) tr->to_float((const char *)t->data + (size_t)r * rs, f + r * nx, nx);
    return f;
}

int peri_quantize_gguf(const char *in_path, const char *out_path, const char *type_name, peri_convert_log_fn log,
                       void *log_user) {
    const struct peri_ftype_info *fi = peri_ftype_lookup(type_name);
    if (!fi) return PERI_E_ARG;
    peri_gguf g;
    int rc = peri_gguf_open(&g, in_path, true);
    if (rc) return rc;
    peri_gguf_writer *w = peri_gguf_writer_new();
    const peri_tensor **order = calloc((size_t)g.n_tensors + 1, sizeof *order);
    void **owned = calloc((size_t)g.n_tensors + 1, sizeof *owned);
    if (!w || !order || !owned) {
        rc = peri_fail(PERI_E_NOMEM, "out of memory");
        goto done;
    }
    qstate qs = {.ftype = fi->ftype, .log = log, .log_user = log_user};
    gguf_str arch_s = {0};
    char arch[64] = "";
    if (peri_gguf_get_str(&g, "general.architecture", &arch_s) && arch_s.len < sizeof arch)
        memcpy(arch, arch_s.s, (size_t)arch_s.len), arch[arch_s.len] = 0;
    int64_t n_layer;
    if ((rc = arch_key_i64(&g, arch, "block_count", 0, &n_layer))) goto done;
    if ((rc = arch_key_i64(&g, arch, "attention.head_count", 1, &qs.n_head))) goto done;
    if ((rc = arch_key_i64(&g, arch, "attention.head_count_kv", qs.n_head, &qs.n_head_kv))) goto done;
    qs.n_ffn_down = (int)n_layer;
    for (int i = 0; i < g.n_tensors; i++) {
        const char *n = g.tensors[i].name;
        if (contains(n, "attn_v.weight") || contains(n, "attn_qkv.weight") || contains(n, "attn_kv_b.weight"))
            qs.n_attention_wv++;
        else if (!strcmp(n, "output.weight")) qs.has_output = true;
        order[i] = &g.tensors[i];
    }
    qsort(order, (size_t)g.n_tensors, sizeof *order, cmp_tensor);

    for (uint64_t i = 0; i < g.n_kv; i++) {
        const gguf_kv *kv = &g.kv[i];
        if (key_is(kv, "general.quantization_version") || key_is(kv, "general.file_type") ||
            key_is(kv, "split.no") || key_is(kv, "split.count") || key_is(kv, "split.tensors.count"))
            continue;
        if ((rc = peri_gguf_set_kv_from(w, kv))) goto done;
    }
    if ((rc = peri_gguf_set_u32(w, "general.quantization_version", 2))) goto done;
    if ((rc = peri_gguf_set_u32(w, "general.file_type", (uint32_t)fi->ftype))) goto done;

    const bool quantized_base = fi->base_type != PERI_TYPE_F32 && fi->base_type != PERI_TYPE_F16 &&
                                fi->base_type != PERI_TYPE_BF16;
    for (int i = 0; i < g.n_tensors; i++) {
        const peri_tensor *t = order[i];
        const char *name = t->name;
        bool quantize = ends_with(name, "weight") && ggml_n_dims(t) >= 2 && !contains(name, "_norm.weight") &&
                        !contains(name, "ffn_gate_inp.weight") && strcmp(name, "position_embd.weight") != 0 &&
                        strcmp(name, "token_types.weight") != 0 && !contains(name, "attn_rel_b.weight");
        int new_type = t->type;
        if (quantize) {
            new_type = fi->base_type;
            if (quantized_base) {
                new_type = tensor_get_type(&qs, new_type, t);
                if (new_type < 0) {
                    rc = new_type;
                    goto done;
                }
            }
            quantize = t->type != new_type;
        }
        if (!quantize) {
            new_type = t->type;
            if ((rc = peri_gguf_add_tensor(w, name, t->type, t->n_dims, t->shape, t->data, t->nbytes))) goto done;
        } else {
            const struct peri_type_traits *tr = peri_type_traits(new_type);
            if (!tr || !tr->from_float) {
                rc = peri_fail(PERI_E_UNSUPPORTED, "tensor '%s': peri cannot quantize to %s", name, peri_type_name(new_type));
                goto done;
            }
            float *f = to_f32(t);
            if (!f) {
                rc = PERI_E_NOMEM;
                goto done;
            }
            int64_t nx = t->shape[t->n_dims - 1], rows = peri_tensor_nelem(t) / nx;
            size_t rs = peri_row_size(new_type, nx);
            unsigned char *q = malloc(rs * (size_t)rows + 1);
            if (!q) {
                free(f);
                rc = peri_fail(PERI_E_NOMEM, "out of memory quantizing '%s'", name);
                goto done;
            }
            // Row by row, as ggml_quantize_chunk: every quantizer here is per row and deterministic.
            for (int64_t r = 0; r < rows; r++) tr->from_float(f + r * nx, q + (size_t)r * rs, nx);
            free(f);
            owned[i] = q;
            if ((rc = peri_gguf_add_tensor(w, name, new_type, t->n_dims, t->shape, q, rs * (size_t)rows))) goto done;
        }
        qlog(&qs, "[%3d/%3d] %-36s %-6s -> %s", i + 1, g.n_tensors, name, peri_type_name(t->type),
             peri_type_name(new_type));
    }
    if (qs.n_fallback) qlog(&qs, "%d tensor(s) required fallback quantization", qs.n_fallback);
    rc = peri_gguf_write(w, out_path);
done:
    if (owned)
        for (int i = 0; i < g.n_tensors; i++) free(owned[i]);
    free(owned);
    free(order);
    peri_gguf_writer_free(w);
    peri_gguf_close(&g);
    return rc;
}
