// Hugging Face folder -> GGUF: PLM exactly as llama.cpp's convert_hf_to_gguf.py writes it (keys, order,
// metadata heuristics, _set_vocab_gpt2 + SpecialVocab), PLDR-LLM in peri's `pldrllm` layout (docs/gguf-pldrllm.md).
#include "convert/convert.h"

#include "core/error.h"
#include "core/mapfile.h"
#include "formats/gguf.h"
#include "formats/json.h"
#include "formats/weights.h"
#include "tensor/types.h"
#include "tokenizers/tokenizer.h"

#include <ctype.h>
#include <limits.h>
#include <strings.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---- small helpers ---------------------------------------------------------------------------------------

typedef struct strlist { char **s; int n, cap; } strlist;

static int sl_push(strlist *l, const char *s, size_t len) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        char **p = realloc(l->s, (size_t)cap * sizeof *p);
        if (!p) return peri_fail(PERI_E_NOMEM, "out of memory");
        l->s = p;
        l->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c) return peri_fail(PERI_E_NOMEM, "out of memory");
    memcpy(c, s, len);
    c[len] = 0;
    l->s[l->n++] = c;
    return PERI_OK;
}

static void sl_free(strlist *l) {
    for (int i = 0; i < l->n; i++) free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static json_value *load_json(const char *dir, const char *file) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (access(path, R_OK) != 0) return NULL;
    char *text;
    size_t len;
    if (peri_read_file(path, (size_t)1 << 30, &text, &len)) return NULL;
    json_value *v = json_parse(text, len, path);
    free(text);
    return v;
}

static bool is_lower_word(const char *w, size_t n) {
    bool cased = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)w[i];
        if (isupper(c)) return false;
        if (islower(c)) cased = true;
    }
    return cased;
}

// ^(v\d+(?:\.\d+)*|\d.*)$
static bool is_version_or_number(const char *w, size_t n) {
    if (n && isdigit((unsigned char)w[0])) return true;
    if (n < 2 || w[0] != 'v') return false;
    size_t i = 1;
    bool digit = false;
    for (; i < n; i++) {
        if (isdigit((unsigned char)w[i])) digit = true;
        else if (w[i] == '.' && digit && i + 1 < n && isdigit((unsigned char)w[i + 1])) digit = false;
        else return false;
    }
    return digit;
}

// gguf-py Metadata.id_to_title: words title-cased unless they have capitals or are versions/numbers.
static void id_to_title(const char *id, char *out, size_t size) {
    size_t o = 0;
    const char *p = id;
    while (*p) {
        while (*p == '-' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        size_t n = 0;
        while (p[n] && p[n] != '-' && !isspace((unsigned char)p[n])) n++;
        if (o && o + 1 < size) out[o++] = ' ';
        bool title = is_lower_word(p, n) && !is_version_or_number(p, n);
        bool prev_alpha = false;
        for (size_t i = 0; i < n && o + 1 < size; i++) {
            unsigned char c = (unsigned char)p[i];
            if (title && isalpha(c)) c = (unsigned char)(prev_alpha ? tolower(c) : toupper(c));
            prev_alpha = isalpha(c) != 0;
            out[o++] = (char)c;
        }
        p += n;
    }
    out[o] = 0;
}

static bool ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return false;
    return !*a && !*b;
}

// \d+([._]\d+)?[KMBT]\d?  (case-insensitive), from s
static bool match_size_core(const char *s) {
    size_t i = 0;
    while (isdigit((unsigned char)s[i])) i++;
    if (!i) return false;
    if ((s[i] == '.' || s[i] == '_') && isdigit((unsigned char)s[i + 1])) {
        i++;
        while (isdigit((unsigned char)s[i])) i++;
    }
    if (!s[i] || !strchr("KMBTkmbt", s[i])) return false;
    i++;
    if (isdigit((unsigned char)s[i])) i++;
    return !s[i];
}

static bool match_size_label(const char *s) {
    if (ieq(s, "small") || ieq(s, "mini") || ieq(s, "medium") || ieq(s, "large") || ieq(s, "xl") || ieq(s, "xxl"))
        return true;
    if (match_size_core(s)) return true;
    if ((s[0] == 'a' || s[0] == 'A') && match_size_core(s + 1)) return true;
    size_t i = 0;
    while (isdigit((unsigned char)s[i])) i++;
    return i && (s[i] == 'x' || s[i] == 'X') && match_size_core(s + i + 1);
}

static bool match_version(const char *s) {
    size_t i = 0;
    if (s[0] == 'v' || s[0] == 'V') i = 1;
    else if (!strncasecmp(s, "iter", 4)) i = 4;
    if (!isdigit((unsigned char)s[i])) return false;
    while (s[i]) {
        while (isdigit((unsigned char)s[i])) i++;
        if (!s[i]) return true;
        if (s[i] != '.' || !isdigit((unsigned char)s[i + 1])) return false;
        i++;
    }
    return true;
}

// i?q\d(_\w)*|b?fp?(16|32)
static bool match_quant_type(const char *s) {
    size_t i = 0;
    if (s[i] == 'i' || s[i] == 'I') i++;
    if ((s[i] == 'q' || s[i] == 'Q') && isdigit((unsigned char)s[i + 1])) {
        i += 2;
        while (s[i] == '_' && (isalnum((unsigned char)s[i + 1]) || s[i + 1] == '_')) {
            i += 2;
            while (isalnum((unsigned char)s[i]) || (s[i] == '_' && !(s[i + 1] == 0))) {
                if (s[i] == '_') break;
                i++;
            }
        }
        return !s[i];
    }
    i = 0;
    if (s[i] == 'b' || s[i] == 'B') i++;
    if (s[i] != 'f' && s[i] != 'F') return false;
    i++;
    if (s[i] == 'p' || s[i] == 'P') i++;
    return !strcmp(s + i, "16") || !strcmp(s + i, "32");
}

static void normalize_size_label(char *l) {
    for (char *p = l; *p; p++)
        if (*p == '_') *p = '.';
    size_t n = strlen(l);
    if (n >= 2 && isdigit((unsigned char)l[n - 1])) {   // bloom-7b1 -> 7.1b
        char a = l[n - 2], b = l[n - 1];
        l[n - 2] = '.';
        l[n - 1] = b;
        l[n] = a;
        l[n + 1] = 0;
        n++;
    }
    if (n > 1 && isdigit((unsigned char)l[n - 2]) && strchr("kmbt", l[n - 1])) l[n - 1] = (char)toupper(l[n - 1]);
}

enum { NT_BASE = 1, NT_SIZE = 2, NT_FT = 4, NT_VER = 8, NT_TYPE = 16 };

// gguf-py Metadata.get_model_id_components for a folder name (no org part).
static void model_id_components(const char *id, int64_t total_params, char *basename, char *finetune, char *version,
                                char *size_label, size_t size) {
    basename[0] = finetune[0] = version[0] = size_label[0] = 0;
    char parts[32][80];
    int types[32] = {0}, np = 0;
    const char *p = id;
    while (*p && np < 32) {
        size_t n = 0;
        while (p[n] && p[n] != '-') n++;
        if (n > 0 && n < 70) {
            memcpy(parts[np], p, n);
            parts[np][n] = 0;
            np++;
        }
        p += n;
        if (*p == '-') p++;
    }
    for (int i = 0; i < np; i++) {
        char *part = parts[i];
        if (match_version(part)) types[i] |= NT_VER;
        else if (match_quant_type(part)) {
            types[i] |= NT_TYPE;
            for (char *c = part; *c; c++) *c = (char)toupper((unsigned char)*c);
        } else if (i > 0 && match_size_label(part)) {
            normalize_size_label(part);
            size_t n = strlen(part);
            const char *suf = " KMBT";
            const char *f = strchr(suf, part[n - 1]);
            char num[80];
            memcpy(num, part, n - 1);
            num[n - 1] = 0;
            char *end;
            double v = strtod(num, &end);
            if (total_params != 0 && n > 1 && *end == 0 && end != num && f) {
                double label_params = v * pow(1000, (double)(f - suf));
                if (total_params > 0 && fabs(label_params - (double)total_params) > (double)(7 * total_params / 8)) {
                    types[i] |= NT_FT;
                    part[n - 1] = (char)tolower((unsigned char)part[n - 1]);
                }
            }
            if (!types[i]) types[i] |= NT_SIZE;
        } else if (i > 0 && (ieq(part, "chat") || ieq(part, "instruct") || ieq(part, "vision") || ieq(part, "lora"))) {
            types[i] |= NT_FT;
        }
    }
    bool numeric_size = false;
    for (int i = 0; i < np; i++)
        if (types[i] & NT_SIZE)
            for (char *c = parts[i]; *c; c++) numeric_size |= isdigit((unsigned char)*c) != 0;
    if (numeric_size)
        for (int i = 0; i < np; i++) {
            if (!(types[i] & NT_SIZE)) continue;
            bool alpha = true;
            for (char *c = parts[i]; *c; c++) alpha &= isalpha((unsigned char)*c) != 0;
            if (alpha) types[i] &= ~NT_SIZE;
        }
    bool at_start = true;
    for (int i = 0; i < np; i++) {
        if (at_start && ((types[i] == 0 && isalpha((unsigned char)parts[i][0])) || (types[i] & NT_VER))) {
            types[i] |= NT_BASE;
        } else {
            at_start = false;
            if (types[i] == 0) types[i] |= NT_FT;
        }
    }
    for (int i = np - 1; i >= 0; i--) {
        if ((types[i] & NT_BASE) && (types[i] & ~NT_BASE)) types[i] &= ~NT_BASE;
        else break;
    }
#define JOIN(out, mask, extra)                                                               \
    for (int i = 0; i < np; i++)                                                             \
        if ((types[i] & (mask)) && (extra)) {                                                \
            if (out[0]) strncat(out, "-", size - strlen(out) - 1);                           \
            strncat(out, parts[i], size - strlen(out) - 1);                                  \
        }
    JOIN(basename, NT_BASE, true)
    for (int i = 0; i < np; i++) {   // size labels, deduplicated
        if (!(types[i] & NT_SIZE)) continue;
        bool dup = false;
        for (int j = 0; j < i; j++) dup |= (types[j] & NT_SIZE) && !strcmp(parts[j], parts[i]);
        if (dup) continue;
        if (size_label[0]) strncat(size_label, "-", size - strlen(size_label) - 1);
        strncat(size_label, parts[i], size - strlen(size_label) - 1);
    }
    JOIN(finetune, NT_FT, true)
    JOIN(version, NT_VER, !(types[i] & NT_BASE))
#undef JOIN
    if (!size_label[0] && !finetune[0] && !version[0]) basename[0] = 0;
}

// gguf-py model_weight_count_rounded_notation(n, min_digits=2).
static void rounded_notation(int64_t n, char *out, size_t size) {
    double x = (double)n, s;
    const char *suf;
    if (x > 1e12) s = x * 1e-12, suf = "T";
    else if (x > 1e9) s = x * 1e-9, suf = "B";
    else if (x > 1e6) s = x * 1e-6, suf = "M";
    else s = x * 1e-3, suf = "K";
    char digits[64];
    snprintf(digits, sizeof digits, "%.0f", nearbyint(s));
    const char *d = digits;
    while (*d == '0') d++;
    int fix = 2 - (int)strlen(d);
    if (fix < 0) fix = 0;
    snprintf(out, size, "%.*f%s", fix, s, suf);
}

// ---- tensors ------------------------------------------------------------------------------------------------

typedef struct outt {
    char name[128];
    const peri_tensor *src;
    int type;
    void *data;
    size_t nbytes;
} outt;

static int cmp_src_name(const void *a, const void *b) {
    return strcmp((*(const peri_tensor *const *)a)->name, (*(const peri_tensor *const *)b)->name);
}

static float *tensor_f32(const peri_tensor *t) {
    const struct peri_type_traits *tr = peri_type_traits(t->type);
    int64_t n = peri_tensor_nelem(t);
    if (!tr || !tr->to_float || n <= 0) {
        peri_fail(PERI_E_UNSUPPORTED, "tensor '%s': dtype %s cannot be converted", t->name, peri_type_name(t->type));
        return NULL;
    }
    float *f = malloc((size_t)n * sizeof *f);
    if (!f) {
        peri_fail(PERI_E_NOMEM, "out of memory for tensor '%s'", t->name);
        return NULL;
    }
    tr->to_float(t->data, f, n);
    return f;
}

// Converts src to `type` (F32, F16, BF16 or Q8_0) into a malloc'd buffer.
static int convert_tensor(outt *o) {
    const peri_tensor *t = o->src;
    int64_t n = peri_tensor_nelem(t), nx = t->shape[t->n_dims - 1];
    if (t->type == o->type) {
        o->data = malloc(t->nbytes + 1);
        if (!o->data) return peri_fail(PERI_E_NOMEM, "out of memory");
        memcpy(o->data, t->data, t->nbytes);
        o->nbytes = t->nbytes;
        return PERI_OK;
    }
    float *f = tensor_f32(t);
    if (!f) return PERI_E_NOMEM;
    size_t rs = peri_row_size(o->type, nx);
    o->nbytes = rs * (size_t)(n / nx);
    o->data = malloc(o->nbytes + 1);
    if (!o->data) {
        free(f);
        return peri_fail(PERI_E_NOMEM, "out of memory");
    }
    const struct peri_type_traits *tr = peri_type_traits(o->type);
    for (int64_t r = 0; r < n / nx; r++) tr->from_float(f + r * nx, (char *)o->data + (size_t)r * rs, nx);
    free(f);
    return PERI_OK;
}

// PLM names (HF -> GGUF), as gguf-py's tensor_mapping for MODEL_ARCH.PLM.
static bool plm_map_name(const char *hf, char *out, size_t size) {
    static const struct { const char *hf, *gg; } layer_map[] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
        {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
        {"self_attn.kv_b_proj.weight", "attn_kv_b.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
    };
    if (!strcmp(hf, "model.embed_tokens.weight")) return snprintf(out, size, "token_embd.weight"), true;
    if (!strcmp(hf, "model.norm.weight")) return snprintf(out, size, "output_norm.weight"), true;
    if (!strcmp(hf, "lm_head.weight")) return snprintf(out, size, "output.weight"), true;
    int l, off = 0;
    if (sscanf(hf, "model.layers.%d.%n", &l, &off) == 1 && off > 0)
        for (size_t i = 0; i < sizeof layer_map / sizeof layer_map[0]; i++)
            if (!strcmp(hf + off, layer_map[i].hf)) return snprintf(out, size, "blk.%d.%s", l, layer_map[i].gg), true;
    return false;
}

// ---- vocabulary ------------------------------------------------------------------------------------------

static const char *const g_special_types[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
static const char *const g_special_keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                             "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.seperator_token_id",
                                             "tokenizer.ggml.padding_token_id", "tokenizer.ggml.cls_token_id",
                                             "tokenizer.ggml.mask_token_id"};

typedef struct special_vocab {
    int order[7], n;          // insertion order of the ids
    int64_t id[7];
    int add[7];               // -1 unset, 0/1
} special_vocab;

static void sv_set(special_vocab *sv, int typ, const json_value *v, int64_t n_vocab) {
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->integer < 0 || v->integer >= n_vocab) return;
    for (int i = 0; i < sv->n; i++)
        if (sv->order[i] == typ) return;
    sv->id[typ] = v->integer;
    sv->order[sv->n++] = typ;
}

static bool looks_special(const char *t) {
    size_t n = strlen(t);
    if (!strcmp(t, "<pad>") || !strcmp(t, "<mask>") || !strcmp(t, "<2mass>") || !strcmp(t, "[@BOS@]")) return true;
    if (n >= 4 && !strncmp(t, "<|", 2) && !strcmp(t + n - 2, "|>")) return true;
    if (n >= 8 && !strncmp(t, "<\xef\xbd\x9c", 4) && !strcmp(t + n - 4, "\xef\xbd\x9c>")) return true;
    if (!strncmp(t, "<unused", 7) && t[n - 1] == '>') return true;
    return false;
}

static const json_value *find_added(const json_value *added, int64_t id) {
    if (!added || added->type != JSON_ARRAY) return NULL;
    for (size_t i = 0; i < added->len; i++) {
        int64_t v;
        if (json_get_int(&added->items[i], "id", -1, &v) && v == id) return &added->items[i];
    }
    return NULL;
}

// _set_vocab_gpt2 + SpecialVocab(load_merges=True).add_to_gguf, from tokenizer.json (or vocab.json + merges.txt).
static int write_vocab_gpt2(peri_gguf_writer *w, const char *dir, const json_value *config, const char *pre,
                            bool pre_forced) {
    int rc = PERI_OK;
    json_value *tj = load_json(dir, "tokenizer.json"), *tc = load_json(dir, "tokenizer_config.json");
    json_value *vj = NULL;
    const json_value *vocab = NULL, *added = NULL, *merges = NULL;
    strlist tokens = {0}, mlist = {0};
    int32_t *types = NULL;
    char **rev = NULL;
    if (tj) {
        vocab = json_get(json_get(tj, "model"), "vocab");
        merges = json_get(json_get(tj, "model"), "merges");
        added = json_get(tj, "added_tokens");
    } else {
        vj = load_json(dir, "vocab.json");
        vocab = vj;
    }
    if (!vocab || vocab->type != JSON_OBJECT) {
        rc = peri_fail(PERI_E_FORMAT, "%s: no byte-level BPE vocabulary (tokenizer.json model.vocab or vocab.json)", dir);
        goto done;
    }
    int64_t n_vocab = (int64_t)vocab->len;
    json_get_int(config, "vocab_size", n_vocab, &n_vocab);
    if (n_vocab <= 0 || n_vocab > (1 << 24)) {
        rc = peri_fail(PERI_E_FORMAT, "%s: vocab_size %lld out of range", dir, (long long)n_vocab);
        goto done;
    }
    rev = calloc((size_t)n_vocab, sizeof *rev);
    types = calloc((size_t)n_vocab, sizeof *types);
    if (!rev || !types) {
        rc = peri_fail(PERI_E_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < vocab->len; i++) {
        const json_value *v = &vocab->items[i];
        if (v->type == JSON_NUMBER && v->is_integer && v->integer >= 0 && v->integer < n_vocab) rev[v->integer] = vocab->keys[i];
    }
    // Added tokens not in the vocab map (tokenizer.json keeps them in added_tokens only).
    const json_value *atd = json_get(tc, "added_tokens_decoder");
    for (int64_t i = 0; i < n_vocab; i++) {
        if (rev[i]) continue;
        const json_value *a = find_added(added, i);
        const char *c;
        if (a && json_get_str(a, "content", NULL, &c) && c) rev[i] = (char *)c;
        else if (atd && atd->type == JSON_OBJECT) {
            char k[32];
            snprintf(k, sizeof k, "%lld", (long long)i);
            const json_value *e = json_get(atd, k);
            if (e && json_get_str(e, "content", NULL, &c) && c) rev[i] = (char *)c;
        }
    }
    for (int64_t i = 0; i < n_vocab && !rc; i++) {
        char buf[64];
        if (!rev[i]) {
            snprintf(buf, sizeof buf, "[PAD%lld]", (long long)i);
            types[i] = PERI_TOK_UNUSED;
            rc = sl_push(&tokens, buf, strlen(buf));
            continue;
        }
        const json_value *a = find_added(added, i);
        if (!a && atd && atd->type == JSON_OBJECT) {
            snprintf(buf, sizeof buf, "%lld", (long long)i);
            a = json_get(atd, buf);
        }
        if (a) {
            bool special = false;
            json_get_bool(a, "special", false, &special);
            if (special || looks_special(rev[i])) {
                types[i] = PERI_TOK_CONTROL;
                rc = sl_push(&tokens, rev[i], strlen(rev[i]));
            } else {
                // user-defined: U+2581 pre-normalized to a space
                types[i] = PERI_TOK_USER_DEFINED;
                const char *s = rev[i];
                char *cp = malloc(strlen(s) + 1);
                if (!cp) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); break; }
                size_t o = 0;
                for (size_t j = 0; s[j];) {
                    if (!strncmp(s + j, "\xe2\x96\x81", 3)) cp[o++] = ' ', j += 3;
                    else cp[o++] = s[j++];
                }
                rc = sl_push(&tokens, cp, o);
                free(cp);
            }
        } else {
            types[i] = PERI_TOK_NORMAL;
            rc = sl_push(&tokens, rev[i], strlen(rev[i]));
        }
    }
    if (rc) goto done;
    // merges: tokenizer.json ("a b" strings or [a, b] pairs, spaces as U+0120+), else merges.txt
    if (merges && merges->type == JSON_ARRAY && merges->len) {
        for (size_t i = 0; i < merges->len && !rc; i++) {
            const json_value *m = &merges->items[i];
            if (m->type == JSON_STRING) rc = sl_push(&mlist, m->str, m->len);
            else if (m->type == JSON_ARRAY && m->len == 2 && m->items[0].type == JSON_STRING && m->items[1].type == JSON_STRING) {
                char *buf = malloc((m->items[0].len + m->items[1].len) * 2 + 2);
                if (!buf) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); break; }
                size_t o = 0;
                for (int k = 0; k < 2; k++) {
                    if (k) buf[o++] = ' ';
                    for (size_t j = 0; j < m->items[k].len; j++) {
                        if (m->items[k].str[j] == ' ') buf[o++] = '\xc5', buf[o++] = '\xa0';   // U+0160
                        else buf[o++] = m->items[k].str[j];
                    }
                }
                rc = sl_push(&mlist, buf, o);
                free(buf);
            } else rc = peri_fail(PERI_E_FORMAT, "%s/tokenizer.json: merges[%zu] is neither \"a b\" nor [a, b]", dir, i);
        }
    } else {
        char path[4096], *text;
        size_t len;
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        if (access(path, R_OK) == 0 && !peri_read_file(path, (size_t)1 << 30, &text, &len)) {
            size_t i = 0;
            bool first = true;
            while (i < len && !rc) {
                size_t e = i;
                while (e < len && text[e] != '\n') e++;
                size_t le = e;
                while (le > i && (text[le - 1] == '\r' || text[le - 1] == ' ')) le--;
                if (!(first && text[i] == '#') && le > i) {
                    // parts[0] + ' ' + parts[1] of line.split(' ')
                    size_t sp = i;
                    while (sp < le && text[sp] != ' ') sp++;
                    if (sp < le) {
                        size_t sp2 = sp + 1;
                        while (sp2 < le && text[sp2] != ' ') sp2++;
                        rc = sl_push(&mlist, text + i, sp2 - i);
                    }
                }
                first = false;
                i = e + 1;
            }
            free(text);
        }
    }
    if (rc) goto done;

    if ((rc = peri_gguf_set_str(w, "tokenizer.ggml.model", "gpt2"))) goto done;
    if ((rc = peri_gguf_set_str(w, "tokenizer.ggml.pre", pre))) goto done;
    (void)pre_forced;
    if ((rc = peri_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens.s, (uint64_t)tokens.n))) goto done;
    if ((rc = peri_gguf_set_arr_data(w, "tokenizer.ggml.token_type", GGUF_INT32, types, (uint64_t)n_vocab))) goto done;
    if (mlist.n && (rc = peri_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mlist.s, (uint64_t)mlist.n)))
        goto done;

    special_vocab sv = {.n = 0};
    for (int t = 0; t < 7; t++) sv.add[t] = -1;
    if (tc) {
        for (int t = 0; t < 7; t++) {
            char k[32];
            snprintf(k, sizeof k, "add_%s_token", g_special_types[t]);
            const json_value *a = json_get(tc, k);
            if (a && a->type == JSON_BOOL) sv.add[t] = a->boolean;
            snprintf(k, sizeof k, "%s_token", g_special_types[t]);
            const json_value *e = json_get(tc, k);
            const char *content = NULL;
            if (e && e->type == JSON_STRING) content = e->str;
            else if (e && e->type == JSON_OBJECT) json_get_str(e, "content", NULL, &content);
            if (!content || !added || added->type != JSON_ARRAY) continue;
            for (size_t i = 0; i < added->len; i++) {
                const char *c;
                if (json_get_str(&added->items[i], "content", NULL, &c) && c && !strcmp(c, content)) {
                    sv_set(&sv, t, json_get(&added->items[i], "id"), n_vocab);
                    break;
                }
            }
        }
    }
    for (int t = 0; t < 7; t++) {
        char k[32];
        snprintf(k, sizeof k, "%s_token_id", g_special_types[t]);
        sv_set(&sv, t, json_get(config, k), n_vocab);
    }
    for (int i = 0; i < sv.n && !rc; i++) rc = peri_gguf_set_u32(w, g_special_keys[sv.order[i]], (uint32_t)sv.id[sv.order[i]]);
    for (int t = 0; t < 7 && !rc; t++) {
        if (sv.add[t] < 0) continue;
        char k[64];
        snprintf(k, sizeof k, "tokenizer.ggml.add_%s_token", g_special_types[t]);
        rc = peri_gguf_set_bool(w, k, sv.add[t] == 1);
    }
    if (rc) goto done;
    {
        char path[4096], *text = NULL;
        size_t len;
        const char *tmpl = NULL;
        snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
        if (access(path, R_OK) == 0 && !peri_read_file(path, (size_t)1 << 26, &text, &len)) tmpl = text;
        const json_value *ct = json_get(tc, "chat_template");
        if (ct && ct->type == JSON_STRING) tmpl = ct->str;
        if (tmpl) rc = peri_gguf_set_str(w, "tokenizer.chat_template", tmpl);
        free(text);
    }
done:
    sl_free(&tokens);
    sl_free(&mlist);
    free(types);
    free(rev);
    json_free(tj);
    json_free(tc);
    json_free(vj);
    return rc;
}

// SentencePiece tokenizer.model -> tokenizer.ggml.model "llama" (as llama.cpp's _set_vocab_sentencepiece).
static int write_vocab_spm(peri_gguf_writer *w, const char *dir, const json_value *config) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    if (access(path, R_OK) != 0) return 1;   // none
    peri_tokenizer *t = NULL;
    int rc = peri_tokenizer_load(path, &t);
    if (rc) return rc;
    int32_t n = t->n_vocab;
    const char **tok = calloc((size_t)n + 1, sizeof *tok);
    float *scores = calloc((size_t)n + 1, sizeof *scores);
    int32_t *types = calloc((size_t)n + 1, sizeof *types);
    if (!tok || !scores || !types) rc = peri_fail(PERI_E_NOMEM, "out of memory");
    for (int32_t i = 0; i < n && !rc; i++) {
        size_t len;
        tok[i] = peri_tok_text(t, i, &len);
        scores[i] = t->pieces[i].score;
        types[i] = t->pieces[i].type;
    }
    if (!rc) rc = peri_gguf_set_str(w, "tokenizer.ggml.model", "llama");
    if (!rc) rc = peri_gguf_set_str(w, "tokenizer.ggml.pre", "default");
    if (!rc) rc = peri_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tok, (uint64_t)n);
    if (!rc) rc = peri_gguf_set_arr_data(w, "tokenizer.ggml.scores", GGUF_FLOAT32, scores, (uint64_t)n);
    if (!rc) rc = peri_gguf_set_arr_data(w, "tokenizer.ggml.token_type", GGUF_INT32, types, (uint64_t)n);
    int64_t v;
    const char *names[4] = {"bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"};
    const char *keys[4] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                           "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
    int32_t tid[4] = {t->bos_id, t->eos_id, t->unk_id, t->pad_id};
    for (int k = 0; k < 4 && !rc; k++) {
        v = tid[k];
        json_get_int(config, names[k], v, &v);
        if (v >= 0 && v < n) rc = peri_gguf_set_u32(w, keys[k], (uint32_t)v);
    }
    if (!rc) rc = peri_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", t->add_dummy_prefix);
    if (!rc) rc = peri_gguf_set_bool(w, "tokenizer.ggml.remove_extra_whitespaces", t->remove_extra_ws);
    if (!rc && t->charsmap && t->charsmap_size)
        rc = peri_gguf_set_arr_data(w, "tokenizer.ggml.precompiled_charsmap", GGUF_UINT8, t->charsmap,
                                    (uint64_t)t->charsmap_size);
    if (!rc) {
        json_value *tc = load_json(dir, "tokenizer_config.json");
        for (int k = 0; k < 2 && !rc; k++) {
            const json_value *a = json_get(tc, k ? "add_eos_token" : "add_bos_token");
            if (a && a->type == JSON_BOOL)
                rc = peri_gguf_set_bool(w, k ? "tokenizer.ggml.add_eos_token" : "tokenizer.ggml.add_bos_token", a->boolean);
        }
        const json_value *ct = json_get(tc, "chat_template");
        if (!rc && ct && ct->type == JSON_STRING) rc = peri_gguf_set_str(w, "tokenizer.chat_template", ct->str);
        json_free(tc);
    }
    free(tok);
    free(scores);
    free(types);
    peri_tokenizer_free(t);
    return rc;
}

// ---- the converter -------------------------------------------------------------------------------------------

static void clog_(const struct peri_convert_params *p, const char *fmt, ...) {
    if (!p->log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    p->log(line, p->log_user);
}

static int cfg_i64(const json_value *c, const char *k, int64_t *out) {
    const json_value *v = json_get(c, k);
    if (!v || v->type != JSON_NUMBER || !v->is_integer) return 0;
    *out = v->integer;
    return 1;
}

// Writes the config.json members as pldrllm.config.<key> (docs/gguf-pldrllm.md).
static int write_pldr_config(peri_gguf_writer *w, const json_value *cfg) {
    int rc = PERI_OK;
    for (size_t i = 0; i < cfg->len && !rc; i++) {
        const json_value *v = &cfg->items[i];
        char k[256];
        if (strlen(cfg->keys[i]) > 200) continue;
        snprintf(k, sizeof k, "pldrllm.config.%s", cfg->keys[i]);
        switch (v->type) {
        case JSON_BOOL: rc = peri_gguf_set_bool(w, k, v->boolean); break;
        case JSON_STRING: rc = peri_gguf_set_str(w, k, v->str); break;
        case JSON_NUMBER:
            if (v->is_integer && v->integer >= INT32_MIN && v->integer <= INT32_MAX) {
                rc = peri_gguf_set_i32(w, k, (int32_t)v->integer);
            } else {
                // 64-bit scalars through a parsed-style key-value (the writer has no set_i64/set_f64)
                gguf_kv kv = {.key = {k, strlen(k)}};
                kv.value.type = v->is_integer ? GGUF_INT64 : GGUF_FLOAT64;
                if (v->is_integer) kv.value.v.i64 = v->integer;
                else kv.value.v.f64 = v->number;
                rc = peri_gguf_set_kv_from(w, &kv);
            }
            break;
        case JSON_ARRAY: {
            bool all_str = true;
            for (size_t j = 0; j < v->len; j++) all_str &= v->items[j].type == JSON_STRING;
            if (!all_str) break;   // not used by PldrllmConfig
            const char **s = calloc(v->len + 1, sizeof *s);
            if (!s) return peri_fail(PERI_E_NOMEM, "out of memory");
            for (size_t j = 0; j < v->len; j++) s[j] = v->items[j].str;
            rc = peri_gguf_set_arr_str(w, k, s, v->len);
            free(s);
            break;
        }
        default: break;   // null (= the default) and objects (rope_scaling, unsupported) are not stored
        }
    }
    return rc;
}

int peri_convert_hf(const char *hf_dir, const char *out_path, const struct peri_convert_params *params) {
    struct peri_convert_params dp = {0};
    if (!params) params = &dp;
    const char *type = params->type ? params->type : "f16";
    const struct peri_ftype_info *fi = peri_ftype_lookup(type);
    if (!fi) return PERI_E_ARG;
    bool direct = fi->base_type == PERI_TYPE_F32 || fi->base_type == PERI_TYPE_F16 || fi->base_type == PERI_TYPE_BF16 ||
                  fi->base_type == PERI_TYPE_Q8_0;
    peri_weights wt;
    int rc = peri_weights_open(&wt, hf_dir, true);
    if (rc) return rc;
    peri_gguf_writer *w = NULL;
    outt *ot = NULL;
    const peri_tensor **src = NULL;
    char tmp_path[4096] = "";
    if (!wt.config || wt.gguf) {
        rc = peri_fail(PERI_E_ARG, "%s: not a Hugging Face folder (config.json + safetensors)", hf_dir);
        goto done;
    }
    const char *model_type = "";
    json_get_str(wt.config, "model_type", "", &model_type);
    bool is_plm = !strcmp(model_type, "plm"), is_pldr = !strcmp(model_type, "pldrllm");
    if (!is_plm && !is_pldr) {
        rc = peri_fail(PERI_E_UNSUPPORTED, "%s/config.json: model_type '%s'; peri converts 'plm' and 'pldrllm'", hf_dir,
                       model_type);
        goto done;
    }
    // Quantized mixes: convert to f32 first, then quantize as llama-quantize does from the f32 file.
    const int direct_type = direct ? fi->base_type : PERI_TYPE_F32;
    const int direct_ftype = direct ? fi->ftype : 0;

    // Tensors in safetensors key order (sorted by name), mapped and typed as the converter does.
    src = calloc((size_t)wt.n_tensors + 1, sizeof *src);
    ot = calloc((size_t)wt.n_tensors + 1, sizeof *ot);
    w = peri_gguf_writer_new();
    if (!src || !ot || !w) {
        rc = peri_fail(PERI_E_NOMEM, "out of memory");
        goto done;
    }
    memcpy(src, wt.tensors, (size_t)wt.n_tensors * sizeof *src);
    qsort(src, (size_t)wt.n_tensors, sizeof *src, cmp_src_name);
    int n_out = 0;
    int64_t total_params = 0;
    for (int i = 0; i < wt.n_tensors; i++) {
        const peri_tensor *t = src[i];
        outt *o = &ot[n_out];
        if (is_plm) {
            if (!plm_map_name(t->name, o->name, sizeof o->name)) {
                if (strstr(t->name, "rotary_emb.inv_freq")) continue;
                rc = peri_fail(PERI_E_UNSUPPORTED, "%s: tensor '%s' has no PLM GGUF name", hf_dir, t->name);
                goto done;
            }
        } else {
            if (strlen(t->name) >= sizeof o->name || strlen(t->name) >= 64) {
                rc = peri_fail(PERI_E_UNSUPPORTED, "%s: tensor name '%s' is longer than GGUF's 63 bytes", hf_dir, t->name);
                goto done;
            }
            snprintf(o->name, sizeof o->name, "%s", t->name);
        }
        if (t->n_dims > 4) {
            rc = peri_fail(PERI_E_UNSUPPORTED, "tensor '%s' has %d dimensions (GGUF allows 4)", t->name, t->n_dims);
            goto done;
        }
        o->src = t;
        size_t nl = strlen(o->name);
        bool keep_f32 = t->n_dims <= 1 || (nl >= 12 && !strcmp(o->name + nl - 12, "_norm.weight"));
        // pldrllm: only 2-D weights change type; the G-generating parameters (3-D) and norms stay float32.
        if (is_pldr) keep_f32 = t->n_dims != 2 || strstr(o->name, "layernorm") != NULL;
        int ty = keep_f32 ? PERI_TYPE_F32 : direct_type;
        int64_t nx = t->shape[t->n_dims - 1];
        if (ty == PERI_TYPE_Q8_0 && nx % 32 != 0) ty = PERI_TYPE_F16;   // gguf-py's QuantError fallback
        o->type = ty;
        total_params += peri_tensor_nelem(t);
        n_out++;
    }

    // ---- metadata, in the converter's order
    char dirname[1024], real[4096];
    const char *base = hf_dir;
    if (realpath(hf_dir, real)) base = real;
    const char *slash = strrchr(base, '/');
    snprintf(dirname, sizeof dirname, "%s", slash ? slash + 1 : base);
    char name[1024], basename[256], finetune[256], version[256], size_label[256];
    model_id_components(dirname, total_params, basename, finetune, version, size_label, sizeof basename);
    id_to_title(dirname, name, sizeof name);
    if (params->name) snprintf(name, sizeof name, "%s", params->name);
    if (!size_label[0]) rounded_notation(total_params, size_label, sizeof size_label);
    const char *arch = is_plm ? "plm" : "pldrllm";
    char k[256];
#define CK(x) do { if ((rc = (x))) goto done; } while (0)
#define AK(suffix) (snprintf(k, sizeof k, "%s.%s", arch, suffix), k)
    CK(peri_gguf_set_str(w, "general.architecture", arch));
    CK(peri_gguf_set_str(w, "general.type", "model"));
    CK(peri_gguf_set_str(w, "general.name", name));
    if (version[0]) CK(peri_gguf_set_str(w, "general.version", version));
    if (finetune[0]) CK(peri_gguf_set_str(w, "general.finetune", finetune));
    if (basename[0]) CK(peri_gguf_set_str(w, "general.basename", basename));
    CK(peri_gguf_set_str(w, "general.size_label", size_label));
    // TextModel.set_gguf_parameters
    int64_t iv;
    const json_value *cfg = wt.config;
    if (cfg_i64(cfg, "num_hidden_layers", &iv) || cfg_i64(cfg, "n_layers", &iv)) CK(peri_gguf_set_u32(w, AK("block_count"), (uint32_t)iv));
    if (cfg_i64(cfg, "max_position_embeddings", &iv) || cfg_i64(cfg, "n_ctx", &iv)) CK(peri_gguf_set_u32(w, AK("context_length"), (uint32_t)iv));
    if (cfg_i64(cfg, "hidden_size", &iv)) CK(peri_gguf_set_u32(w, AK("embedding_length"), (uint32_t)iv));
    if (cfg_i64(cfg, "intermediate_size", &iv)) CK(peri_gguf_set_u32(w, AK("feed_forward_length"), (uint32_t)iv));
    if (cfg_i64(cfg, "num_attention_heads", &iv)) CK(peri_gguf_set_u32(w, AK("attention.head_count"), (uint32_t)iv));
    if (cfg_i64(cfg, "num_key_value_heads", &iv)) CK(peri_gguf_set_u32(w, AK("attention.head_count_kv"), (uint32_t)iv));
    const json_value *rt = json_get(cfg, "rope_theta");
    if (rt && rt->type == JSON_NUMBER) CK(peri_gguf_set_f32(w, AK("rope.freq_base"), (float)rt->number));
    const json_value *eps = json_get(cfg, "rms_norm_eps");
    if (eps && eps->type == JSON_NUMBER) CK(peri_gguf_set_f32(w, AK("attention.layer_norm_rms_epsilon"), (float)eps->number));
    eps = json_get(cfg, "layer_norm_eps");
    if (eps && eps->type == JSON_NUMBER) CK(peri_gguf_set_f32(w, AK("attention.layer_norm_epsilon"), (float)eps->number));
    CK(peri_gguf_set_u32(w, "general.file_type", (uint32_t)direct_ftype));
    if (is_plm) {
        int64_t vocab, kvl, nope, rope, vh;
        if (!cfg_i64(cfg, "vocab_size", &vocab) || !cfg_i64(cfg, "kv_lora_rank", &kvl) ||
            !cfg_i64(cfg, "qk_nope_head_dim", &nope) || !cfg_i64(cfg, "qk_rope_head_dim", &rope) ||
            !cfg_i64(cfg, "v_head_dim", &vh)) {
            rc = peri_fail(PERI_E_FORMAT, "%s/config.json: vocab_size, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim "
                           "and v_head_dim must be integers", hf_dir);
            goto done;
        }
        CK(peri_gguf_set_u32(w, AK("vocab_size"), (uint32_t)vocab));
        CK(peri_gguf_set_u32(w, AK("attention.kv_lora_rank"), (uint32_t)kvl));
        CK(peri_gguf_set_u32(w, AK("attention.key_length"), (uint32_t)(nope + rope)));
        CK(peri_gguf_set_u32(w, AK("attention.value_length"), (uint32_t)vh));
        CK(peri_gguf_set_u32(w, AK("rope.dimension_count"), (uint32_t)rope));
    } else {
        if (cfg_i64(cfg, "vocab_size", &iv)) CK(peri_gguf_set_u32(w, AK("vocab_size"), (uint32_t)iv));
        if (cfg_i64(cfg, "head_dim", &iv)) CK(peri_gguf_set_u32(w, AK("attention.key_length"), (uint32_t)iv));
        CK(write_pldr_config(w, cfg));
    }
    CK(peri_gguf_set_u32(w, "general.quantization_version", 2));
    if (is_plm) {
        const char *pre = params->tok_pre ? params->tok_pre : "qwen2";
        rc = write_vocab_gpt2(w, hf_dir, cfg, pre, params->tok_pre != NULL);
        if (rc) goto done;
    } else {
        rc = write_vocab_spm(w, hf_dir, cfg);
        if (rc == 1) {
            rc = PERI_OK;
            clog_(params, "no tokenizer.model in %s: the GGUF carries no tokenizer", hf_dir);
        }
        if (rc) goto done;
    }
#undef AK
    for (int i = 0; i < n_out; i++) {
        outt *o = &ot[i];
        CK(convert_tensor(o));
        CK(peri_gguf_add_tensor(w, o->name, o->type, o->src->n_dims, o->src->shape, o->data, o->nbytes));
        clog_(params, "%-48s %-6s -> %-6s %s", o->src->name, peri_type_name(o->src->type), peri_type_name(o->type), o->name);
    }
    if (direct) {
        rc = peri_gguf_write(w, out_path);
    } else {
        snprintf(tmp_path, sizeof tmp_path, "%s.f32.tmp", out_path);
        rc = peri_gguf_write(w, tmp_path);
        if (!rc) rc = peri_quantize_gguf(tmp_path, out_path, type, params->log, params->log_user);
        remove(tmp_path);
    }
#undef CK
done:
    if (ot)
        for (int i = 0; i < wt.n_tensors; i++) free(ot[i].data);
    free(ot);
    free(src);
    peri_gguf_writer_free(w);
    peri_weights_close(&wt);
    return rc;
}
