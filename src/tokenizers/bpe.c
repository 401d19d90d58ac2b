// Byte-level BPE as Hugging Face tokenizers runs Qwen2: added tokens matched on raw text, NFC, the Qwen2
// split regex (hand-written over generated Unicode tables), GPT-2 byte-to-unicode mapping, and rank-ordered
// merges with a priority queue; loaders for tokenizer.json, vocab.json + merges.txt, and GGUF metadata.
#include "tokenizers/tokenizer.h"

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/json.h"
#include "tokenizers/unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The split pattern of Qwen2 (tokenizer.json pre_tokenizer), the only one this splitter implements.
static const char k_qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// ---- GPT-2 byte <-> unicode ---------------------------------------------------------------------------------

static void byte_to_cp_table(uint32_t tab[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        tab[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

// Code point -> byte (or -1) for code points below 0x144.
static void cp_to_byte_table(int16_t inv[0x144]) {
    uint32_t tab[256];
    byte_to_cp_table(tab);
    for (int i = 0; i < 0x144; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++) inv[tab[b]] = (int16_t)b;
}

// ---- building the vocabulary --------------------------------------------------------------------------------

// Fills each piece's decoded bytes: vocab strings map back through the byte table; added tokens keep their text.
static int build_bytes(peri_tokenizer *t) {
    int16_t inv[0x144];
    cp_to_byte_table(inv);
    char *tmp = malloc(PERI_TOK_MAX_PIECE + 1);
    if (!tmp) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
    int rc = PERI_OK;
    for (int32_t id = 0; id < t->n_vocab && !rc; id++) {
        peri_tok_piece *p = &t->pieces[id];
        if (!p->type || p->type == PERI_TOK_CONTROL || p->type == PERI_TOK_USER_DEFINED) continue;
        const unsigned char *s = (const unsigned char *)t->text + p->off;
        size_t n = p->len, o = 0;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t l = peri_utf8_decode(s + i, n - i, &cp);
            if (!l) { l = 1; cp = 0xFFFD; }
            if (cp < 0x144 && inv[cp] >= 0) tmp[o++] = (char)inv[cp];
            else { memcpy(tmp + o, s + i, l); o += l; }   // not a byte-level char: keep its UTF-8
            i += l;
        }
        if (o == n && memcmp(tmp, s, n) == 0) continue;
        uint32_t off;
        if ((rc = peri_tok_append_text(t, tmp, o, &off))) break;
        p->boff = off;
        p->blen = (uint32_t)o;
    }
    free(tmp);
    return rc;
}

static int add_merge(peri_tokenizer *t, const char *a, size_t al, const char *b, size_t bl, uint32_t rank,
                     char *scratch, const char *where) {
    int32_t ia = peri_tok_lookup(t, a, al), ib = peri_tok_lookup(t, b, bl);
    if (al + bl > PERI_TOK_MAX_PIECE)
        return peri_fail(PERI_E_FORMAT, "%s: merge %u is too long", where, rank);
    memcpy(scratch, a, al);
    memcpy(scratch + al, b, bl);
    int32_t im = peri_tok_lookup(t, scratch, al + bl);
    if (ia < 0 || ib < 0 || im < 0)
        return peri_fail(PERI_E_FORMAT, "%s: merge %u \"%.*s %.*s\" uses a token missing from the vocabulary "
                         "(Hugging Face rejects this file too)", where, rank + 1, (int)al, a, (int)bl, b);
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib, old;
    if (peri_u64map_get(&t->merges, key, &old)) return PERI_OK;   // the first (lowest) rank wins
    return peri_u64map_put(&t->merges, key, (uint64_t)rank << 32 | (uint32_t)im);
}

int peri_bpe_finish(peri_tokenizer *t, const char *const *merge_lines, const uint32_t *merge_lens,
                    size_t n_merges, const char *where) {
    int rc = peri_tok_build_index(t, false);
    if (rc) return rc;
    if ((rc = peri_u64map_init(&t->merges, n_merges + 1))) return rc;
    char *scratch = malloc(2 * PERI_TOK_MAX_PIECE + 2);
    if (!scratch) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n_merges && !rc; i++) {
        const char *s = merge_lines[i];
        size_t n = merge_lens[i];
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            rc = peri_fail(PERI_E_FORMAT, "%s: merge %zu \"%.*s\" is not two tokens separated by one space", where,
                           i + 1, (int)(n > 80 ? 80 : n), s);
        else
            rc = add_merge(t, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp + 1 - s), (uint32_t)i, scratch, where);
    }
    free(scratch);
    if (rc) return rc;
    uint32_t tab[256];
    byte_to_cp_table(tab);
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t l = peri_utf8_encode(tab[b], u);
        t->bpe_byte_id[b] = peri_tok_lookup(t, u, l);
    }
    return build_bytes(t);
}

static int set_vocab_size(peri_tokenizer *t, int32_t n) {
    if (n <= 0 || n > PERI_TOK_MAX_VOCAB)
        return peri_fail(PERI_E_FORMAT, "tokenizer: vocabulary size %d is out of range (1..%d)", n,
                         PERI_TOK_MAX_VOCAB);
    peri_tok_piece *p = calloc((size_t)n, sizeof *p);
    if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for %d tokens", n);
    free(t->pieces);
    t->pieces = p;
    t->n_vocab = n;
    return PERI_OK;
}

static int add_added(peri_tokenizer *t, int32_t id, bool special) {
    peri_added_token *a = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *a);
    if (!a) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
    t->added = a;
    t->added[t->n_added].id = id;
    t->added[t->n_added].special = special;
    t->n_added++;
    t->pieces[id].special = special;
    return PERI_OK;
}

// Vocab object + added-token list (array of {id, content, special}) -> pieces.
static int fill_vocab(peri_tokenizer *t, const json_value *vocab, const json_value *added, const char *where) {
    int64_t max_id = -1;
    for (size_t i = 0; i < vocab->len; i++) {
        const json_value *v = &vocab->items[i];
        if (v->type != JSON_NUMBER || !v->is_integer || v->integer < 0 || v->integer >= PERI_TOK_MAX_VOCAB)
            return peri_fail(PERI_E_FORMAT, "%s: vocab entry \"%.60s\" has no valid id", where, vocab->keys[i]);
        if (v->integer > max_id) max_id = v->integer;
    }
    for (size_t i = 0; added && i < added->len; i++) {
        int64_t id;
        if (!json_get_int(&added->items[i], "id", -1, &id) || id < 0 || id >= PERI_TOK_MAX_VOCAB)
            return peri_fail(PERI_E_FORMAT, "%s: added_tokens[%zu] has no valid id", where, i);
        if (id > max_id) max_id = id;
    }
    int rc = set_vocab_size(t, (int32_t)(max_id + 1));
    if (rc) return rc;
    for (size_t i = 0; i < vocab->len && !rc; i++) {
        const char *k = vocab->keys[i];
        int32_t id = (int32_t)vocab->items[i].integer;
        if (!t->pieces[id].type) rc = peri_tok_set_piece(t, id, k, strlen(k), 0, PERI_TOK_NORMAL);
    }
    for (size_t i = 0; added && i < added->len && !rc; i++) {
        const json_value *a = &added->items[i];
        int64_t id;
        const char *content;
        bool special;
        json_get_int(a, "id", -1, &id);
        if (!json_get_str(a, "content", NULL, &content) || !content || !*content)
            return peri_fail(PERI_E_FORMAT, "%s: added token %lld has no content", where, (long long)id);
        if (!json_get_bool(a, "special", false, &special)) return PERI_E_FORMAT;
        const json_value *cv = json_get(a, "content");
        peri_tok_piece *p = &t->pieces[id];
        p->type = 0;
        rc = peri_tok_set_piece(t, (int32_t)id, content, cv->len, 0,
                                special ? PERI_TOK_CONTROL : PERI_TOK_USER_DEFINED);
        if (!rc) rc = add_added(t, (int32_t)id, special);
    }
    return rc;
}

static int merges_from_json(peri_tokenizer *t, const json_value *merges, const char *where) {
    size_t n = merges ? merges->len : 0;
    const char **lines = malloc((n + 1) * sizeof *lines);
    uint32_t *lens = malloc((n + 1) * sizeof *lens);
    char **owned = calloc(n + 1, sizeof *owned);
    int rc = PERI_OK;
    if (!lines || !lens || !owned) rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", where);
    for (size_t i = 0; i < n && !rc; i++) {
        const json_value *m = &merges->items[i];
        if (m->type == JSON_STRING) { lines[i] = m->str; lens[i] = (uint32_t)m->len; }
        else if (m->type == JSON_ARRAY && m->len == 2 && m->items[0].type == JSON_STRING &&
                 m->items[1].type == JSON_STRING) {
            size_t a = m->items[0].len, b = m->items[1].len;
            if (memchr(m->items[0].str, ' ', a) || memchr(m->items[1].str, ' ', b)) {
                rc = peri_fail(PERI_E_UNSUPPORTED, "%s: merge %zu has a token with a space", where, i + 1);
                break;
            }
            owned[i] = malloc(a + b + 2);
            if (!owned[i]) { rc = peri_fail(PERI_E_NOMEM, "%s: out of memory", where); break; }
            memcpy(owned[i], m->items[0].str, a);
            owned[i][a] = ' ';
            memcpy(owned[i] + a + 1, m->items[1].str, b);
            lines[i] = owned[i];
            lens[i] = (uint32_t)(a + b + 1);
        } else rc = peri_fail(PERI_E_FORMAT, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", where, i);
    }
    if (!rc) rc = peri_bpe_finish(t, lines, lens, n, where);
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(lines);
    free(lens);
    return rc;
}

// Normalizer: null, NFC, or a Sequence of those.
static int check_normalizer(peri_tokenizer *t, const json_value *n, const char *where) {
    if (!n || n->type == JSON_NULL) return PERI_OK;
    const char *type;
    if (!json_get_str(n, "type", "", &type)) return PERI_E_FORMAT;
    if (strcmp(type, "NFC") == 0) { t->nfc = true; return PERI_OK; }
    if (strcmp(type, "Sequence") == 0) {
        const json_value *list = json_get(n, "normalizers");
        for (size_t i = 0; list && list->type == JSON_ARRAY && i < list->len; i++) {
            int rc = check_normalizer(t, &list->items[i], where);
            if (rc) return rc;
        }
        return PERI_OK;
    }
    return peri_fail(PERI_E_UNSUPPORTED, "%s: normalizer \"%s\" is not supported (only NFC)", where, type);
}

// Pre-tokenizer: the Qwen2 Split + ByteLevel(use_regex=false) sequence.
static bool pre_ok(const json_value *p, bool *has_split) {
    if (!p || p->type == JSON_NULL) return true;
    const char *type = "";
    json_get_str(p, "type", "", &type);
    if (strcmp(type, "Sequence") == 0) {
        const json_value *list = json_get(p, "pretokenizers");
        for (size_t i = 0; list && list->type == JSON_ARRAY && i < list->len; i++)
            if (!pre_ok(&list->items[i], has_split)) return false;
        return true;
    }
    if (strcmp(type, "Split") == 0) {
        const json_value *pat = json_get(p, "pattern");
        const char *re = "";
        if (pat) json_get_str(pat, "Regex", "", &re);
        *has_split = true;
        return strcmp(re, k_qwen2_pattern) == 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        bool use_regex = true, prefix = false;
        json_get_bool(p, "use_regex", true, &use_regex);
        json_get_bool(p, "add_prefix_space", false, &prefix);
        return !use_regex && !prefix;
    }
    return false;
}

int peri_bpe_load_json(peri_tokenizer *t, const char *text, size_t len, const char *where) {
    json_value *root = json_parse(text, len, where);
    if (!root) return PERI_E_FORMAT;
    int rc = PERI_OK;
    const json_value *model = json_get(root, "model");
    const json_value *vocab = json_get(model, "vocab");
    const char *mtype = "BPE";
    bool ignore_merges = false, has_split = false;
    if (!model || !vocab || vocab->type != JSON_OBJECT)
        rc = peri_fail(PERI_E_FORMAT, "%s: no model.vocab object; expected a Hugging Face tokenizer.json", where);
    else if (!json_get_str(model, "type", "BPE", &mtype) || strcmp(mtype, "BPE") != 0)
        rc = peri_fail(PERI_E_UNSUPPORTED, "%s: model type \"%s\" is not supported (byte-level BPE only)", where,
                       mtype);
    else if (!json_get_bool(model, "ignore_merges", false, &ignore_merges) || ignore_merges)
        rc = peri_fail(PERI_E_UNSUPPORTED, "%s: model.ignore_merges=true is not supported", where);
    else if (!pre_ok(json_get(root, "pre_tokenizer"), &has_split) || !has_split)
        rc = peri_fail(PERI_E_UNSUPPORTED, "%s: the pre_tokenizer is not the Qwen2 one (Split with the Qwen2 "
                       "regex + ByteLevel without regex); other pre-tokenizers are not supported", where);
    if (!rc) rc = check_normalizer(t, json_get(root, "normalizer"), where);
    const json_value *added = json_get(root, "added_tokens");
    if (added && added->type != JSON_ARRAY) added = NULL;
    if (!rc) rc = fill_vocab(t, vocab, added, where);
    if (!rc) {
        const json_value *merges = json_get(model, "merges");
        if (merges && merges->type != JSON_ARRAY)
            rc = peri_fail(PERI_E_FORMAT, "%s: model.merges is not an array", where);
        else rc = merges_from_json(t, merges, where);
    }
    json_free(root);
    return rc;
}

int peri_bpe_load_vocab_merges(peri_tokenizer *t, const char *vtext, size_t vlen, const char *mtext, size_t mlen,
                               const char *ctext, size_t clen, const char *where) {
    json_value *vocab = json_parse(vtext, vlen, where);
    if (!vocab) return PERI_E_FORMAT;
    json_value *cfg = NULL, *added = NULL;
    int rc = PERI_OK;
    if (vocab->type != JSON_OBJECT) rc = peri_fail(PERI_E_FORMAT, "%s: vocab.json is not an object", where);
    // tokenizer_config.json: added_tokens_decoder {"id": {"content", "special"}} -> an added_tokens array.
    if (!rc && ctext) {
        cfg = json_parse(ctext, clen, "tokenizer_config.json");
        if (!cfg) rc = PERI_E_FORMAT;
    }
    const json_value *dec = cfg ? json_get(cfg, "added_tokens_decoder") : NULL;
    if (!rc && dec && dec->type == JSON_OBJECT && dec->len) {
        // Build a JSON text and parse it: keeps fill_vocab the only place that reads added tokens.
        peri_buf b = {0};
        rc = peri_buf_put(&b, "[", 1);
        for (size_t i = 0; i < dec->len && !rc; i++) {
            const char *content = "";
            bool special = false;
            json_get_str(&dec->items[i], "content", "", &content);
            json_get_bool(&dec->items[i], "special", false, &special);
            char head[96];
            int hl = snprintf(head, sizeof head, "%s{\"id\":%lld,\"special\":%s,\"content\":", i ? "," : "",
                              atoll(dec->keys[i]), special ? "true" : "false");
            const json_value *cv = json_get(&dec->items[i], "content");
            size_t need = json_escape(NULL, 0, content, cv && cv->type == JSON_STRING ? cv->len : 0);
            char *esc = malloc(need + 1);
            if (!esc) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); break; }
            json_escape(esc, need + 1, content, cv && cv->type == JSON_STRING ? cv->len : 0);
            rc = peri_buf_put(&b, head, (size_t)hl);
            if (!rc) rc = peri_buf_put(&b, esc, strlen(esc));
            if (!rc) rc = peri_buf_put(&b, "}", 1);
            free(esc);
        }
        if (!rc) rc = peri_buf_put(&b, "]", 1);
        if (!rc) {
            added = json_parse(b.p, b.n, "tokenizer_config.json added_tokens_decoder");
            if (!added) rc = PERI_E_FORMAT;
        }
        free(b.p);
    }
    t->nfc = true;   // Qwen2Tokenizer (slow) applies NFC before splitting, as the fast tokenizer.json does
    if (!rc) rc = fill_vocab(t, vocab, added, where);
    if (!rc) {
        // merges.txt: optional "#version" header, one "a b" per line, CRLF tolerated, blank lines skipped.
        size_t cap = 1024, n = 0;
        const char **lines = malloc(cap * sizeof *lines);
        uint32_t *lens = malloc(cap * sizeof *lens);
        if (!lines || !lens) rc = peri_fail(PERI_E_NOMEM, "out of memory");
        size_t i = 0, lineno = 0;
        while (!rc && i < mlen) {
            const char *s = mtext + i;
            const char *e = memchr(s, '\n', mlen - i);
            size_t l = e ? (size_t)(e - s) : mlen - i;
            i += l + 1;
            lineno++;
            if (l && s[l - 1] == '\r') l--;
            if (l == 0 || (lineno == 1 && l >= 8 && memcmp(s, "#version", 8) == 0)) continue;
            if (n == cap) {
                cap *= 2;
                const char **nl = realloc(lines, cap * sizeof *nl);
                uint32_t *nn = nl ? realloc(lens, cap * sizeof *nn) : NULL;
                if (nl) lines = nl;
                if (nn) lens = nn;
                if (!nl || !nn) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); break; }
            }
            lines[n] = s;
            lens[n++] = (uint32_t)l;
        }
        if (!rc) rc = peri_bpe_finish(t, lines, lens, n, where);
        free(lines);
        free(lens);
    }
    json_free(added);
    json_free(cfg);
    json_free(vocab);
    return rc;
}

int peri_bpe_from_gguf(peri_tokenizer **out, const peri_gguf *g, int32_t n_vocab) {
    gguf_str pre = {"", 0};
    peri_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    if (!(pre.len == 5 && memcmp(pre.s, "qwen2", 5) == 0))
        return peri_fail(PERI_E_UNSUPPORTED, "GGUF tokenizer.ggml.pre \"%.*s\" is not supported (only qwen2)",
                         (int)pre.len, pre.s);
    peri_tokenizer *t = peri_tok_alloc(PERI_TOKENIZER_BPE, n_vocab);
    if (!t) return PERI_E_NOMEM;
    int et, rc = PERI_OK;
    uint64_t n;
    bool has_types = peri_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n) && n == (uint64_t)n_vocab;
    for (int32_t i = 0; i < n_vocab && !rc; i++) {
        gguf_str s;
        int64_t type = PERI_TOK_NORMAL;
        if (!peri_gguf_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &s) || s.len == 0) {
            rc = peri_fail(PERI_E_FORMAT, "tokenizer.ggml.tokens[%d] is not a non-empty string", i);
            break;
        }
        if (has_types) peri_gguf_arr_i64(g, "tokenizer.ggml.token_type", (uint64_t)i, &type);
        if (type == PERI_TOK_UNUSED) continue;   // embedding padding rows ([PAD...]): not tokens
        if (type < PERI_TOK_NORMAL || type > PERI_TOK_BYTE) type = PERI_TOK_NORMAL;
        rc = peri_tok_set_piece(t, i, s.s, (size_t)s.len, 0, (int)type);
        if (!rc && (type == PERI_TOK_CONTROL || type == PERI_TOK_USER_DEFINED))
            rc = add_added(t, i, type == PERI_TOK_CONTROL);
    }
    size_t nm = 0;
    if (!rc && peri_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n)) {
        if (et != GGUF_STRING || n > 16u * PERI_TOK_MAX_VOCAB)
            rc = peri_fail(PERI_E_FORMAT, "GGUF tokenizer.ggml.merges is not an array of strings");
        else nm = (size_t)n;
    }
    const char **lines = NULL;
    uint32_t *lens = NULL;
    if (!rc) {
        lines = malloc((nm + 1) * sizeof *lines);
        lens = malloc((nm + 1) * sizeof *lens);
        if (!lines || !lens) rc = peri_fail(PERI_E_NOMEM, "out of memory for %zu merges", nm);
    }
    for (size_t i = 0; i < nm && !rc; i++) {
        gguf_str s;
        if (!peri_gguf_arr_str(g, "tokenizer.ggml.merges", i, &s) || s.len > PERI_TOK_MAX_PIECE)
            rc = peri_fail(PERI_E_FORMAT, "GGUF tokenizer.ggml.merges[%zu] is not a string", i);
        else { lines[i] = s.s; lens[i] = (uint32_t)s.len; }
    }
    t->nfc = true;   // HF applies NFC for this tokenizer; llama.cpp does not (see docs/tokenizers.md)
    if (!rc) rc = peri_bpe_finish(t, lines, lens, nm, "GGUF tokenizer.ggml.merges");
    free(lines);
    free(lens);
    if (!rc) {
        int64_t v;
        if (peri_gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &v)) t->bos_id = (int32_t)v;
        if (peri_gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &v)) t->eos_id = (int32_t)v;
        if (peri_gguf_get_i64(g, "tokenizer.ggml.padding_token_id", &v)) t->pad_id = (int32_t)v;
    }
    if (rc) { peri_tokenizer_free(t); return rc; }
    *out = t;
    return PERI_OK;
}

// ---- encoding -----------------------------------------------------------------------------------------------

typedef struct { uint32_t rank; int32_t left, right, a, b, merged; } bmerge;
typedef struct { bmerge *h; size_t n, cap; } bheap;

static inline bool bm_less(const bmerge *x, const bmerge *y) {   // x pops before y
    return x->rank != y->rank ? x->rank < y->rank : x->left < y->left;
}

static int bheap_push(bheap *q, bmerge v) {
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 64;
        bmerge *p = realloc(q->h, nc * sizeof *p);
        if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
        q->h = p;
        q->cap = nc;
    }
    size_t i = q->n++;
    while (i > 0 && bm_less(&v, &q->h[(i - 1) / 2])) { q->h[i] = q->h[(i - 1) / 2]; i = (i - 1) / 2; }
    q->h[i] = v;
    return PERI_OK;
}

static bmerge bheap_pop(bheap *q) {
    bmerge top = q->h[0], v = q->h[--q->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->n) break;
        if (c + 1 < q->n && bm_less(&q->h[c + 1], &q->h[c])) c++;
        if (!bm_less(&q->h[c], &v)) break;
        q->h[i] = q->h[c];
        i = c;
    }
    if (q->n) q->h[i] = v;
    return top;
}

typedef struct { int32_t id, prev, next; } bsym;

typedef struct bpe_work {
    bsym *sym;
    size_t sym_cap;
    bheap q;
    // Per-call cache of chunk -> ids (only for long inputs, where words repeat).
    peri_u64map cache;        // hash -> index into entries
    struct { uint32_t off, len, ids_off, ids_n; } *ent;
    size_t n_ent, ent_cap;
    peri_buf keys;
    peri_ids ids;
    bool use_cache;
} bpe_work;

static int try_pair(const peri_tokenizer *t, bpe_work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return PERI_OK;
    uint64_t v;
    if (!peri_u64map_get(&t->merges, (uint64_t)(uint32_t)w->sym[l].id << 32 | (uint32_t)w->sym[r].id, &v))
        return PERI_OK;
    bmerge m = {(uint32_t)(v >> 32), l, r, w->sym[l].id, w->sym[r].id, (int32_t)(uint32_t)v};
    return bheap_push(&w->q, m);
}

static int bpe_chunk_raw(const peri_tokenizer *t, bpe_work *w, const unsigned char *s, size_t n, peri_ids *out) {
    if (n > w->sym_cap) {
        size_t nc = n < 64 ? 64 : n;
        bsym *p = realloc(w->sym, nc * sizeof *p);
        if (!p) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
        w->sym = p;
        w->sym_cap = nc;
    }
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->bpe_byte_id[s[i]];
        if (id < 0) continue;   // a byte missing from the vocabulary (no unk token): dropped, as HF does
        w->sym[m] = (bsym){id, m - 1, m + 1};
        m++;
    }
    if (m == 0) return PERI_OK;
    w->sym[m - 1].next = -1;
    w->q.n = 0;
    int rc = PERI_OK;
    for (int32_t i = 0; i + 1 < m && !rc; i++) rc = try_pair(t, w, i, i + 1);
    while (w->q.n && !rc) {
        bmerge top = bheap_pop(&w->q);
        bsym *L = &w->sym[top.left];
        if (L->id != top.a || L->next != top.right || w->sym[top.right].id != top.b) continue;
        bsym *R = &w->sym[top.right];
        L->id = top.merged;
        L->next = R->next;
        if (R->next >= 0) w->sym[R->next].prev = top.left;
        R->id = -1;
        R->prev = R->next = -1;
        rc = try_pair(t, w, L->prev, top.left);
        if (!rc) rc = try_pair(t, w, top.left, L->next);
    }
    for (int32_t i = 0; i >= 0 && !rc; i = w->sym[i].next) rc = peri_ids_put(out, w->sym[i].id);
    return rc;
}

static int bpe_chunk(const peri_tokenizer *t, bpe_work *w, const unsigned char *s, size_t n, peri_ids *out) {
    if (n == 1) {
        int32_t id = t->bpe_byte_id[s[0]];
        return id >= 0 ? peri_ids_put(out, id) : PERI_OK;
    }
    if (!w->use_cache || n > 256) return bpe_chunk_raw(t, w, s, n, out);
    uint64_t h = peri_hash_bytes(s, n), idx;
    for (uint64_t k = h;; k++) {   // linear re-probe on hash collisions between different chunks
        if (k == UINT64_MAX) k = 0;
        if (!peri_u64map_get(&w->cache, k, &idx)) { h = k; break; }
        if (w->ent[idx].len == n && memcmp(w->keys.p + w->ent[idx].off, s, n) == 0) {
            for (uint32_t j = 0; j < w->ent[idx].ids_n; j++) {
                int rc = peri_ids_put(out, w->ids.p[w->ent[idx].ids_off + j]);
                if (rc) return rc;
            }
            return PERI_OK;
        }
    }
    size_t first = out->n;
    int rc = bpe_chunk_raw(t, w, s, n, out);
    if (rc || w->n_ent >= 65536) return rc;   // bounded: later chunks just skip the cache
    if (w->n_ent == w->ent_cap) {
        size_t nc = w->ent_cap ? w->ent_cap * 2 : 256;
        void *p = realloc(w->ent, nc * sizeof *w->ent);
        if (!p) return PERI_OK;
        w->ent = p;
        w->ent_cap = nc;
    }
    uint32_t off = (uint32_t)w->keys.n, ids_off = (uint32_t)w->ids.n;
    if (peri_buf_put(&w->keys, s, n)) return PERI_OK;
    for (size_t j = first; j < out->n; j++)
        if (peri_ids_put(&w->ids, out->p[j])) return PERI_OK;
    w->ent[w->n_ent].off = off;
    w->ent[w->n_ent].len = (uint32_t)n;
    w->ent[w->n_ent].ids_off = ids_off;
    w->ent[w->n_ent].ids_n = (uint32_t)(out->n - first);
    if (peri_u64map_put(&w->cache, h, w->n_ent)) return PERI_OK;
    w->n_ent++;
    return PERI_OK;
}

static inline bool is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

static inline uint32_t ascii_lower(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';   // LATIN SMALL LETTER LONG S case-folds to 's'
    return c;
}

// Class flags with an ASCII fast path.
static inline unsigned cls(uint32_t c) {
    if (c < 128) {
        if ((c | 32) >= 'a' && (c | 32) <= 'z') return PERI_UNI_L;
        if (c >= '0' && c <= '9') return PERI_UNI_N;
        if (c == ' ' || (c >= 9 && c <= 13)) return PERI_UNI_WS;
        return 0;
    }
    return peri_uni_flags(c) & (PERI_UNI_L | PERI_UNI_N | PERI_UNI_WS);
}

// End (exclusive) of the Qwen2 regex match at code point i of cp[0..m).
static size_t qwen2_match(const uint32_t *cp, const uint8_t *cl, size_t i, size_t m) {
    uint32_t c = cp[i];
    if (c == '\'' && i + 1 < m) {
        uint32_t a = ascii_lower(cp[i + 1]);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < m) {
            uint32_t b = ascii_lower(cp[i + 2]);
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
        }
    }
    unsigned f = cl[i];
    if (f & PERI_UNI_L) {
        size_t j = i + 1;
        while (j < m && (cl[j] & PERI_UNI_L)) j++;
        return j;
    }
    if (!is_crlf(c) && !(f & PERI_UNI_N) && i + 1 < m && (cl[i + 1] & PERI_UNI_L)) {
        size_t j = i + 2;
        while (j < m && (cl[j] & PERI_UNI_L)) j++;
        return j;
    }
    if (f & PERI_UNI_N) return i + 1;
    size_t j = i;
    if (c == ' ' && i + 1 < m && !cl[i + 1]) j = i + 1;
    if (!cl[j]) {
        while (j < m && !cl[j]) j++;
        while (j < m && is_crlf(cp[j])) j++;
        return j;
    }
    // Whitespace at i.
    size_t e = i, last_nl = SIZE_MAX;
    while (e < m && (cl[e] & PERI_UNI_WS)) { if (is_crlf(cp[e])) last_nl = e; e++; }
    if (last_nl != SIZE_MAX) return last_nl + 1;
    if (e == m) return e;
    if (e - 1 > i) return e - 1;
    return e;
}

// One segment between added tokens: NFC, split, BPE each chunk.
static int encode_segment(const peri_tokenizer *t, bpe_work *w, const char *s, size_t n, peri_ids *out) {
    if (!n) return PERI_OK;
    char *nfc = NULL;
    size_t nfc_len = 0, nfc_cap = 0;
    if (t->nfc && !peri_nfc_quick(s, n)) {
        if (peri_nfc(s, n, &nfc, &nfc_len, &nfc_cap)) return peri_fail(PERI_E_NOMEM, "tokenizer: out of memory");
        s = nfc;
        n = nfc_len;
    }
    uint32_t *cp = malloc((n + 1) * sizeof *cp);
    uint32_t *off = malloc((n + 1) * sizeof *off);
    uint8_t *cl = malloc(n + 1);
    int rc = PERI_OK;
    if (!cp || !off || !cl) rc = peri_fail(PERI_E_NOMEM, "tokenizer: out of memory for %zu bytes", n);
    size_t m = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n && !rc;) {
        uint32_t c;
        size_t l = u[i] < 0x80 ? (c = u[i], 1) : peri_utf8_decode(u + i, n - i, &c);
        if (!l) { c = 0xFFFD; l = 1; }   // cannot happen: input was made valid first
        cp[m] = c;
        off[m] = (uint32_t)i;
        cl[m] = (uint8_t)cls(c);
        m++;
        i += l;
    }
    if (!rc) off[m] = (uint32_t)n;
    for (size_t i = 0; i < m && !rc;) {
        size_t j = qwen2_match(cp, cl, i, m);
        rc = bpe_chunk(t, w, u + off[i], off[j] - off[i], out);
        i = j;
    }
    free(cp);
    free(off);
    free(cl);
    free(nfc);
    return rc;
}

// Longest added token at s (allowed ones only), or -1.
static int32_t match_added(const peri_tokenizer *t, const char *s, size_t n, bool allow_special, size_t *len) {
    int32_t best = -1;
    size_t best_len = 0;
    for (int k = 0; k < t->n_added; k++) {
        if (t->added[k].special && !allow_special) continue;
        const peri_tok_piece *p = &t->pieces[t->added[k].id];
        if (p->len <= n && p->len > best_len && memcmp(s, t->text + p->off, p->len) == 0) {
            best = t->added[k].id;
            best_len = p->len;
        }
    }
    *len = best_len;
    return best;
}

int peri_bpe_encode(const peri_tokenizer *t, const char *text, size_t len, bool allow_special, peri_ids *out) {
    if (len > INT32_MAX - 8) return peri_fail(PERI_E_ARG, "tokenizer: input of %zu bytes is too long", len);
    // Invalid UTF-8 becomes U+FFFD per maximal subpart, as Python's decode('utf-8', 'replace') would give HF.
    peri_buf clean = {0};
    const unsigned char *u = (const unsigned char *)text;
    int rc = PERI_OK;
    size_t ok_from = 0;
    for (size_t i = 0; i < len && !rc;) {
        if (u[i] < 0x80) { i++; continue; }
        uint32_t c;
        size_t l = peri_utf8_decode(u + i, len - i, &c);
        if (l) { i += l; continue; }
        rc = peri_buf_put(&clean, text + ok_from, i - ok_from);
        if (!rc) rc = peri_buf_put(&clean, "\xEF\xBF\xBD", 3);
        i += peri_utf8_invalid_len(u + i, len - i);
        ok_from = i;
    }
    if (!rc && clean.p) {
        rc = peri_buf_put(&clean, text + ok_from, len - ok_from);
        text = clean.p;
        len = clean.n;
    }
    bpe_work w;
    memset(&w, 0, sizeof w);
    w.use_cache = len >= 1024;
    if (!rc && w.use_cache) rc = peri_u64map_init(&w.cache, 1024);
    // First bytes of added tokens, to skip the scan quickly.
    bool first[256] = {false};
    for (int k = 0; k < t->n_added; k++) first[(unsigned char)t->text[t->pieces[t->added[k].id].off]] = true;
    size_t seg = 0;
    for (size_t i = 0; i < len && !rc;) {
        if (!first[(unsigned char)text[i]]) { i++; continue; }
        size_t ml;
        int32_t id = match_added(t, text + i, len - i, allow_special, &ml);
        if (id < 0) { i++; continue; }
        rc = encode_segment(t, &w, text + seg, i - seg, out);
        if (!rc) rc = peri_ids_put(out, id);
        i += ml;
        seg = i;
    }
    if (!rc) rc = encode_segment(t, &w, text + seg, len - seg, out);
    free(w.sym);
    free(w.q.h);
    peri_u64map_free(&w.cache);
    free(w.ent);
    free(w.keys.p);
    free(w.ids.p);
    free(clean.p);
    return rc;
}
