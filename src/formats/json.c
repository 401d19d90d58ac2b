// Strict RFC 8259 JSON parser into an arena-allocated tree, with hashed lookup for big objects.
#include "formats/json.h"

#include "core/error.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 512
// Objects with more members than this get a hash index at parse time, so json_get stays O(1) on
// tokenizer vocabularies (150k members) while small config objects keep a plain scan.
#define JSON_INDEX_MIN 32

// ---- arena ------------------------------------------------------------------------------------------------
// Every node, key and string of one document lives in a few big blocks: one free for the whole tree and
// no per-string malloc on the 11 MB tokenizer files.

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
} arena_block;

typedef struct json_doc {
    json_value root;      // first, so a json_value* from json_parse is also the json_doc*
    arena_block *blocks;
} json_doc;

static void *arena_alloc(json_doc *d, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = d->blocks;
    if (!b || b->cap - b->used < n) {
        // Blocks double from 4 KB up to 1 MB: small documents (config files, fuzz inputs) stay cheap.
        size_t cap = b ? b->cap * 2 : 4096;
        if (cap > (1u << 20)) cap = 1u << 20;
        if (cap < n) cap = n;
        arena_block *nb = malloc(sizeof *nb + cap);
        if (!nb) return NULL;
        nb->used = 0;
        nb->cap = cap;
        // A big request gets its own block behind the current one so the current block keeps filling.
        if (b && n > (1u << 19)) {
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            d->blocks = nb;
        }
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

// ---- parser state -----------------------------------------------------------------------------------------

typedef struct {
    json_value v;
    char *key;
} json_slot;

typedef struct {
    const char *s, *end, *begin;
    const char *where;
    json_doc *doc;
    json_slot *stack;     // children of the containers being parsed, innermost last
    size_t n_stack, cap_stack;
    int depth;
    int status;
    bool failed;
} json_parser;

static void pos_line_col(const char *begin, const char *at, int *line, int *col) {
    int l = 1, c = 1;
    for (const char *p = begin; p < at; p++) {
        if (*p == '\n') { l++; c = 1; }
        else if (((unsigned char)*p & 0xC0) != 0x80) c++;   // columns count characters, not bytes
    }
    *line = l;
    *col = c;
}

static bool fail_at(json_parser *p, const char *at, const char *what) {
    if (p->failed) return false;
    int line, col;
    pos_line_col(p->begin, at, &line, &col);
    p->failed = true;
    p->status = PERI_E_FORMAT;
    peri_fail(PERI_E_FORMAT, "%s%sinvalid JSON: %s at line %d, column %d", p->where ? p->where : "",
              p->where ? ": " : "", what, line, col);
    return false;
}

static bool fail_nomem(json_parser *p) {
    if (p->failed) return false;
    p->failed = true;
    p->status = PERI_E_NOMEM;
    peri_fail(PERI_E_NOMEM, "%s%sout of memory while parsing JSON", p->where ? p->where : "", p->where ? ": " : "");
    return false;
}

static void skip_ws(json_parser *p) {
    const char *s = p->s, *e = p->end;
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
    p->s = s;
}

static bool parse_value(json_parser *p, json_value *out);

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(json_parser *p, const char *at, unsigned *out) {
    if (p->end - at < 4) return fail_at(p, at, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(at[i]);
        if (h < 0) return fail_at(p, at + i, "bad hex digit in \\u escape");
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return true;
}

static size_t utf8_put(unsigned char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | cp >> 6); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

// Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid (overlong, surrogate, > U+10FFFF, cut).
static size_t utf8_valid_len(const unsigned char *s, const unsigned char *e) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) { n = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) n = 3;
    else if (c == 0xED) { n = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) n = 3;
    else if (c == 0xF0) { n = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) { n = 4; hi = 0x8F; }
    else return 0;
    if ((size_t)(e - s) < n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

// Parses the string at p->s (on the opening quote) into arena memory. With `keylen`, the string is laid
// out after a size_t length so key comparisons need no strlen and survive embedded NULs.
static bool parse_string(json_parser *p, char **out, size_t *out_len, bool as_key) {
    const char *start = p->s + 1;
    // Find the closing quote first: the decoded string is never longer than the raw one.
    const char *q = start;
    while (q < p->end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q >= p->end) return fail_at(p, p->s, "unterminated string");
    size_t raw = (size_t)(q - start);
    size_t hdr = as_key ? sizeof(size_t) : 0;
    unsigned char *buf = arena_alloc(p->doc, hdr + raw + 1);
    if (!buf) return fail_nomem(p);
    unsigned char *o = buf + hdr;
    const unsigned char *s = (const unsigned char *)start, *e = (const unsigned char *)q;
    while (s < e) {
        unsigned c = *s;
        if (c == '\\') {
            const char *esc = (const char *)s;
            s++;
            switch (*s) {
            case '"': *o++ = '"'; s++; break;
            case '\\': *o++ = '\\'; s++; break;
            case '/': *o++ = '/'; s++; break;
            case 'b': *o++ = '\b'; s++; break;
            case 'f': *o++ = '\f'; s++; break;
            case 'n': *o++ = '\n'; s++; break;
            case 'r': *o++ = '\r'; s++; break;
            case 't': *o++ = '\t'; s++; break;
            case 'u': {
                unsigned cp;
                if (!read_hex4(p, (const char *)s + 1, &cp)) return false;
                s += 5;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (e - s < 6 || s[0] != '\\' || s[1] != 'u')
                        return fail_at(p, esc, "high surrogate \\u escape not followed by a low surrogate");
                    if (!read_hex4(p, (const char *)s + 2, &lo)) return false;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return fail_at(p, esc, "high surrogate \\u escape not followed by a low surrogate");
                    s += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return fail_at(p, esc, "lone low surrogate \\u escape");
                }
                o += utf8_put(o, cp);
                break;
            }
            default: return fail_at(p, esc, "invalid escape in string");
            }
        } else if (c < 0x20) {
            return fail_at(p, (const char *)s, "control character in string (must be escaped)");
        } else if (c < 0x80) {
            *o++ = (unsigned char)c;
            s++;
        } else {
            size_t n = utf8_valid_len(s, e);
            if (!n) return fail_at(p, (const char *)s, "invalid UTF-8 in string");
            memcpy(o, s, n);
            o += n;
            s += n;
        }
    }
    *o = 0;
    size_t len = (size_t)(o - (buf + hdr));
    if (as_key) memcpy(buf, &len, sizeof len);
    *out = (char *)(buf + hdr);
    *out_len = len;
    p->s = q + 1;
    return true;
}

static locale_t g_c_locale;
static pthread_once_t g_c_locale_once = PTHREAD_ONCE_INIT;
static void c_locale_init(void) { g_c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

static bool parse_number(json_parser *p, json_value *out) {
    const char *s = p->s, *e = p->end, *start = s;
    bool neg = false, integral = true;
    if (s < e && *s == '-') { neg = true; s++; }
    if (s >= e || !(*s >= '0' && *s <= '9')) return fail_at(p, start, "invalid number");
    const char *digits = s;
    if (*s == '0') {
        s++;
        if (s < e && *s >= '0' && *s <= '9') return fail_at(p, start, "leading zero in number");
    } else {
        while (s < e && *s >= '0' && *s <= '9') s++;
    }
    const char *int_end = s;
    if (s < e && *s == '.') {
        integral = false;
        s++;
        if (s >= e || !(*s >= '0' && *s <= '9')) return fail_at(p, s, "digit expected after decimal point");
        while (s < e && *s >= '0' && *s <= '9') s++;
    }
    if (s < e && (*s == 'e' || *s == 'E')) {
        integral = false;
        s++;
        if (s < e && (*s == '+' || *s == '-')) s++;
        if (s >= e || !(*s >= '0' && *s <= '9')) return fail_at(p, s, "digit expected in exponent");
        while (s < e && *s >= '0' && *s <= '9') s++;
    }
    out->type = JSON_NUMBER;
    p->s = s;
    if (integral && int_end - digits <= 19) {
        // Accumulate as a negative number so INT64_MIN fits.
        int64_t v = 0;
        bool ok = true;
        for (const char *d = digits; d < int_end; d++) {
            int dv = *d - '0';
            if (v < (INT64_MIN + dv) / 10) { ok = false; break; }
            v = v * 10 - dv;
        }
        if (ok && !neg && v == INT64_MIN) ok = false;
        if (ok) {
            out->is_integer = true;
            out->integer = neg ? v : -v;
            out->number = (double)out->integer;
            return true;
        }
    }
    char small[64], *tmp = small;
    size_t n = (size_t)(s - start);
    if (n >= sizeof small) {
        tmp = malloc(n + 1);
        if (!tmp) return fail_nomem(p);
    }
    memcpy(tmp, start, n);
    tmp[n] = 0;
    pthread_once(&g_c_locale_once, c_locale_init);
    // strtod_l with the C locale: a host application's setlocale() must not change how "0.5" reads.
    out->number = g_c_locale ? strtod_l(tmp, NULL, g_c_locale) : strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    return true;
}

static bool push_slot(json_parser *p) {
    if (p->n_stack == p->cap_stack) {
        size_t cap = p->cap_stack ? p->cap_stack * 2 : 256;
        json_slot *ns = realloc(p->stack, cap * sizeof *ns);
        if (!ns) return fail_nomem(p);
        p->stack = ns;
        p->cap_stack = cap;
    }
    memset(&p->stack[p->n_stack], 0, sizeof p->stack[0]);
    p->n_stack++;
    return true;
}

static size_t key_len(const char *k) {
    size_t n;
    memcpy(&n, k - sizeof(size_t), sizeof n);
    return n;
}

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static size_t index_cap(size_t n) {
    size_t cap = 64;
    while (cap < n * 2) cap <<= 1;
    return cap;
}

// Open addressing over member indices (+1; 0 = empty). A later duplicate replaces the earlier entry so
// that the last one wins, as in the linear scan.
static bool build_index(json_parser *p, json_value *obj) {
    size_t cap = index_cap(obj->len);
    uint32_t *idx = arena_alloc(p->doc, cap * sizeof *idx);
    if (!idx) return fail_nomem(p);
    memset(idx, 0, cap * sizeof *idx);
    for (size_t i = 0; i < obj->len; i++) {
        const char *k = obj->keys[i];
        size_t kl = key_len(k);
        size_t h = hash_bytes(k, kl) & (cap - 1);
        while (idx[h]) {
            const char *o = obj->keys[idx[h] - 1];
            if (key_len(o) == kl && memcmp(o, k, kl) == 0) break;
            h = (h + 1) & (cap - 1);
        }
        idx[h] = (uint32_t)(i + 1);
    }
    obj->index = idx;
    return true;
}

static bool finish_container(json_parser *p, json_value *out, size_t base, bool is_obj) {
    size_t n = p->n_stack - base;
    out->len = n;
    if (n) {
        out->items = arena_alloc(p->doc, n * sizeof(json_value));
        if (!out->items) return fail_nomem(p);
        if (is_obj) {
            out->keys = arena_alloc(p->doc, n * sizeof(char *));
            if (!out->keys) return fail_nomem(p);
        }
        for (size_t i = 0; i < n; i++) {
            out->items[i] = p->stack[base + i].v;
            if (is_obj) out->keys[i] = p->stack[base + i].key;
        }
    }
    p->n_stack = base;
    if (is_obj && n > JSON_INDEX_MIN) {
        if (n >= UINT32_MAX) return fail_at(p, p->s, "object has too many members");
        return build_index(p, out);
    }
    return true;
}

static bool parse_container(json_parser *p, json_value *out, bool is_obj) {
    const char *open = p->s;
    if (++p->depth > JSON_MAX_DEPTH) return fail_at(p, open, "nesting deeper than 512 levels");
    out->type = is_obj ? JSON_OBJECT : JSON_ARRAY;
    char close = is_obj ? '}' : ']';
    p->s++;
    size_t base = p->n_stack;
    skip_ws(p);
    if (p->s < p->end && *p->s == close) {
        p->s++;
        p->depth--;
        return finish_container(p, out, base, is_obj);
    }
    for (;;) {
        skip_ws(p);
        if (!push_slot(p)) return false;
        size_t slot = p->n_stack - 1;
        if (is_obj) {
            if (p->s >= p->end) return fail_at(p, p->s, "unexpected end of input in object");
            if (*p->s != '"') return fail_at(p, p->s, "object key (a string) expected");
            char *key;
            size_t kl;
            if (!parse_string(p, &key, &kl, true)) return false;
            p->stack[slot].key = key;
            skip_ws(p);
            if (p->s >= p->end || *p->s != ':') return fail_at(p, p->s, "':' expected after object key");
            p->s++;
            skip_ws(p);
        }
        json_value v;
        memset(&v, 0, sizeof v);
        if (!parse_value(p, &v)) return false;
        p->stack[slot].v = v;   // the stack may have moved while parsing v
        skip_ws(p);
        if (p->s >= p->end) return fail_at(p, p->s, is_obj ? "unexpected end of input in object" : "unexpected end of input in array");
        if (*p->s == ',') { p->s++; continue; }
        if (*p->s == close) { p->s++; break; }
        return fail_at(p, p->s, is_obj ? "',' or '}' expected in object" : "',' or ']' expected in array");
    }
    p->depth--;
    return finish_container(p, out, base, is_obj);
}

static bool literal(json_parser *p, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(p->end - p->s) < n || memcmp(p->s, word, n) != 0) return fail_at(p, p->s, "invalid literal");
    p->s += n;
    return true;
}

static bool parse_value(json_parser *p, json_value *out) {
    skip_ws(p);
    if (p->s >= p->end) return fail_at(p, p->s, "unexpected end of input, value expected");
    switch (*p->s) {
    case '{': return parse_container(p, out, true);
    case '[': return parse_container(p, out, false);
    case '"': out->type = JSON_STRING; return parse_string(p, &out->str, &out->len, false);
    case 't': out->type = JSON_BOOL; out->boolean = true; return literal(p, "true");
    case 'f': out->type = JSON_BOOL; out->boolean = false; return literal(p, "false");
    case 'n': out->type = JSON_NULL; return literal(p, "null");
    default:
        if (*p->s == '-' || (*p->s >= '0' && *p->s <= '9')) return parse_number(p, out);
        return fail_at(p, p->s, "unexpected character, value expected");
    }
}

json_value *json_parse(const char *text, size_t len, const char *where) {
    json_doc *doc = calloc(1, sizeof *doc);
    if (!doc) {
        peri_fail(PERI_E_NOMEM, "%s%sout of memory while parsing JSON", where ? where : "", where ? ": " : "");
        return NULL;
    }
    json_parser p = {.s = text, .end = text + len, .begin = text, .where = where, .doc = doc};
    if (!text) p.s = p.end = p.begin = "";
    // A UTF-8 byte order mark is tolerated (RFC 8259 section 8.1 lets parsers ignore it).
    if (p.end - p.s >= 3 && memcmp(p.s, "\xEF\xBB\xBF", 3) == 0) p.s += 3;
    bool ok = parse_value(&p, &doc->root);
    if (ok) {
        skip_ws(&p);
        if (p.s < p.end) ok = fail_at(&p, p.s, "unexpected data after the JSON value");
    }
    free(p.stack);
    if (!ok) {
        json_free(&doc->root);
        return NULL;
    }
    return &doc->root;
}

void json_free(json_value *v) {
    if (!v) return;
    json_doc *doc = (json_doc *)v;
    arena_block *b = doc->blocks;
    while (b) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
    free(doc);
}

// ---- access -----------------------------------------------------------------------------------------------

const json_value *json_get(const json_value *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT || !key) return NULL;
    size_t kl = strlen(key);
    if (obj->index) {
        size_t cap = index_cap(obj->len);
        size_t h = hash_bytes(key, kl) & (cap - 1);
        while (obj->index[h]) {
            size_t i = obj->index[h] - 1;
            const char *k = obj->keys[i];
            if (key_len(k) == kl && memcmp(k, key, kl) == 0) return &obj->items[i];
            h = (h + 1) & (cap - 1);
        }
        return NULL;
    }
    for (size_t i = obj->len; i-- > 0;) {
        const char *k = obj->keys[i];
        if (key_len(k) == kl && memcmp(k, key, kl) == 0) return &obj->items[i];
    }
    return NULL;
}

static const char *type_name(json_type t) {
    switch (t) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    case JSON_OBJECT: return "an object";
    }
    return "?";
}

bool json_get_int(const json_value *obj, const char *key, int64_t def, int64_t *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) { *out = def; return true; }
    if (v->type == JSON_NUMBER) {
        if (v->is_integer) { *out = v->integer; return true; }
        // 2.0 or 1e3 written by some exporters still mean an integer.
        if (isfinite(v->number) && v->number == floor(v->number) && fabs(v->number) < 9.2e18) {
            *out = (int64_t)v->number;
            return true;
        }
        peri_fail(PERI_E_FORMAT, "\"%s\" should be an integer, not %g", key, v->number);
        return false;
    }
    peri_fail(PERI_E_FORMAT, "\"%s\" should be an integer, not %s", key, type_name(v->type));
    return false;
}

bool json_get_num(const json_value *obj, const char *key, double def, double *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) { *out = def; return true; }
    if (v->type == JSON_NUMBER) { *out = v->number; return true; }
    peri_fail(PERI_E_FORMAT, "\"%s\" should be a number, not %s", key, type_name(v->type));
    return false;
}

bool json_get_bool(const json_value *obj, const char *key, bool def, bool *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) { *out = def; return true; }
    if (v->type == JSON_BOOL) { *out = v->boolean; return true; }
    peri_fail(PERI_E_FORMAT, "\"%s\" should be true or false, not %s", key, type_name(v->type));
    return false;
}

bool json_get_str(const json_value *obj, const char *key, const char *def, const char **out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) { *out = def; return true; }
    if (v->type == JSON_STRING) { *out = v->str; return true; }
    peri_fail(PERI_E_FORMAT, "\"%s\" should be a string, not %s", key, type_name(v->type));
    return false;
}

// ---- writing ----------------------------------------------------------------------------------------------

size_t json_escape(char *buf, size_t size, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
#define PUT(c)                            \
    do {                                  \
        if (n + 1 < size) buf[n] = (c);   \
        n++;                              \
    } while (0)
    PUT('"');
    const unsigned char *u = (const unsigned char *)s, *e = u + len;
    while (u < e) {
        unsigned c = *u;
        if (c == '"' || c == '\\') { PUT('\\'); PUT((char)c); u++; }
        else if (c == '\n') { PUT('\\'); PUT('n'); u++; }
        else if (c == '\r') { PUT('\\'); PUT('r'); u++; }
        else if (c == '\t') { PUT('\\'); PUT('t'); u++; }
        else if (c == '\b') { PUT('\\'); PUT('b'); u++; }
        else if (c == '\f') { PUT('\\'); PUT('f'); u++; }
        else if (c < 0x20) {
            PUT('\\'); PUT('u'); PUT('0'); PUT('0'); PUT(hex[c >> 4]); PUT(hex[c & 15]);
            u++;
        } else if (c < 0x80) { PUT((char)c); u++; }
        else {
            size_t k = utf8_valid_len(u, e);
            if (k) {
                for (size_t i = 0; i < k; i++) PUT((char)u[i]);
                u += k;
            } else {
                // Invalid UTF-8 becomes U+FFFD so the output is always valid JSON.
                PUT('\\'); PUT('u'); PUT('f'); PUT('f'); PUT('f'); PUT('d');
                u++;
            }
        }
    }
    PUT('"');
#undef PUT
    if (size) buf[n < size ? n : size - 1] = 0;
    return n;
}
