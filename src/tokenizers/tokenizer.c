// The public peri_tokenizer API: loading (file, folder or GGUF), encoding, decoding, and the shared
// vocabulary machinery (piece storage, string index, 64-bit hash map, streaming UTF-8-safe decoder).
#include "tokenizers/tokenizer.h"

#include "core/error.h"
#include "core/mapfile.h"
#include "formats/gguf.h"
#include "tokenizers/unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---- small containers ---------------------------------------------------------------------------------------

uint64_t peri_hash_bytes(const void *p, size_t n) {
    // FNV-1a with a final mix: short keys (pieces) dominate, so simplicity beats a wide hash here.
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

int peri_u64map_init(peri_u64map *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2) cap *= 2;
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        free(m->keys); free(m->vals);
        m->keys = m->vals = NULL;
        return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for a hash map of %zu entries", expected);
    }
    memset(m->keys, 0xFF, cap * sizeof *m->keys);
    m->cap = cap;
    m->n = 0;
    return PERI_OK;
}

void peri_u64map_free(peri_u64map *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int u64map_grow(peri_u64map *m) {
    peri_u64map nm;
    if (peri_u64map_init(&nm, m->cap) != PERI_OK) return PERI_E_NOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] != UINT64_MAX) peri_u64map_put(&nm, m->keys[i], m->vals[i]);
    peri_u64map_free(m);
    *m = nm;
    return PERI_OK;
}

int peri_u64map_put(peri_u64map *m, uint64_t key, uint64_t val) {
    if (!m->cap && peri_u64map_init(m, 8) != PERI_OK) return PERI_E_NOMEM;
    if ((m->n + 1) * 2 > m->cap && u64map_grow(m) != PERI_OK) return PERI_E_NOMEM;
    size_t mask = m->cap - 1, i = mix64(key) & mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & mask;
    if (m->keys[i] == UINT64_MAX) { m->keys[i] = key; m->n++; }
    m->vals[i] = val;
    return PERI_OK;
}

bool peri_u64map_get(const peri_u64map *m, uint64_t key, uint64_t *val) {
    if (!m->cap) return false;
    size_t mask = m->cap - 1, i = mix64(key) & mask;
    while (m->keys[i] != UINT64_MAX) {
        if (m->keys[i] == key) { *val = m->vals[i]; return true; }
        i = (i + 1) & mask;
    }
    return false;
}

int peri_buf_put(peri_buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *p = realloc(b->p, nc);
        if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory (%zu bytes)", nc);
        b->p = p;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return PERI_OK;
}

int peri_ids_put(peri_ids *v, int32_t id) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *p = realloc(v->p, nc * sizeof *p);
        if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for %zu ids", nc);
        v->p = p;
        v->cap = nc;
    }
    v->p[v->n++] = id;
    return PERI_OK;
}

// ---- vocabulary ---------------------------------------------------------------------------------------------

peri_tokenizer *peri_tok_alloc(int kind, int32_t n_vocab) {
    if (n_vocab <= 0 || n_vocab > PERI_TOK_MAX_VOCAB) {
        peri_fail(PERI_E_FORMAT, "tokenizer: vocabulary size %d is out of range (1..%d)", n_vocab,
                  PERI_TOK_MAX_VOCAB);
        return NULL;
    }
    peri_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { peri_fail(PERI_E_NOMEM, "tokenizer: out of memory"); return NULL; }
    t->kind = kind;
    t->n_vocab = n_vocab;
    t->pieces = calloc((size_t)n_vocab, sizeof *t->pieces);
    if (!t->pieces) {
        free(t);
        peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for %d pieces", n_vocab);
        return NULL;
    }
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = -1;
    for (int i = 0; i < 256; i++) t->byte_id[i] = t->bpe_byte_id[i] = -1;
    t->add_dummy_prefix = t->remove_extra_ws = t->escape_ws = true;
    return t;
}

int peri_tok_append_text(peri_tokenizer *t, const char *s, size_t len, uint32_t *off) {
    if (t->text_len + len + 1 > UINT32_MAX)
        return peri_fail(PERI_E_NOMEM, "tokenizer: piece strings exceed 4 GiB");
    if (t->text_len + len + 1 > t->text_cap) {
        size_t nc = t->text_cap ? t->text_cap : 4096;
        while (nc < t->text_len + len + 1) nc *= 2;
        char *p = realloc(t->text, nc);
        if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for piece strings");
        t->text = p;
        t->text_cap = nc;
    }
    *off = (uint32_t)t->text_len;
    if (len) memcpy(t->text + t->text_len, s, len);
    t->text[t->text_len + len] = 0;
    t->text_len += len + 1;
    return PERI_OK;
}

int peri_tok_set_piece(peri_tokenizer *t, int32_t id, const char *s, size_t len, float score, int type) {
    if (id < 0 || id >= t->n_vocab) return peri_fail(PERI_E_FORMAT, "tokenizer: id %d out of range", id);
    if (len > PERI_TOK_MAX_PIECE)
        return peri_fail(PERI_E_FORMAT, "tokenizer: piece %d is %zu bytes long (limit %d)", id, len,
                         PERI_TOK_MAX_PIECE);
    peri_tok_piece *p = &t->pieces[id];
    int rc = peri_tok_append_text(t, s, len, &p->off);
    if (rc) return rc;
    p->len = (uint32_t)len;
    p->boff = p->off;
    p->blen = p->len;
    p->score = score;
    p->type = (uint8_t)type;
    return PERI_OK;
}

static bool indexed(const peri_tokenizer *t, int32_t id, bool spm) {
    int ty = t->pieces[id].type;
    if (!spm) return ty != 0;
    return ty == PERI_TOK_NORMAL || ty == PERI_TOK_USER_DEFINED || ty == PERI_TOK_UNUSED;
}

// SPM indexes only the pieces text can produce (as sentencepiece's pieces_ map); BPE indexes all.
// The first id wins on duplicates, as both libraries keep the first.
int peri_tok_build_index(peri_tokenizer *t, bool spm) {
    size_t cap = 16;
    while (cap < (size_t)t->n_vocab * 2) cap *= 2;
    free(t->idx);
    t->idx = malloc(cap * sizeof *t->idx);
    if (!t->idx) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for the vocabulary index");
    memset(t->idx, 0xFF, cap * sizeof *t->idx);
    t->idx_cap = cap;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!indexed(t, id, spm)) continue;
        size_t len;
        const char *s = peri_tok_text(t, id, &len);
        size_t i = peri_hash_bytes(s, len) & (cap - 1);
        bool dup = false;
        while (t->idx[i] != UINT32_MAX) {
            size_t l2;
            const char *s2 = peri_tok_text(t, (int32_t)t->idx[i], &l2);
            if (l2 == len && memcmp(s, s2, len) == 0) { dup = true; break; }
            i = (i + 1) & (cap - 1);
        }
        if (!dup) t->idx[i] = (uint32_t)id;
    }
    return PERI_OK;
}

int32_t peri_tok_lookup(const peri_tokenizer *t, const char *s, size_t len) {
    if (!t->idx_cap) return -1;
    size_t mask = t->idx_cap - 1, i = peri_hash_bytes(s, len) & mask;
    while (t->idx[i] != UINT32_MAX) {
        size_t l2;
        const char *s2 = peri_tok_text(t, (int32_t)t->idx[i], &l2);
        if (l2 == len && memcmp(s, s2, len) == 0) return (int32_t)t->idx[i];
        i = (i + 1) & mask;
    }
    return -1;
}

bool peri_tok_is_control(const peri_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->pieces[id].type == PERI_TOK_CONTROL;
}

bool peri_tok_is_special(const peri_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab) return false;
    const peri_tok_piece *p = &t->pieces[id];
    return p->special || p->type == PERI_TOK_CONTROL || p->type == PERI_TOK_UNKNOWN;
}

// ---- loading ------------------------------------------------------------------------------------------------

void peri_tokenizer_free(peri_tokenizer *t) {
    if (!t) return;
    free(t->pieces);
    free(t->text);
    free(t->idx);
    free(t->charsmap);
    peri_u64map_free(&t->trie);
    free(t->trie_val);
    free(t->trie_off);
    free(t->trie_child);
    free(t->trie_lab);
    free(t->trie_dense_idx);
    free(t->trie_dense);
    free(t->trie_pay);
    peri_u64map_free(&t->ud_trie);
    free(t->ud_val);
    peri_u64map_free(&t->merges);
    free(t->added);
    free(t);
}

int32_t peri_tokenizer_n_vocab(const peri_tokenizer *t) { return t ? t->n_vocab : 0; }

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

#define TOK_MAX_FILE ((size_t)1 << 30)

static int load_spm_file(const char *path, peri_tokenizer **out) {
    peri_mapfile f;
    int rc = peri_mapfile_open(&f, path, true);
    if (rc) return rc;
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_SPM, 1);
    if (!t) { peri_mapfile_close(&f); return PERI_E_NOMEM; }
    rc = peri_spm_load_model(t, f.data, f.size, path);
    peri_mapfile_close(&f);
    if (rc) { peri_tokenizer_free(t); return rc; }
    *out = t;
    return PERI_OK;
}

static int load_json_file(const char *path, peri_tokenizer **out) {
    char *text;
    size_t len;
    int rc = peri_read_file(path, TOK_MAX_FILE, &text, &len);
    if (rc) return rc;
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_BPE, 1);
    if (!t) { free(text); return PERI_E_NOMEM; }
    rc = peri_bpe_load_json(t, text, len, path);
    free(text);
    if (rc) { peri_tokenizer_free(t); return rc; }
    *out = t;
    return PERI_OK;
}

static int load_vocab_merges(const char *vocab_path, const char *merges_path, const char *config_path,
                             peri_tokenizer **out) {
    char *v = NULL, *m = NULL, *c = NULL;
    size_t vl = 0, ml = 0, cl = 0;
    int rc = peri_read_file(vocab_path, TOK_MAX_FILE, &v, &vl);
    if (!rc) rc = peri_read_file(merges_path, TOK_MAX_FILE, &m, &ml);
    if (!rc && config_path && file_exists(config_path)) rc = peri_read_file(config_path, TOK_MAX_FILE, &c, &cl);
    peri_tokenizer *t = NULL;
    if (!rc) {
        t = peri_tok_alloc(PERI_TOKENIZER_BPE, 1);
        if (!t) rc = PERI_E_NOMEM;
    }
    if (!rc) rc = peri_bpe_load_vocab_merges(t, v, vl, m, ml, c, cl, vocab_path);
    free(v); free(m); free(c);
    if (rc) { peri_tokenizer_free(t); return rc; }
    *out = t;
    return PERI_OK;
}

static int load_gguf_file(const char *path, peri_tokenizer **out) {
    peri_gguf g;
    memset(&g, 0, sizeof g);
    int rc = peri_gguf_open(&g, path, true);
    if (rc) return rc;
    rc = peri_tokenizer_from_gguf(&g, out);
    peri_gguf_close(&g);
    if (rc) return peri_fail_prefix(rc, "%s: ", path);
    return PERI_OK;
}

int peri_tokenizer_load_dir(const char *dir, peri_tokenizer **out) {
    char a[4096], b[4096], c[4096];
    *out = NULL;
    snprintf(a, sizeof a, "%s/tokenizer.model", dir);
    if (file_exists(a)) return load_spm_file(a, out);
    snprintf(a, sizeof a, "%s/tokenizer.json", dir);
    if (file_exists(a)) return load_json_file(a, out);
    snprintf(a, sizeof a, "%s/vocab.json", dir);
    snprintf(b, sizeof b, "%s/merges.txt", dir);
    snprintf(c, sizeof c, "%s/tokenizer_config.json", dir);
    if (file_exists(a) && file_exists(b)) return load_vocab_merges(a, b, c, out);
    return 1;
}

int peri_tokenizer_load(const char *path, peri_tokenizer **out) {
    if (!path || !out) return peri_fail(PERI_E_ARG, "peri_tokenizer_load: path and out must not be NULL");
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return peri_fail(PERI_E_IO, "%s: no such file or folder", path);
    if (S_ISDIR(st.st_mode)) {
        int rc = peri_tokenizer_load_dir(path, out);
        if (rc == 1)
            return peri_fail(PERI_E_IO, "%s: no tokenizer.model, tokenizer.json or vocab.json + merges.txt in "
                             "this folder; pass a tokenizer file or a .gguf", path);
        return rc;
    }
    // Sniff the content rather than trusting the name: GGUF magic, JSON, else a protobuf.
    FILE *f = fopen(path, "rb");
    if (!f) return peri_fail(PERI_E_IO, "%s: cannot open", path);
    unsigned char head[16] = {0};
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (n >= 4 && memcmp(head, "GGUF", 4) == 0) return load_gguf_file(path, out);
    size_t i = 0;
    while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t')) i++;
    if (i < n && head[i] == '{') {
        if (ends_with(path, "vocab.json")) {
            // vocab.json given alone: merges.txt and tokenizer_config.json must sit beside it.
            char dir[4096], m[4096], c[4096];
            snprintf(dir, sizeof dir, "%s", path);
            char *slash = strrchr(dir, '/');
            if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
            snprintf(m, sizeof m, "%s/merges.txt", dir);
            snprintf(c, sizeof c, "%s/tokenizer_config.json", dir);
            return load_vocab_merges(path, m, c, out);
        }
        return load_json_file(path, out);
    }
    return load_spm_file(path, out);
}

// ---- encoding and decoding ----------------------------------------------------------------------------------

int64_t peri_tokenize(const peri_tokenizer *tok, const char *text, size_t len, peri_token *out, size_t n_max,
                      bool allow_special) {
    if (!tok || (!text && len)) return peri_fail(PERI_E_ARG, "peri_tokenize: NULL tokenizer or text");
    peri_ids ids = {0};
    int rc = tok->kind == PERI_TOKENIZER_SPM ? peri_spm_encode(tok, text, len, &ids)
                                              : peri_bpe_encode(tok, text, len, allow_special, &ids);
    if (rc) { free(ids.p); return rc; }
    int64_t n = (int64_t)ids.n;
    if (ids.n > n_max || (!out && ids.n)) { free(ids.p); peri_clear_error(); return -n; }
    if (ids.n) memcpy(out, ids.p, ids.n * sizeof *out);
    free(ids.p);
    return n;
}

static const char k_fffd[] = "\xEF\xBF\xBD";

// Emits the complete characters of st->pend; keeps a tail that may still become a character unless final.
// byte_wise: sentencepiece's rule (an invalid byte is one U+FFFD); else maximal subparts (HF / Python).
static int drain_pending(peri_detok_stream *st, bool final, bool byte_wise, peri_buf *out) {
    const unsigned char *s = st->pend;
    size_t n = (size_t)st->n_pend, i = 0;
    int rc = PERI_OK;
    while (i < n && !rc) {
        uint32_t cp;
        size_t l = peri_utf8_decode(s + i, n - i, &cp);
        if (l) { rc = peri_buf_put(out, s + i, l); i += l; continue; }
        size_t bad = peri_utf8_invalid_len(s + i, n - i);
        if (!final && i + bad == n && s[i] >= 0xC2 && s[i] <= 0xF4) break;   // may still complete
        rc = peri_buf_put(out, k_fffd, 3);
        i += byte_wise ? 1 : bad;
    }
    memmove(st->pend, s + i, n - i);
    st->n_pend = (int)(n - i);
    return rc;
}

static int push_bytes(peri_detok_stream *st, const unsigned char *b, size_t n, bool byte_wise, peri_buf *out) {
    for (size_t i = 0; i < n; i++) {
        // Fast path: ASCII with nothing pending.
        if (st->n_pend == 0 && b[i] < 0x80) {
            size_t j = i;
            while (j < n && b[j] < 0x80) j++;
            int rc = peri_buf_put(out, b + i, j - i);
            if (rc) return rc;
            i = j - 1;
            continue;
        }
        st->pend[st->n_pend++] = b[i];
        int rc = drain_pending(st, false, byte_wise, out);
        if (rc) return rc;
    }
    return PERI_OK;
}

int peri_detok_flush(const peri_tokenizer *t, peri_detok_stream *st, peri_buf *out) {
    bool byte_wise = t->kind == PERI_TOKENIZER_SPM;
    size_t before = out->n;
    int rc = drain_pending(st, true, byte_wise, out);
    if (out->n > before) st->started = true;
    return rc;
}

static const char k_space_sym[] = "\xE2\x96\x81";   // U+2581

int peri_detok_push(const peri_tokenizer *t, peri_detok_stream *st, int32_t id, bool skip_special,
                    peri_buf *out) {
    if (id < 0 || id >= t->n_vocab) return PERI_OK;   // unknown ids decode to nothing
    const peri_tok_piece *p = &t->pieces[id];
    int rc = PERI_OK;
    if (t->kind == PERI_TOKENIZER_BPE) {
        if (p->type == 0) return PERI_OK;               // a hole in the vocabulary (padding rows)
        if (skip_special && p->special) return PERI_OK;
        return push_bytes(st, (const unsigned char *)t->text + p->boff, p->blen, false, out);
    }
    // SentencePiece (DecodeSentencePiece in sentencepiece_processor.cc).
    if (p->type == PERI_TOK_BYTE) {
        unsigned char b = p->byte;
        size_t before = out->n;
        rc = push_bytes(st, &b, 1, true, out);
        if (out->n > before) st->started = true;
        return rc;
    }
    if ((rc = peri_detok_flush(t, st, out))) return rc;
    if (p->type == PERI_TOK_CONTROL) return PERI_OK;
    if (p->type == PERI_TOK_UNKNOWN) {
        if (skip_special) return PERI_OK;
        st->started = true;
        return peri_buf_put(out, " \xE2\x81\x87 ", 5);
    }
    const char *s = t->text + p->off;
    size_t n = p->len;
    if (!st->started && (t->add_dummy_prefix || t->remove_extra_ws) && n >= 3 && memcmp(s, k_space_sym, 3) == 0) {
        s += 3;
        n -= 3;
    }
    size_t before = out->n;
    for (size_t i = 0; i < n && !rc;) {
        if (i + 3 <= n && memcmp(s + i, k_space_sym, 3) == 0) { rc = peri_buf_put(out, " ", 1); i += 3; continue; }
        size_t j = i + 1;
        while (j < n && !(j + 3 <= n && memcmp(s + j, k_space_sym, 3) == 0)) j++;
        rc = peri_buf_put(out, s + i, j - i);
        i = j;
    }
    if (out->n > before) st->started = true;
    return rc;
}

int64_t peri_detokenize(const peri_tokenizer *tok, const peri_token *ids, size_t n, char *out, size_t size,
                        bool skip_special) {
    if (!tok || (!ids && n)) return peri_fail(PERI_E_ARG, "peri_detokenize: NULL tokenizer or ids");
    peri_buf b = {0};
    peri_detok_stream st;
    memset(&st, 0, sizeof st);
    int rc = PERI_OK;
    for (size_t i = 0; i < n && !rc; i++) rc = peri_detok_push(tok, &st, ids[i], skip_special, &b);
    if (!rc) rc = peri_detok_flush(tok, &st, &b);
    if (rc) { free(b.p); return rc; }
    int64_t len = (int64_t)b.n;
    if (b.n > size || (!out && b.n)) { free(b.p); peri_clear_error(); return -len; }
    if (b.n) memcpy(out, b.p, b.n);
    free(b.p);
    return len;
}

int peri_tokenizer_from_gguf(const peri_gguf *g, peri_tokenizer **out) {
    *out = NULL;
    gguf_str model;
    if (!peri_gguf_get_str(g, "tokenizer.ggml.model", &model))
        return peri_fail(PERI_E_FORMAT, "GGUF has no tokenizer.ggml.model key: it carries no tokenizer; pass "
                         "a tokenizer file with -m or put one beside the model");
    int et;
    uint64_t n;
    if (!peri_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n) || et != GGUF_STRING || n == 0 ||
        n > PERI_TOK_MAX_VOCAB)
        return peri_fail(PERI_E_FORMAT, "GGUF tokenizer.ggml.tokens is missing or not an array of 1..%d strings",
                         PERI_TOK_MAX_VOCAB);
    if (model.len == 4 && memcmp(model.s, "gpt2", 4) == 0) return peri_bpe_from_gguf(out, g, (int32_t)n);
    if ((model.len == 5 && memcmp(model.s, "llama", 5) == 0) || (model.len == 2 && memcmp(model.s, "t5", 2) == 0))
        return peri_spm_from_gguf(out, g, (int32_t)n);
    return peri_fail(PERI_E_UNSUPPORTED, "GGUF tokenizer.ggml.model \"%.*s\" is not supported (gpt2, llama, t5)",
                     (int)(model.len > 64 ? 64 : model.len), model.s);
}
