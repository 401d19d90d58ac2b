// SentencePiece: a protobuf reader for tokenizer.model (no libprotobuf), the nmt_nfkc normalizer over the
// precompiled charsmap (darts-clone trie + replacement strings), unigram Viterbi (EncodeOptimized) and
// BPE encoding, byte fallback; behaviour follows sentencepiece 0.1.97.
#include "tokenizers/tokenizer.h"

#include "core/error.h"
#include "formats/gguf.h"
#include "tokenizers/unicode.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

// ---- protobuf wire format -----------------------------------------------------------------------------------

typedef struct pb {
    const unsigned char *p, *end;
    const unsigned char *base;
} pb;

static bool pb_varint(pb *r, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return false;
        unsigned char c = *r->p++;
        x |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) { *v = x; return true; }
    }
    return false;
}

// Reads one field header and its payload. For wire type 2, *data/*len give the bytes; for 0 and 1/5, *v.
static bool pb_field(pb *r, uint32_t *field, int *wt, uint64_t *v, const unsigned char **data, size_t *len) {
    uint64_t key;
    if (!pb_varint(r, &key)) return false;
    *field = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0: return pb_varint(r, v);
    case 1:
        if (r->end - r->p < 8) return false;
        memcpy(v, r->p, 8);
        r->p += 8;
        return true;
    case 5: {
        if (r->end - r->p < 4) return false;
        uint32_t x;
        memcpy(&x, r->p, 4);
        *v = x;
        r->p += 4;
        return true;
    }
    case 2: {
        uint64_t l;
        if (!pb_varint(r, &l) || l > (uint64_t)(r->end - r->p)) return false;
        *data = r->p;
        *len = (size_t)l;
        r->p += l;
        return true;
    }
    default: return false;   // groups (3, 4) and reserved types are not used by sentencepiece
    }
}

static int pb_bad(const pb *r, const char *where, const char *what) {
    return peri_fail(PERI_E_FORMAT, "%s: malformed sentencepiece model (%s) near byte offset %zu; the file "
                     "should be a sentencepiece ModelProto (tokenizer.model)", where, what,
                     (size_t)(r->p - r->base));
}

static float u32_to_float(uint64_t v) {
    uint32_t x = (uint32_t)v;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static int parse_charsmap(peri_tokenizer *t, const unsigned char *data, size_t len, const char *where) {
    if (len == 0) return PERI_OK;
    if (len < 4) return peri_fail(PERI_E_FORMAT, "%s: precompiled_charsmap is %zu bytes, too short", where, len);
    uint32_t trie_size = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                         (uint32_t)data[3] << 24;
    if (trie_size > len - 4 || trie_size % 4 != 0 || trie_size == 0)
        return peri_fail(PERI_E_FORMAT, "%s: precompiled_charsmap trie size %u does not fit its %zu bytes", where,
                         trie_size, len);
    t->charsmap = malloc(len);
    if (!t->charsmap) return peri_fail(PERI_E_NOMEM, "%s: out of memory for the charsmap", where);
    memcpy(t->charsmap, data, len);
    t->charsmap_size = len;
    t->cm_trie = (const uint32_t *)(t->charsmap + 4);   // malloc'd: aligned; the format is little-endian
    t->cm_units = trie_size / 4;
    t->cm_norm = (const char *)t->charsmap + 4 + trie_size;
    t->cm_norm_size = len - 4 - trie_size;
    return PERI_OK;
}

static int parse_piece(peri_tokenizer *t, int32_t id, const unsigned char *d, size_t n, const char *where) {
    pb r = {d, d + n, d};
    const unsigned char *s = (const unsigned char *)"";
    size_t slen = 0;
    float score = 0;
    int type = PERI_TOK_NORMAL;
    while (r.p < r.end) {
        uint32_t f; int wt; uint64_t v = 0; const unsigned char *data = NULL; size_t len = 0;
        if (!pb_field(&r, &f, &wt, &v, &data, &len)) return pb_bad(&r, where, "piece");
        if (f == 1 && wt == 2) { s = data; slen = len; }
        else if (f == 2 && wt == 5) score = u32_to_float(v);
        else if (f == 3 && wt == 0) type = (int)v;
    }
    if (type < PERI_TOK_NORMAL || type > PERI_TOK_BYTE)
        return peri_fail(PERI_E_FORMAT, "%s: piece %d has unknown type %d (expected 1..6)", where, id, type);
    if (slen == 0) return peri_fail(PERI_E_FORMAT, "%s: piece %d is empty", where, id);
    return peri_tok_set_piece(t, id, (const char *)s, slen, score, type);
}

int peri_spm_load_model(peri_tokenizer *t, const unsigned char *data, size_t size, const char *where) {
    // Pass 1: count pieces so the vocabulary is allocated once.
    pb r = {data, data + size, data};
    size_t n_pieces = 0;
    while (r.p < r.end) {
        uint32_t f; int wt; uint64_t v; const unsigned char *d; size_t len;
        if (!pb_field(&r, &f, &wt, &v, &d, &len)) return pb_bad(&r, where, "top-level field");
        if (f == 1 && wt == 2) n_pieces++;
    }
    if (n_pieces == 0 || n_pieces > PERI_TOK_MAX_VOCAB)
        return peri_fail(PERI_E_FORMAT, "%s: %zu pieces; a sentencepiece model has 1..%d", where, n_pieces,
                         PERI_TOK_MAX_VOCAB);
    peri_tok_piece *np = calloc(n_pieces, sizeof *np);
    if (!np) return peri_fail(PERI_E_NOMEM, "%s: out of memory for %zu pieces", where, n_pieces);
    free(t->pieces);
    t->pieces = np;
    t->n_vocab = (int32_t)n_pieces;
    t->spm_model_type = 1;
    t->kind = PERI_TOKENIZER_SPM;
    r.p = data;
    int32_t id = 0;
    int rc;
    while (r.p < r.end) {
        uint32_t f; int wt; uint64_t v = 0; const unsigned char *d = NULL; size_t len = 0;
        pb_field(&r, &f, &wt, &v, &d, &len);
        if (f == 1 && wt == 2) {
            if ((rc = parse_piece(t, id++, d, len, where))) return rc;
        } else if (f == 2 && wt == 2) {   // TrainerSpec
            pb s = {d, d + len, data};
            while (s.p < s.end) {
                uint32_t g; int w2; uint64_t x = 0; const unsigned char *d2; size_t l2;
                if (!pb_field(&s, &g, &w2, &x, &d2, &l2)) return pb_bad(&s, where, "trainer_spec");
                if (w2 != 0) continue;
                if (g == 3) t->spm_model_type = (int)x;
                else if (g == 24) t->treat_ws_suffix = x != 0;
                else if (g == 35) t->byte_fallback = x != 0;
            }
        } else if (f == 3 && wt == 2) {   // NormalizerSpec
            pb s = {d, d + len, data};
            while (s.p < s.end) {
                uint32_t g; int w2; uint64_t x = 0; const unsigned char *d2 = NULL; size_t l2 = 0;
                if (!pb_field(&s, &g, &w2, &x, &d2, &l2)) return pb_bad(&s, where, "normalizer_spec");
                if (g == 2 && w2 == 2) { if ((rc = parse_charsmap(t, d2, l2, where))) return rc; }
                else if (g == 3 && w2 == 0) t->add_dummy_prefix = x != 0;
                else if (g == 4 && w2 == 0) t->remove_extra_ws = x != 0;
                else if (g == 5 && w2 == 0) t->escape_ws = x != 0;
            }
        }
    }
    if (t->spm_model_type != 1 && t->spm_model_type != 2)
        return peri_fail(PERI_E_UNSUPPORTED, "%s: sentencepiece model_type %d is not supported (only UNIGRAM=1 "
                         "and BPE=2)", where, t->spm_model_type);
    return peri_spm_finish(t);
}

// ---- tries --------------------------------------------------------------------------------------------------

static int trie_insert(peri_u64map *m, int32_t **val, size_t *nodes, size_t *cap, const char *s, size_t n,
                       int32_t id) {
    uint64_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = node << 8 | (unsigned char)s[i], child;
        if (!peri_u64map_get(m, key, &child)) {
            if (*nodes == *cap) {
                size_t nc = *cap ? *cap * 2 : 1024;
                int32_t *p = realloc(*val, nc * sizeof *p);
                if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the piece trie");
                *val = p;
                *cap = nc;
            }
            child = (*nodes)++;
            (*val)[child] = -1;
            if (peri_u64map_put(m, key, child)) return PERI_E_NOMEM;
        }
        node = child;
    }
    if ((*val)[node] < 0) (*val)[node] = id;   // the first id wins, as in sentencepiece's pieces_ map
    return PERI_OK;
}

static int trie_init(peri_u64map *m, int32_t **val, size_t *nodes, size_t *cap, size_t expected) {
    int rc = peri_u64map_init(m, expected);
    if (rc) return rc;
    *cap = 1024;
    *val = malloc(*cap * sizeof **val);
    if (!*val) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the piece trie");
    (*val)[0] = -1;
    *nodes = 1;
    return PERI_OK;
}

// Children lists in one array per field (CSR), so that encoding walks cache-friendly arrays, not the hash map.
static int flatten_trie(peri_tokenizer *t) {
    size_t nn = t->trie_nodes;
    t->trie_off = calloc(nn + 1, sizeof *t->trie_off);
    t->trie_child = malloc((t->trie.n + 1) * sizeof *t->trie_child);
    t->trie_lab = malloc(t->trie.n + 1);
    if (!t->trie_off || !t->trie_child || !t->trie_lab)
        return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the piece trie");
    for (int b = 0; b < 256; b++) t->trie_root[b] = -1;
    for (size_t i = 0; i < t->trie.cap; i++)
        if (t->trie.keys[i] != UINT64_MAX) t->trie_off[(t->trie.keys[i] >> 8) + 1]++;
    for (size_t n = 0; n < nn; n++) t->trie_off[n + 1] += t->trie_off[n];
    uint32_t *fill = malloc((nn + 1) * sizeof *fill);
    if (!fill) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the piece trie");
    memcpy(fill, t->trie_off, (nn + 1) * sizeof *fill);
    for (size_t i = 0; i < t->trie.cap; i++) {
        uint64_t k = t->trie.keys[i];
        if (k == UINT64_MAX) continue;
        size_t parent = (size_t)(k >> 8);
        uint32_t at = fill[parent]++;
        // insertion into the parent's sorted run
        while (at > t->trie_off[parent] && t->trie_lab[at - 1] > (uint8_t)k) {
            t->trie_lab[at] = t->trie_lab[at - 1];
            t->trie_child[at] = t->trie_child[at - 1];
            at--;
        }
        t->trie_lab[at] = (uint8_t)k;
        t->trie_child[at] = (uint32_t)t->trie.vals[i];
        if (parent == 0) t->trie_root[(uint8_t)k] = (int32_t)t->trie.vals[i];
    }
    free(fill);
    // Nodes with many children (the pieces after "\xe2\x96\x81", common prefixes) get a direct 256-entry
    // table: a linear scan over their sorted labels dominated encoding time.
    size_t n_dense = 0;
    for (size_t n = 1; n < nn; n++) n_dense += t->trie_off[n + 1] - t->trie_off[n] >= PERI_TRIE_DENSE_MIN;
    t->trie_dense_idx = malloc(nn * sizeof *t->trie_dense_idx);
    t->trie_dense = malloc((n_dense ? n_dense : 1) * 256 * sizeof *t->trie_dense);
    if (!t->trie_dense_idx || !t->trie_dense) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the piece trie");
    int32_t d = 0;
    for (size_t n = 0; n < nn; n++) {
        t->trie_dense_idx[n] = -1;
        if (n == 0 || t->trie_off[n + 1] - t->trie_off[n] < PERI_TRIE_DENSE_MIN) continue;
        int32_t *row = t->trie_dense + (size_t)d * 256;
        for (int b = 0; b < 256; b++) row[b] = -1;
        for (uint32_t i = t->trie_off[n]; i < t->trie_off[n + 1]; i++) row[t->trie_lab[i]] = (int32_t)t->trie_child[i];
        t->trie_dense_idx[n] = d++;
    }
    t->trie_pay = malloc(nn * sizeof *t->trie_pay);
    if (!t->trie_pay) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the piece trie");
    for (size_t n = 0; n < nn; n++) {
        int32_t id = t->trie_val[n];
        const peri_tok_piece *p = id >= 0 ? &t->pieces[id] : NULL;
        t->trie_pay[n].id = !p || p->type == PERI_TOK_UNUSED ? -1 : p->type == PERI_TOK_USER_DEFINED ? (id | PERI_TRIE_UD) : id;
        t->trie_pay[n].score = p ? p->score : 0.0f;
    }
    return PERI_OK;
}

static inline int64_t trie_next(const peri_tokenizer *t, uint64_t node, unsigned char c) {
    if (node == 0) return t->trie_root[c];
    int32_t di = t->trie_dense_idx[node];
    if (di >= 0) return t->trie_dense[(size_t)di * 256 + c];
    const uint8_t *lab = t->trie_lab;
    for (uint32_t i = t->trie_off[node], e = t->trie_off[node + 1]; i < e; i++) {
        if (lab[i] == c) return t->trie_child[i];
        if (lab[i] > c) break;
    }
    return -1;
}

int peri_spm_finish(peri_tokenizer *t) {
    int rc = peri_tok_build_index(t, true);
    if (rc) return rc;
    t->min_score = FLT_MAX;
    t->max_score = FLT_MIN;   // sentencepiece's initial value: the smallest positive float (see encode)
    t->unk_id = -1;
    size_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) total += t->pieces[i].len;
    if ((rc = trie_init(&t->trie, &t->trie_val, &t->trie_nodes, &t->trie_cap, total + 1))) return rc;
    if ((rc = trie_init(&t->ud_trie, &t->ud_val, &t->ud_nodes, &t->ud_cap, 16))) return rc;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        peri_tok_piece *p = &t->pieces[i];
        const char *s = t->text + p->off;
        if (p->type == PERI_TOK_NORMAL) {
            if (p->score < t->min_score) t->min_score = p->score;
            if (p->score > t->max_score) t->max_score = p->score;
        }
        if (p->type == PERI_TOK_UNKNOWN && t->unk_id < 0) t->unk_id = i;
        if (p->type == PERI_TOK_BYTE) {
            // "<0xNN>"
            unsigned v = 0;
            bool ok = p->len == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>';
            for (int k = 3; ok && k < 5; k++) {
                char c = s[k];
                int h = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
                if (h < 0) ok = false; else v = v * 16 + (unsigned)h;
            }
            if (!ok) return peri_fail(PERI_E_FORMAT, "tokenizer: byte piece %d is \"%.*s\", expected <0xNN>", i,
                                      (int)p->len, s);
            p->byte = (uint8_t)v;
            if (t->byte_id[v] < 0) t->byte_id[v] = i;
        }
        if (p->type == PERI_TOK_NORMAL || p->type == PERI_TOK_USER_DEFINED || p->type == PERI_TOK_UNUSED)
            if ((rc = trie_insert(&t->trie, &t->trie_val, &t->trie_nodes, &t->trie_cap, s, p->len, i))) return rc;
        if (p->type == PERI_TOK_USER_DEFINED) {
            t->has_user_defined = true;
            t->ud_first[(unsigned char)s[0]] = true;
            if ((rc = trie_insert(&t->ud_trie, &t->ud_val, &t->ud_nodes, &t->ud_cap, s, p->len, i))) return rc;
        }
    }
    if (t->unk_id < 0)
        return peri_fail(PERI_E_FORMAT, "tokenizer: the sentencepiece model has no UNKNOWN piece; sentencepiece "
                         "requires one (unk_id)");
    if ((rc = flatten_trie(t))) return rc;
    if (t->min_score == FLT_MAX) t->min_score = 0;
    return PERI_OK;
}

// Longest user-defined symbol at s (0 if none).
static size_t ud_match(const peri_tokenizer *t, const char *s, size_t n) {
    uint64_t node = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t child;
        if (!peri_u64map_get(&t->ud_trie, node << 8 | (unsigned char)s[i], &child)) break;
        node = child;
        if (t->ud_val[node] >= 0) best = i + 1;
    }
    return best;
}

// ---- normalizer ---------------------------------------------------------------------------------------------

// Normalizer::NormalizePrefix: the replacement for the longest rule at s, and how many bytes it consumes.
static const char *normalize_prefix(const peri_tokenizer *t, const char *s, size_t n, size_t *out_len,
                                    size_t *consumed) {
    if (t->has_user_defined && t->ud_first[(unsigned char)s[0]]) {
        size_t l = ud_match(t, s, n);
        if (l) { *out_len = l; *consumed = l; return s; }
    }
    size_t longest = 0;
    uint32_t value = 0;
    if (t->cm_trie) {
        // darts-clone commonPrefixSearch, keeping only the first 32 results as sentencepiece does.
        const uint32_t *u = t->cm_trie;
        size_t units = t->cm_units, num = 0;
        uint32_t unit = u[0];
        size_t id = (unit >> 10) << ((unit & (1u << 9)) >> 6);
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            id ^= c;
            if (id >= units) break;
            unit = u[id];
            if ((unit & ((1u << 31) | 0xFF)) != c) break;
            id ^= (unit >> 10) << ((unit & (1u << 9)) >> 6);
            if (id >= units) break;
            if ((unit >> 8) & 1) {
                if (num < 32) { longest = i + 1; value = u[id] & 0x7FFFFFFFu; }
                num++;
            }
        }
    }
    if (longest && value < t->cm_norm_size) {
        const char *r = t->cm_norm + value;
        const char *e = memchr(r, 0, t->cm_norm_size - value);
        *out_len = e ? (size_t)(e - r) : t->cm_norm_size - value;
        *consumed = longest;
        return r;
    }
    uint32_t cp;
    size_t l = peri_utf8_decode((const unsigned char *)s, n, &cp);
    if (!l) {   // a malformed byte: U+FFFD, consuming one byte
        *out_len = 3;
        *consumed = 1;
        return "\xEF\xBF\xBD";
    }
    *out_len = l;
    *consumed = l;
    return s;
}

static const char k_ws[] = "\xE2\x96\x81";

int peri_spm_normalize(const peri_tokenizer *t, const char *in, size_t n, peri_buf *out) {
    int rc;
    const char *space = t->escape_ws ? k_ws : " ";
    size_t space_len = t->escape_ws ? 3 : 1;
    size_t i = 0, rl, used;
    if (t->remove_extra_ws) {
        while (i < n) {
            const char *r = normalize_prefix(t, in + i, n - i, &rl, &used);
            if (!(rl == 1 && r[0] == ' ')) break;
            i += used;
        }
    }
    if (i >= n) return PERI_OK;
    size_t start = out->n;
    if (!t->treat_ws_suffix && t->add_dummy_prefix && (rc = peri_buf_put(out, space, space_len))) return rc;
    bool prev_space = t->remove_extra_ws;
    while (i < n) {
        const char *r = normalize_prefix(t, in + i, n - i, &rl, &used);
        if (prev_space) while (rl && r[0] == ' ') { r++; rl--; }
        if (rl) {
            for (size_t k = 0; k < rl;) {
                if (t->escape_ws && r[k] == ' ') { rc = peri_buf_put(out, k_ws, 3); k++; }
                else {
                    size_t e = k + 1;
                    while (e < rl && !(t->escape_ws && r[e] == ' ')) e++;
                    rc = peri_buf_put(out, r + k, e - k);
                    k = e;
                }
                if (rc) return rc;
            }
            prev_space = r[rl - 1] == ' ';
        }
        i += used;
        if (!t->remove_extra_ws) prev_space = false;
    }
    if (t->treat_ws_suffix && t->add_dummy_prefix && (rc = peri_buf_put(out, space, space_len))) return rc;
    if (t->remove_extra_ws)
        while (out->n - start >= space_len && memcmp(out->p + out->n - space_len, space, space_len) == 0)
            out->n -= space_len;
    return PERI_OK;
}

// ---- encoders -----------------------------------------------------------------------------------------------

static inline size_t one_char_len(unsigned char c) {
    static const unsigned char len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[c >> 4];
}

// Emits a piece of the best path; an unknown piece becomes its bytes under byte_fallback.
static int emit(const peri_tokenizer *t, const char *s, size_t n, int32_t id, peri_ids *out) {
    if (id == t->unk_id && t->byte_fallback) {
        for (size_t k = 0; k < n; k++) {
            int32_t b = t->byte_id[(unsigned char)s[k]];
            int rc = peri_ids_put(out, b >= 0 ? b : t->unk_id);
            if (rc) return rc;
        }
        return PERI_OK;
    }
    return peri_ids_put(out, id);
}

typedef struct { float score; int32_t starts_at; int32_t id; } vnode;

static int encode_unigram(const peri_tokenizer *t, const char *s, size_t n, peri_ids *out) {
    if (n > INT32_MAX - 1) return peri_fail(PERI_E_ARG, "tokenizer: input of %zu bytes is too long", n);
    vnode *best = malloc((n + 1) * sizeof *best);
    if (!best) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for %zu bytes of input", n);
    for (size_t i = 0; i <= n; i++) { best[i].score = 0; best[i].starts_at = -1; best[i].id = -1; }
    const float unk_score = t->min_score - 10.0f;
    size_t pos = 0;
    while (pos < n) {
        const float till_here = best[pos].score;
        bool has_single = false;
        size_t mblen = one_char_len((unsigned char)s[pos]);
        if (mblen > n - pos) mblen = n - pos;
        uint64_t node = 0;
        for (size_t k = pos; k < n; k++) {
            int64_t child = trie_next(t, node, (unsigned char)s[k]);
            if (child < 0) break;
            node = (uint64_t)child;
            const struct peri_trie_pay pay = t->trie_pay[node];
            if (pay.id < 0) continue;
            const int32_t id = pay.id & ~PERI_TRIE_UD;
            size_t length = k + 1 - pos;
            // sentencepiece computes this in double and stores the best path score as float.
            double score = (pay.id & PERI_TRIE_UD) ? (double)((float)length * t->max_score) - 0.1 : (double)pay.score;
            double cand = score + (double)till_here;
            vnode *tn = &best[k + 1];
            if (tn->starts_at == -1 || cand > (double)tn->score) {
                tn->score = (float)cand;
                tn->starts_at = (int32_t)pos;
                tn->id = id;
            }
            if (!has_single && length == mblen) has_single = true;
        }
        if (!has_single) {
            vnode *tn = &best[pos + mblen];
            double cand = (double)unk_score + (double)till_here;
            if (tn->starts_at == -1 || cand > (double)tn->score) {
                tn->score = (float)cand;
                tn->starts_at = (int32_t)pos;
                tn->id = t->unk_id;
            }
        }
        pos += mblen;
    }
    // Backtrack: collect the path, then emit it in order.
    size_t count = 0;
    for (size_t e = n; e > 0; e = (size_t)best[e].starts_at) count++;
    int32_t *ends = malloc((count + 1) * sizeof *ends);
    if (!ends) { free(best); return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory"); }
    size_t k = count;
    for (size_t e = n; e > 0; e = (size_t)best[e].starts_at) ends[--k] = (int32_t)e;
    int rc = PERI_OK;
    for (size_t j = 0; j < count && !rc; j++) {
        size_t e = (size_t)ends[j], b = (size_t)best[e].starts_at;
        rc = emit(t, s + b, e - b, best[e].id, out);
    }
    free(ends);
    free(best);
    return rc;
}

// sentencepiece bpe_model.cc: merge the adjacent pair whose merged piece has the highest score (leftmost on
// ties) until none is in the vocabulary; user-defined symbols are frozen.
typedef struct { float score; int32_t left, right; uint32_t size; } spair;
typedef struct { uint32_t off, len; int32_t prev, next; bool freeze; } ssym;

static bool spair_less(const spair *a, const spair *b) {   // "a has lower priority than b"
    if (a->score != b->score) return a->score < b->score;
    return a->left > b->left;
}

typedef struct { spair *h; size_t n, cap; } sheap;

static int sheap_push(sheap *q, spair v) {
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 64;
        spair *p = realloc(q->h, nc * sizeof *p);
        if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
        q->h = p;
        q->cap = nc;
    }
    size_t i = q->n++;
    while (i > 0 && spair_less(&q->h[(i - 1) / 2], &v)) { q->h[i] = q->h[(i - 1) / 2]; i = (i - 1) / 2; }
    q->h[i] = v;
    return PERI_OK;
}

static spair sheap_pop(sheap *q) {
    spair top = q->h[0], v = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->n) break;
        if (c + 1 < q->n && spair_less(&q->h[c], &q->h[c + 1])) c++;
        if (!spair_less(&v, &q->h[c])) break;
        q->h[i] = q->h[c];
        i = c;
    }
    if (q->n) q->h[i] = v;
    return top;
}

static int spm_bpe_add(const peri_tokenizer *t, const char *s, ssym *sy, int32_t l, int32_t r, sheap *q) {
    if (l < 0 || r < 0 || sy[l].freeze || sy[r].freeze) return PERI_OK;
    uint32_t len = sy[l].len + sy[r].len;
    int32_t id = peri_tok_lookup(t, s + sy[l].off, len);
    if (id < 0) return PERI_OK;
    spair p = {t->pieces[id].score, l, r, len};
    return sheap_push(q, p);
}

static int encode_spm_bpe(const peri_tokenizer *t, const char *s, size_t n, peri_ids *out) {
    ssym *sy = malloc((n + 1) * sizeof *sy);
    if (!sy) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
    int32_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t l = t->has_user_defined ? ud_match(t, s + i, n - i) : 0;
        bool freeze = l > 0;
        if (!l) { l = one_char_len((unsigned char)s[i]); if (l > n - i) l = n - i; }
        sy[m] = (ssym){(uint32_t)i, (uint32_t)l, m - 1, -1, freeze};
        if (m > 0) sy[m - 1].next = m;
        m++;
        i += l;
    }
    sheap q = {0};
    int rc = PERI_OK;
    for (int32_t i = 1; i < m && !rc; i++) rc = spm_bpe_add(t, s, sy, i - 1, i, &q);
    while (q.n && !rc) {
        spair top = sheap_pop(&q);
        ssym *L = &sy[top.left], *R = &sy[top.right];
        if (L->len == 0 || R->len == 0 || L->len + R->len != top.size) continue;
        L->len += R->len;
        L->next = R->next;
        if (R->next >= 0) sy[R->next].prev = top.left;
        R->len = 0;
        rc = spm_bpe_add(t, s, sy, L->prev, top.left, &q);
        if (!rc) rc = spm_bpe_add(t, s, sy, top.left, L->next, &q);
    }
    for (int32_t i = m > 0 ? 0 : -1; i >= 0 && !rc; i = sy[i].next) {
        int32_t id = peri_tok_lookup(t, s + sy[i].off, sy[i].len);
        rc = emit(t, s + sy[i].off, sy[i].len, id < 0 ? t->unk_id : id, out);
    }
    free(q.h);
    free(sy);
    return rc;
}

int peri_spm_encode(const peri_tokenizer *t, const char *text, size_t len, peri_ids *out) {
    peri_buf norm = {0};
    int rc = peri_spm_normalize(t, text, len, &norm);
    if (!rc && norm.n) {
        rc = t->spm_model_type == 2 ? encode_spm_bpe(t, norm.p, norm.n, out)
                                    : encode_unigram(t, norm.p, norm.n, out);
    }
    free(norm.p);
    return rc;
}

// ---- GGUF (tokenizer.ggml.model = "llama" / "t5") ------------------------------------------------------------

int peri_spm_from_gguf(peri_tokenizer **out, const peri_gguf *g, int32_t n_vocab) {
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_SPM, n_vocab);
    if (!t) return PERI_E_NOMEM;
    int rc = PERI_OK;
    int et;
    uint64_t n;
    bool has_scores = peri_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n) && n == (uint64_t)n_vocab;
    bool has_types = peri_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n) && n == (uint64_t)n_vocab;
    for (int32_t i = 0; i < n_vocab && !rc; i++) {
        gguf_str s;
        double score = 0;
        int64_t type = PERI_TOK_NORMAL;
        if (!peri_gguf_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &s)) {
            rc = peri_fail(PERI_E_FORMAT, "tokenizer.ggml.tokens[%d] is not a string", i);
            break;
        }
        if (has_scores) peri_gguf_arr_f64(g, "tokenizer.ggml.scores", (uint64_t)i, &score);
        if (has_types) peri_gguf_arr_i64(g, "tokenizer.ggml.token_type", (uint64_t)i, &type);
        if (type < PERI_TOK_NORMAL || type > PERI_TOK_BYTE) type = PERI_TOK_NORMAL;
        if (s.len == 0) { s.s = "<empty>"; s.len = 7; type = PERI_TOK_UNUSED; }
        rc = peri_tok_set_piece(t, i, s.s, (size_t)s.len, (float)score, (int)type);
    }
    bool b;
    if (!rc && peri_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b)) t->add_dummy_prefix = b;
    if (!rc && peri_gguf_get_bool(g, "tokenizer.ggml.remove_extra_whitespaces", &b)) t->remove_extra_ws = b;
    t->byte_fallback = true;   // llama.cpp's SPM vocab always falls back to <0xNN> pieces
    if (!rc && peri_gguf_get_arr(g, "tokenizer.ggml.precompiled_charsmap", &et, &n) && n > 0 &&
        (et == GGUF_UINT8 || et == GGUF_INT8)) {
        const gguf_value *v = peri_gguf_get(g, "tokenizer.ggml.precompiled_charsmap");
        rc = parse_charsmap(t, v->v.arr.data, (size_t)n, "GGUF tokenizer.ggml.precompiled_charsmap");
    }
    if (!rc) {
        int64_t v;
        if (peri_gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &v)) t->bos_id = (int32_t)v;
        if (peri_gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &v)) t->eos_id = (int32_t)v;
        if (peri_gguf_get_i64(g, "tokenizer.ggml.padding_token_id", &v)) t->pad_id = (int32_t)v;
        t->spm_model_type = 1;
        // Vocabularies without an UNKNOWN-typed piece: use tokenizer.ggml.unknown_token_id.
        if (peri_gguf_get_i64(g, "tokenizer.ggml.unknown_token_id", &v) && v >= 0 && v < n_vocab) {
            bool any = false;
            for (int32_t i = 0; i < n_vocab; i++) any |= t->pieces[i].type == PERI_TOK_UNKNOWN;
            if (!any) t->pieces[v].type = PERI_TOK_UNKNOWN;
        }
        rc = peri_spm_finish(t);
    }
    if (rc) { peri_tokenizer_free(t); return rc; }
    *out = t;
    return PERI_OK;
}
