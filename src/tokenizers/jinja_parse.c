// Jinja front end of the chat template renderer: preprocessing, lexer and parser of the subset, mirroring
// @huggingface/jinja (the reference the test vectors come from), with every allocation in one capped arena.
#include "tokenizers/jinja_internal.h"

#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- arena and errors ----------------------------------------------------------------------------------

void *jn_alloc(jn_ctx *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    jn_block *b = c->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (64u << 10) ? n : (64u << 10);
        if (c->mem_used + cap > c->mem_limit) {
            jn_fail(c, PERI_E_NOMEM, c->cur_pos,
                    "the template needs more than %zu MiB of memory; it builds too much data",
                    c->mem_limit >> 20);
            return NULL;
        }
        jn_block *nb = malloc(sizeof *nb + cap);
        if (!nb) {
            jn_fail(c, PERI_E_NOMEM, c->cur_pos, "out of memory");
            return NULL;
        }
        nb->used = 0;
        nb->cap = cap;
        nb->next = c->blocks;
        c->blocks = nb;
        c->mem_used += cap;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

char *jn_strdup(jn_ctx *c, const char *s, size_t n) {
    char *p = jn_alloc(c, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void jn_line_col(const jn_ctx *c, uint32_t pos, int *line, int *col) {
    int l = 1, co = 1;
    for (uint32_t i = 0; i < pos && i < c->tmpl_len; i++) {
        if (c->tmpl[i] == '\n') { l++; co = 1; }
        else co++;
    }
    *line = l;
    *col = co;
}

int jn_fail(jn_ctx *c, int status, uint32_t pos, const char *fmt, ...) {
    if (c->status) return c->status;   // keep the first message: later ones are consequences
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    jn_line_col(c, pos, &line, &col);
    c->status = status;
    return peri_fail(status, "chat template, line %d, column %d: %s", line, col, msg);
}

// ---- JavaScript whitespace (the reference's \s, trim and trimEnd) --------------------------------------

size_t jn_ws_at(const char *s, size_t n, size_t i) {
    unsigned char a = (unsigned char)s[i];
    if (a == ' ' || (a >= '\t' && a <= '\r')) return 1;
    if (a < 0xC2) return 0;
    unsigned char b = i + 1 < n ? (unsigned char)s[i + 1] : 0;
    if (a == 0xC2) return b == 0xA0 ? 2 : 0;
    unsigned char d = i + 2 < n ? (unsigned char)s[i + 2] : 0;
    if (a == 0xE1 && b == 0x9A && d == 0x80) return 3;
    if (a == 0xE2 && b == 0x80 && ((d >= 0x80 && d <= 0x8A) || d == 0xA8 || d == 0xA9 || d == 0xAF)) return 3;
    if (a == 0xE2 && b == 0x81 && d == 0x9F) return 3;
    if (a == 0xE3 && b == 0x80 && d == 0x80) return 3;
    if (a == 0xEF && b == 0xBB && d == 0xBF) return 3;
    return 0;
}

size_t jn_ws_before(const char *s, size_t end) {
    if (end >= 1 && jn_ws_at(s, end, end - 1) == 1) return 1;
    if (end >= 2 && jn_ws_at(s, end, end - 2) == 2) return 2;
    if (end >= 3 && jn_ws_at(s, end, end - 3) == 3) return 3;
    return 0;
}

// ---- preprocessing ----------------------------------------------------------------------------------------
// The reference rewrites the source before lexing (trailing newline, lstrip_blocks, trim_blocks,
// generation tags); map[] keeps each byte's offset in the original template for line:column messages.

typedef struct {
    char *s;
    uint32_t *map;
    size_t n;
} pbuf;

static int pbuf_new(jn_ctx *c, pbuf *b, size_t cap) {
    b->s = jn_alloc(c, cap + 1);
    b->map = jn_alloc(c, (cap + 1) * sizeof *b->map);
    b->n = 0;
    return b->s && b->map ? 0 : c->status;
}

static inline void pbuf_put(pbuf *b, const pbuf *from, size_t i) {
    b->s[b->n] = from->s[i];
    b->map[b->n++] = from->map[i];
}

static bool line_start(const pbuf *b, size_t i) {
    if (i == 0) return true;
    char p = b->s[i - 1];
    if (p == '\n' || p == '\r') return true;
    return i >= 3 && (unsigned char)b->s[i - 3] == 0xE2 && (unsigned char)b->s[i - 2] == 0x80 &&
           ((unsigned char)p == 0xA8 || (unsigned char)p == 0xA9);
}

// Matches {%-?\s*(end)?generation\s*-?%} at i; returns its end or 0, and whether each side has '-'.
static size_t match_generation(const pbuf *b, size_t i, bool *lstrip, bool *rstrip) {
    const char *s = b->s;
    size_t n = b->n, j = i;
    if (j + 1 >= n || s[j] != '{' || s[j + 1] != '%') return 0;
    j += 2;
    *lstrip = j < n && s[j] == '-';
    if (*lstrip) j++;
    for (size_t w; j < n && (w = jn_ws_at(s, n, j)); j += w) {}
    if (j + 3 <= n && !memcmp(s + j, "end", 3) && j + 13 <= n && !memcmp(s + j + 3, "generation", 10)) j += 3;
    if (j + 10 > n || memcmp(s + j, "generation", 10)) return 0;
    j += 10;
    for (size_t w; j < n && (w = jn_ws_at(s, n, j)); j += w) {}
    *rstrip = j < n && s[j] == '-';
    if (*rstrip) j++;
    if (j + 2 > n || s[j] != '%' || s[j + 1] != '}') return 0;
    return j + 2;
}

static int preprocess(jn_ctx *c, const char *tmpl, size_t len, pbuf *out) {
    pbuf a, b;
    if (pbuf_new(c, &a, len)) return c->status;
    memcpy(a.s, tmpl, len);
    for (size_t i = 0; i < len; i++) a.map[i] = (uint32_t)i;
    a.n = len;
    if (a.n && a.s[a.n - 1] == '\n') a.n--;

    // lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1"
    if (pbuf_new(c, &b, a.n)) return c->status;
    for (size_t i = 0; i < a.n;) {
        if (line_start(&a, i)) {
            size_t j = i;
            while (j < a.n && (a.s[j] == ' ' || a.s[j] == '\t')) j++;
            if (j + 1 < a.n && a.s[j] == '{' && (a.s[j + 1] == '#' || a.s[j + 1] == '%' || a.s[j + 1] == '-')) i = j;
        }
        pbuf_put(&b, &a, i++);
    }
    // trim_blocks: /([#%-]})\n/g -> "$1"
    if (pbuf_new(c, &a, b.n)) return c->status;
    for (size_t i = 0; i < b.n;) {
        if (i + 2 < b.n && (b.s[i] == '#' || b.s[i] == '%' || b.s[i] == '-') && b.s[i + 1] == '}' &&
            b.s[i + 2] == '\n') {
            pbuf_put(&a, &b, i);
            pbuf_put(&a, &b, i + 1);
            i += 3;
        } else {
            pbuf_put(&a, &b, i++);
        }
    }
    // {% generation %} / {% endgeneration %} tags vanish, with the whitespace around them on a '-' side.
    if (pbuf_new(c, &b, a.n)) return c->status;
    size_t floor = 0;   // a match never reaches back into the previous one
    for (size_t i = 0; i < a.n;) {
        bool ls, rs;
        size_t end = a.s[i] == '{' ? match_generation(&a, i, &ls, &rs) : 0;
        if (!end) {
            pbuf_put(&b, &a, i++);
            continue;
        }
        if (ls)
            for (size_t w; b.n > floor && (w = jn_ws_before(b.s, b.n)) && b.n - w >= floor;) b.n -= w;
        i = end;
        if (rs)
            for (size_t w; i < a.n && (w = jn_ws_at(a.s, a.n, i)); i += w) {}
        floor = b.n;
    }
    b.s[b.n] = 0;
    b.map[b.n] = (uint32_t)len;
    *out = b;
    return 0;
}

// ---- lexer ------------------------------------------------------------------------------------------------

typedef struct {
    jn_ctx *c;
    pbuf src;
    jn_token *t;
    size_t n, cap;
} lexer;

static int lex_push(lexer *L, int type, const char *s, size_t n, size_t at) {
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jn_token *t = jn_alloc(L->c, cap * sizeof *t);
        if (!t) return L->c->status;
        if (L->n) memcpy(t, L->t, L->n * sizeof *t);
        L->t = t;
        L->cap = cap;
    }
    L->t[L->n++] = (jn_token){type, s, n, L->src.map[at < L->src.n ? at : L->src.n]};
    return 0;
}

static inline int last_type(const lexer *L) { return L->n ? L->t[L->n - 1].type : -1; }

static int hexv(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static size_t utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

// A quoted string starting at *pos (the quote); unescapes into the arena.
static int lex_string(lexer *L, size_t *pos) {
    const char *s = L->src.s;
    size_t n = L->src.n, start = *pos, i = start + 1;
    char q = s[start];
    char *out = jn_alloc(L->c, n - i + 1);
    if (!out) return L->c->status;
    size_t o = 0;
    uint32_t pending_hi = 0;   // a \uD8xx waiting for its low surrogate
    for (;;) {
        if (i >= n) return jn_fail(L->c, PERI_E_FORMAT, L->src.map[start], "unterminated string literal");
        char ch = s[i];
        if (ch == q) break;
        if (ch != '\\') {
            if (pending_hi) { o += utf8_put(out + o, 0xFFFD); pending_hi = 0; }
            out[o++] = ch;
            i++;
            continue;
        }
        if (++i >= n) return jn_fail(L->c, PERI_E_FORMAT, L->src.map[start], "unterminated string literal");
        char e = s[i++];
        if (e == 'x' || e == 'u') {
            int len = e == 'x' ? 2 : 4;
            uint32_t v = 0;
            for (int k = 0; k < len; k++) {
                int h = i + (size_t)k < n ? hexv(s[i + k]) : -1;
                if (h < 0)
                    return jn_fail(L->c, PERI_E_FORMAT, L->src.map[i - 2],
                                   "invalid \\%c escape: %d hex digits are needed", e, len);
                v = v * 16 + (uint32_t)h;
            }
            i += (size_t)len;
            if (v >= 0xDC00 && v <= 0xDFFF && pending_hi) {
                o += utf8_put(out + o, 0x10000 + ((pending_hi - 0xD800) << 10) + (v - 0xDC00));
                pending_hi = 0;
                continue;
            }
            if (pending_hi) { o += utf8_put(out + o, 0xFFFD); pending_hi = 0; }
            if (v >= 0xD800 && v <= 0xDBFF) pending_hi = v;
            else o += utf8_put(out + o, v >= 0xDC00 && v <= 0xDFFF ? 0xFFFD : v);
            continue;
        }
        if (pending_hi) { o += utf8_put(out + o, 0xFFFD); pending_hi = 0; }
        char r;
        switch (e) {
        case 'n': r = '\n'; break;
        case 't': r = '\t'; break;
        case 'r': r = '\r'; break;
        case 'b': r = '\b'; break;
        case 'f': r = '\f'; break;
        case 'v': r = '\v'; break;
        case '\'': r = '\''; break;
        case '"': r = '"'; break;
        case '\\': r = '\\'; break;
        default:
            return jn_fail(L->c, PERI_E_FORMAT, L->src.map[i - 2],
                           "unknown escape '\\%c' in a string literal (use \\n, \\t, \\\\, \\', \\\", \\xHH, \\uHHHH)",
                           e);
        }
        out[o++] = r;
    }
    if (pending_hi) o += utf8_put(out + o, 0xFFFD);
    out[o] = 0;
    *pos = i + 1;
    return lex_push(L, JT_STR, out, o, start);
}

static bool is_word(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}
static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static const struct { const char *s; int type; } lex_table[] = {
    {"{%", JT_OPEN_STMT}, {"%}", JT_CLOSE_STMT}, {"{{", JT_OPEN_EXPR}, {"}}", JT_CLOSE_EXPR},
    {"(", JT_LPAREN}, {")", JT_RPAREN}, {"{", JT_LBRACE}, {"}", JT_RBRACE}, {"[", JT_LBRACKET},
    {"]", JT_RBRACKET}, {",", JT_COMMA}, {".", JT_DOT}, {":", JT_COLON}, {"|", JT_PIPE},
    {"<=", JT_CMP}, {">=", JT_CMP}, {"==", JT_CMP}, {"!=", JT_CMP}, {"<", JT_CMP}, {">", JT_CMP},
    {"+", JT_ADD}, {"-", JT_ADD}, {"~", JT_ADD}, {"**", JT_POW}, {"*", JT_MUL}, {"//", JT_MUL},
    {"/", JT_MUL}, {"%", JT_MUL}, {"=", JT_EQUALS},
};

static int lex(jn_ctx *c, const char *tmpl, size_t len, jn_token **toks, size_t *n_toks) {
    lexer L = {.c = c};
    if (preprocess(c, tmpl, len, &L.src)) return c->status;
    const char *s = L.src.s;
    size_t n = L.src.n, i = 0;
    int curly = 0;
    while (i < n) {
        int lt = last_type(&L);
        if (lt < 0 || lt == JT_CLOSE_STMT || lt == JT_CLOSE_EXPR || lt == JT_COMMENT) {
            size_t j = i;
            while (j < n && !(s[j] == '{' && j + 1 < n && (s[j + 1] == '%' || s[j + 1] == '{' || s[j + 1] == '#'))) j++;
            if (j > i) {
                if (lex_push(&L, JT_TEXT, s + i, j - i, i)) return c->status;
                i = j;
                continue;
            }
        }
        if (s[i] == '{' && i + 1 < n && s[i + 1] == '#') {
            size_t start = i;
            i += 2;
            bool strip_before = i < n && s[i] == '-';
            if (strip_before) i++;
            size_t body = i;
            while (!(i + 1 < n && s[i] == '#' && s[i + 1] == '}')) {
                if (i + 2 >= n) return jn_fail(c, PERI_E_FORMAT, L.src.map[start], "comment {# is never closed with #}");
                i++;
            }
            bool strip_after = i > body && s[i - 1] == '-';
            if (strip_before && last_type(&L) == JT_TEXT) {
                jn_token *t = &L.t[L.n - 1];
                for (size_t w; t->n && (w = jn_ws_before(t->s, t->n));) t->n -= w;
                if (!t->n) L.n--;
            }
            if (lex_push(&L, JT_COMMENT, s + body, 0, start)) return c->status;
            i += 2;
            if (strip_after)
                for (size_t w; i < n && (w = jn_ws_at(s, n, i)); i += w) {}
            continue;
        }
        if (i + 2 < n && s[i] == '{' && (s[i + 1] == '%' || s[i + 1] == '{') && s[i + 2] == '-') {
            if (last_type(&L) == JT_TEXT) {
                jn_token *t = &L.t[L.n - 1];
                for (size_t w; t->n && (w = jn_ws_before(t->s, t->n));) t->n -= w;
                if (!t->n) L.n--;
            }
            if (lex_push(&L, s[i + 1] == '%' ? JT_OPEN_STMT : JT_OPEN_EXPR, s + i, 2, i)) return c->status;
            if (s[i + 1] == '{') curly = 0;
            i += 3;
            continue;
        }
        for (size_t w; i < n && (w = jn_ws_at(s, n, i)); i += w) {}
        if (i >= n) break;
        if (i + 2 < n && s[i] == '-' && (s[i + 1] == '%' || s[i + 1] == '}') && s[i + 2] == '}') {
            if (lex_push(&L, s[i + 1] == '%' ? JT_CLOSE_STMT : JT_CLOSE_EXPR, s + i + 1, 2, i)) return c->status;
            i += 3;
            for (size_t w; i < n && (w = jn_ws_at(s, n, i)); i += w) {}
            continue;
        }
        char ch = s[i];
        if (ch == '-' || ch == '+') {
            int pt = last_type(&L);
            if (pt < 0 || pt == JT_TEXT)
                return jn_fail(c, PERI_E_FORMAT, L.src.map[i], "unexpected '%c' outside a tag", ch);
            if (!(pt == JT_IDENT || pt == JT_NUM || pt == JT_STR || pt == JT_RPAREN || pt == JT_RBRACKET)) {
                size_t start = i++;
                while (i < n && is_digit(s[i])) i++;
                if (i > start + 1 && i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
                    i++;
                    while (i < n && is_digit(s[i])) i++;
                }
                if (i > start + 1) {
                    if (lex_push(&L, JT_NUM, s + start, i - start, start)) return c->status;
                } else if (lex_push(&L, JT_UNARY, s + start, 1, start)) {
                    return c->status;
                }
                continue;
            }
        }
        bool matched = false;
        for (size_t k = 0; k < sizeof lex_table / sizeof lex_table[0]; k++) {
            size_t m = strlen(lex_table[k].s);
            if (lex_table[k].type == JT_CLOSE_EXPR && curly > 0) continue;
            if (i + m <= n && !memcmp(s + i, lex_table[k].s, m)) {
                int type = lex_table[k].type;
                if (lex_push(&L, type, s + i, m, i)) return c->status;
                if (type == JT_OPEN_EXPR) curly = 0;
                else if (type == JT_LBRACE) curly++;
                else if (type == JT_RBRACE) curly--;
                i += m;
                matched = true;
                break;
            }
        }
        if (matched) continue;
        if (ch == '\'' || ch == '"') {
            if (lex_string(&L, &i)) return c->status;
            continue;
        }
        if (is_digit(ch)) {
            size_t start = i;
            while (i < n && is_digit(s[i])) i++;
            if (last_type(&L) != JT_DOT && i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
                i++;
                while (i < n && is_digit(s[i])) i++;
            }
            if (lex_push(&L, JT_NUM, s + start, i - start, start)) return c->status;
            continue;
        }
        if (is_word(ch)) {
            size_t start = i;
            while (i < n && is_word(s[i])) i++;
            if (lex_push(&L, JT_IDENT, s + start, i - start, start)) return c->status;
            continue;
        }
        if ((unsigned char)ch >= 0x20 && (unsigned char)ch < 0x7F)
            return jn_fail(c, PERI_E_FORMAT, L.src.map[i], "unexpected character '%c' inside a tag", ch);
        return jn_fail(c, PERI_E_FORMAT, L.src.map[i], "unexpected byte 0x%02X inside a tag", (unsigned char)ch);
    }
    *toks = L.t;
    *n_toks = L.n;
    c->eof_pos = L.src.map[L.src.n];
    return 0;
}

// ---- parser -----------------------------------------------------------------------------------------------

typedef struct {
    jn_ctx *c;
    jn_token *t;
    size_t n, i;
    int depth;
} parser;

static const char *tok_name(int type) {
    static const char *names[] = {
        "text", "number", "string", "name", "'='", "'('", "')'", "'{%'", "'%}'", "'{{'", "'}}'", "'['",
        "']'", "'{'", "'}'", "','", "'.'", "':'", "'|'", "operator", "operator", "'**'", "comparison",
        "sign", "comment",
    };
    return type >= 0 && type < (int)(sizeof names / sizeof names[0]) ? names[type] : "end of template";
}

static uint32_t cur_pos(const parser *p) { return p->i < p->n ? p->t[p->i].pos : p->c->eof_pos; }

static int perr(parser *p, const char *fmt, const char *arg) {
    return jn_fail(p->c, PERI_E_FORMAT, cur_pos(p), fmt, arg);
}

static bool is_type(const parser *p, int type) { return p->i < p->n && p->t[p->i].type == type; }
static bool tok_is(const jn_token *t, const char *word) {
    return t->type == JT_IDENT && t->n == strlen(word) && !memcmp(t->s, word, t->n);
}
static bool is_word_at(const parser *p, size_t k, const char *word) {
    return p->i + k < p->n && tok_is(&p->t[p->i + k], word);
}
static bool is_stmt(const parser *p, const char *a, const char *b, const char *d) {
    if (!(is_type(p, JT_OPEN_STMT) && p->i + 1 < p->n)) return false;
    const jn_token *t = &p->t[p->i + 1];
    return (a && tok_is(t, a)) || (b && tok_is(t, b)) || (d && tok_is(t, d));
}

static int expect(parser *p, int type, const char *what) {
    if (!is_type(p, type)) {
        char msg[160];
        snprintf(msg, sizeof msg, "expected %s, found %s", what, p->i < p->n ? tok_name(p->t[p->i].type) : "end of template");
        return perr(p, "%s", msg);
    }
    p->i++;
    return 0;
}

static jn_node *mk(parser *p, int kind, uint32_t pos) {
    jn_node *nd = jn_alloc(p->c, sizeof *nd);
    if (!nd) return NULL;
    memset(nd, 0, sizeof *nd);
    nd->kind = (uint8_t)kind;
    nd->pos = pos;
    return nd;
}

typedef struct {
    jn_node **v;
    size_t n, cap;
} nvec;

static int nvec_push(parser *p, nvec *v, jn_node *nd) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        jn_node **nv = jn_alloc(p->c, cap * sizeof *nv);
        if (!nv) return p->c->status;
        if (v->n) memcpy(nv, v->v, v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = nd;
    return 0;
}

static int parse_expr(parser *p, jn_node **out);
static int parse_primary(parser *p, jn_node **out);
static int parse_any(parser *p, jn_node **out);

static int enter(parser *p) {
    if (++p->depth > PERI_CHAT_MAX_NESTING)
        return jn_fail(p->c, PERI_E_NOMEM, cur_pos(p), "nesting deeper than %d levels", PERI_CHAT_MAX_NESTING);
    return 0;
}

// Statements until one of the closing tags; `open` is where the block began, for the message.
static int parse_body(parser *p, nvec *body, const char *a, const char *b, const char *d, uint32_t open,
                      const char *what) {
    while (!is_stmt(p, a, b, d)) {
        if (p->i >= p->n)
            return jn_fail(p->c, PERI_E_FORMAT, open, "%s is never closed: add {%% %s %%}", what, d ? d : a);
        jn_node *nd;
        if (parse_any(p, &nd)) return p->c->status;
        if (nd && nvec_push(p, body, nd)) return p->c->status;
    }
    return 0;
}

static int end_tag(parser *p, const char *word) {
    if (expect(p, JT_OPEN_STMT, "'{%'")) return p->c->status;
    if (!is_word_at(p, 0, word)) return perr(p, "expected %s", word);
    p->i++;
    return expect(p, JT_CLOSE_STMT, "'%}'");
}

static int parse_seq(parser *p, bool primary, jn_node **out) {
    uint32_t pos = cur_pos(p);
    jn_node *first;
    if ((primary ? parse_primary(p, &first) : parse_expr(p, &first))) return p->c->status;
    if (!is_type(p, JT_COMMA)) {
        *out = first;
        return 0;
    }
    nvec v = {0};
    if (nvec_push(p, &v, first)) return p->c->status;
    while (is_type(p, JT_COMMA)) {
        p->i++;
        jn_node *e;
        if ((primary ? parse_primary(p, &e) : parse_expr(p, &e)) || nvec_push(p, &v, e)) return p->c->status;
    }
    jn_node *t = mk(p, JN_TUPLE, pos);
    if (!t) return p->c->status;
    t->list = v.v;
    t->nlist = v.n;
    *out = t;
    return 0;
}

static int parse_args(parser *p, bool params, jn_node ***list, size_t *n) {
    if (expect(p, JT_LPAREN, "'('")) return p->c->status;
    nvec v = {0};
    bool saw_kw = false;
    while (!is_type(p, JT_RPAREN)) {
        if (p->i >= p->n) return perr(p, "%s", "argument list is never closed with ')'");
        if (is_type(p, JT_POW) || (is_type(p, JT_MUL) && p->t[p->i].n == 1 && p->t[p->i].s[0] == '*'))
            return jn_fail(p->c, PERI_E_UNSUPPORTED, cur_pos(p), "argument unpacking (* and **) is not supported");
        uint32_t pos = cur_pos(p);
        jn_node *a;
        if (parse_expr(p, &a)) return p->c->status;
        if (is_type(p, JT_EQUALS)) {
            p->i++;
            if (a->kind != JN_IDENT) return jn_fail(p->c, PERI_E_FORMAT, pos, "a keyword argument needs a name before '='");
            jn_node *kw = mk(p, JN_KWARG, pos);
            if (!kw || parse_expr(p, &kw->a)) return p->c->status;
            kw->s = a->s;
            kw->n = a->n;
            a = kw;
            saw_kw = true;
        } else if (saw_kw) {
            return jn_fail(p->c, PERI_E_FORMAT, pos,
                           params ? "a parameter without default follows one with a default"
                                  : "a positional argument follows a keyword argument");
        } else if (params && a->kind != JN_IDENT) {
            return jn_fail(p->c, PERI_E_FORMAT, pos, "expected a parameter name");
        }
        if (params)
            for (size_t k = 0; k < v.n; k++)
                if (v.v[k]->n == a->n && !memcmp(v.v[k]->s, a->s, a->n))
                    return jn_fail(p->c, PERI_E_FORMAT, pos, "duplicate parameter name '%.*s'", (int)a->n, a->s);
        if (nvec_push(p, &v, a)) return p->c->status;
        if (is_type(p, JT_COMMA)) p->i++;
    }
    p->i++;
    *list = v.v;
    *n = v.n;
    return 0;
}

static int parse_members(parser *p, jn_node **obj) {
    while (is_type(p, JT_DOT) || is_type(p, JT_LBRACKET)) {
        uint32_t pos = cur_pos(p);
        bool computed = is_type(p, JT_LBRACKET);
        p->i++;
        jn_node *m = mk(p, JN_MEMBER, pos);
        if (!m) return p->c->status;
        m->a = *obj;
        m->flag = computed;
        if (computed) {
            if (enter(p)) return p->c->status;
            jn_node *parts[3] = {0};
            int np = 0;
            bool slice = false;
            while (!is_type(p, JT_RBRACKET)) {
                if (p->i >= p->n) return perr(p, "%s", "'[' is never closed with ']'");
                if (np == 3) return perr(p, "%s", "a slice takes at most 3 parts (start:stop:step)");
                if (is_type(p, JT_COLON)) {
                    parts[np++] = NULL;
                    p->i++;
                    slice = true;
                } else {
                    if (parse_expr(p, &parts[np++])) return p->c->status;
                    if (is_type(p, JT_COLON)) {
                        p->i++;
                        slice = true;
                    }
                }
            }
            p->depth--;
            if (np == 0) return perr(p, "%s", "expected an index or a slice inside []");
            if (slice) {
                jn_node *sl = mk(p, JN_SLICE, pos);
                if (!sl) return p->c->status;
                sl->a = parts[0];
                sl->b = np > 1 ? parts[1] : NULL;
                sl->c3 = np > 2 ? parts[2] : NULL;
                m->b = sl;
            } else {
                if (np != 1) return perr(p, "%s", "expected one index inside []");
                m->b = parts[0];
            }
            if (expect(p, JT_RBRACKET, "']'")) return p->c->status;
        } else {
            jn_node *prop;
            if (parse_primary(p, &prop)) return p->c->status;
            if (prop->kind != JN_IDENT && prop->kind != JN_INT)
                return jn_fail(p->c, PERI_E_FORMAT, prop->pos, "expected a name or an integer after '.'");
            m->b = prop;
        }
        *obj = m;
    }
    return 0;
}

static int parse_call(parser *p, jn_node *callee, jn_node **out) {
    for (;;) {
        jn_node *cl = mk(p, JN_CALL, cur_pos(p));
        if (!cl) return p->c->status;
        cl->a = callee;
        if (parse_args(p, false, &cl->list, &cl->nlist)) return p->c->status;
        callee = cl;
        if (parse_members(p, &callee)) return p->c->status;
        if (!is_type(p, JT_LPAREN)) break;
    }
    *out = callee;
    return 0;
}

static int parse_primary(parser *p, jn_node **out) {
    if (p->i >= p->n) return perr(p, "%s", "unexpected end of template inside a tag");
    if (enter(p)) return p->c->status;
    const jn_token *t = &p->t[p->i++];
    jn_node *nd = NULL;
    switch (t->type) {
    case JT_NUM: {
        char buf[64];
        if (t->n >= sizeof buf) return jn_fail(p->c, PERI_E_FORMAT, t->pos, "number literal too long");
        memcpy(buf, t->s, t->n);
        buf[t->n] = 0;
        bool is_float = memchr(t->s, '.', t->n) != NULL;
        nd = mk(p, is_float ? JN_FLOAT : JN_INT, t->pos);
        if (!nd) return p->c->status;
        if (is_float) {
            nd->f = strtod(buf, NULL);
        } else {
            double d = strtod(buf, NULL);
            if (d > 9007199254740992.0 || d < -9007199254740992.0)
                return jn_fail(p->c, PERI_E_UNSUPPORTED, t->pos, "integer literal %s is beyond 2^53", buf);
            nd->i = (int64_t)d;
            nd->flag = d == 0 && buf[0] == '-';   // the literal -0 (a JavaScript number with its sign)
        }
        break;
    }
    case JT_STR: {
        nd = mk(p, JN_STR, t->pos);
        if (!nd) return p->c->status;
        nd->s = t->s;
        nd->n = t->n;
        if (is_type(p, JT_STR)) {   // adjacent literals concatenate
            size_t total = t->n;
            for (size_t k = p->i; k < p->n && p->t[k].type == JT_STR; k++) total += p->t[k].n;
            char *buf = jn_alloc(p->c, total + 1);
            if (!buf) return p->c->status;
            memcpy(buf, t->s, t->n);
            size_t o = t->n;
            while (is_type(p, JT_STR)) {
                memcpy(buf + o, p->t[p->i].s, p->t[p->i].n);
                o += p->t[p->i++].n;
            }
            nd->s = buf;
            nd->n = o;
        }
        break;
    }
    case JT_IDENT:
        nd = mk(p, JN_IDENT, t->pos);
        if (!nd) return p->c->status;
        nd->s = t->s;
        nd->n = t->n;
        break;
    case JT_LPAREN:
        if (parse_seq(p, false, &nd) || expect(p, JT_RPAREN, "')'")) return p->c->status;
        break;
    case JT_LBRACKET: {
        nvec v = {0};
        while (!is_type(p, JT_RBRACKET)) {
            if (p->i >= p->n) return jn_fail(p->c, PERI_E_FORMAT, t->pos, "'[' is never closed with ']'");
            jn_node *e;
            if (parse_expr(p, &e) || nvec_push(p, &v, e)) return p->c->status;
            if (is_type(p, JT_COMMA)) p->i++;
        }
        p->i++;
        nd = mk(p, JN_ARRAY, t->pos);
        if (!nd) return p->c->status;
        nd->list = v.v;
        nd->nlist = v.n;
        break;
    }
    case JT_LBRACE: {
        nvec keys = {0}, vals = {0};
        while (!is_type(p, JT_RBRACE)) {
            if (p->i >= p->n) return jn_fail(p->c, PERI_E_FORMAT, t->pos, "'{' is never closed with '}'");
            jn_node *k, *v;
            if (parse_expr(p, &k) || expect(p, JT_COLON, "':' between key and value") || parse_expr(p, &v) ||
                nvec_push(p, &keys, k) || nvec_push(p, &vals, v))
                return p->c->status;
            if (is_type(p, JT_COMMA)) p->i++;
        }
        p->i++;
        nd = mk(p, JN_DICT, t->pos);
        if (!nd) return p->c->status;
        nd->list = keys.v;
        nd->list2 = vals.v;
        nd->nlist = keys.n;
        break;
    }
    default:
        p->i--;
        return perr(p, "unexpected %s", tok_name(t->type));
    }
    p->depth--;
    *out = nd;
    return 0;
}

static int parse_call_member(parser *p, jn_node **out) {
    if (parse_primary(p, out) || parse_members(p, out)) return p->c->status;
    if (is_type(p, JT_LPAREN)) return parse_call(p, *out, out);
    return 0;
}

static int parse_unary_sign(parser *p, jn_node **out) {
    if (p->i < p->n && (p->t[p->i].type == JT_UNARY || p->t[p->i].type == JT_ADD) &&
        (p->t[p->i].s[0] == '-' || p->t[p->i].s[0] == '+') && p->t[p->i].n == 1) {
        jn_node *u = mk(p, JN_UNARY, cur_pos(p));
        if (!u) return p->c->status;
        u->op = p->t[p->i++].s[0] == '-' ? JOP_NEG : JOP_POS;
        if (enter(p) || parse_unary_sign(p, &u->a)) return p->c->status;
        p->depth--;
        *out = u;
        return 0;
    }
    return parse_call_member(p, out);
}

static int parse_filter(parser *p, jn_node **out) {
    if (parse_unary_sign(p, out)) return p->c->status;
    while (is_type(p, JT_PIPE)) {
        uint32_t pos = cur_pos(p);
        p->i++;
        jn_node *name;
        if (parse_primary(p, &name)) return p->c->status;
        if (name->kind != JN_IDENT) return jn_fail(p->c, PERI_E_FORMAT, name->pos, "expected a filter name after '|'");
        jn_node *f = mk(p, JN_FILTER, pos);
        if (!f) return p->c->status;
        f->a = *out;
        f->s = name->s;
        f->n = name->n;
        if (is_type(p, JT_LPAREN)) {
            f->flag = true;   // called form: name(args)
            if (parse_args(p, false, &f->list, &f->nlist)) return p->c->status;
            if (is_type(p, JT_DOT) || is_type(p, JT_LBRACKET) || is_type(p, JT_LPAREN))
                return jn_fail(p->c, PERI_E_UNSUPPORTED, cur_pos(p),
                               "member access or call right after a filter call; add parentheses: (x|f(...)).y");
        }
        *out = f;
    }
    return 0;
}

static int parse_test(parser *p, jn_node **out) {
    if (parse_filter(p, out)) return p->c->status;
    while (is_word_at(p, 0, "is")) {
        uint32_t pos = cur_pos(p);
        p->i++;
        jn_node *t = mk(p, JN_TEST, pos);
        if (!t) return p->c->status;
        if (is_word_at(p, 0, "not")) {
            t->flag = true;
            p->i++;
        }
        jn_node *name;
        if (parse_primary(p, &name)) return p->c->status;
        if (name->kind != JN_IDENT) return jn_fail(p->c, PERI_E_FORMAT, name->pos, "expected a test name after 'is'");
        t->a = *out;
        t->s = name->s;
        t->n = name->n;
        *out = t;
    }
    return 0;
}

static int binop_of(const jn_token *t) {
    const char *s = t->s;
    size_t n = t->n;
    if (n == 1) {
        switch (s[0]) {
        case '+': return JOP_ADD;
        case '-': return JOP_SUB;
        case '~': return JOP_CONCAT;
        case '*': return JOP_MUL;
        case '/': return JOP_DIV;
        case '%': return JOP_MOD;
        case '<': return JOP_LT;
        case '>': return JOP_GT;
        }
    } else if (n == 2) {
        if (!memcmp(s, "//", 2)) return JOP_FLOORDIV;
        if (!memcmp(s, "**", 2)) return JOP_POW;
        if (!memcmp(s, "==", 2)) return JOP_EQ;
        if (!memcmp(s, "!=", 2)) return JOP_NE;
        if (!memcmp(s, "<=", 2)) return JOP_LE;
        if (!memcmp(s, ">=", 2)) return JOP_GE;
    }
    return -1;
}

static int mk_bin(parser *p, int op, uint32_t pos, jn_node *l, jn_node *r, jn_node **out) {
    jn_node *b = mk(p, JN_BINARY, pos);
    if (!b) return p->c->status;
    b->op = (uint8_t)op;
    b->a = l;
    b->b = r;
    *out = b;
    return 0;
}

typedef int (*parse_fn)(parser *, jn_node **);

static int parse_left_assoc(parser *p, jn_node **out, parse_fn next, int tok_type) {
    if (next(p, out)) return p->c->status;
    while (is_type(p, tok_type)) {
        const jn_token *t = &p->t[p->i++];
        jn_node *r;
        if (next(p, &r) || mk_bin(p, binop_of(t), t->pos, *out, r, out)) return p->c->status;
    }
    return 0;
}

static int parse_pow(parser *p, jn_node **out) { return parse_left_assoc(p, out, parse_test, JT_POW); }
static int parse_mul(parser *p, jn_node **out) { return parse_left_assoc(p, out, parse_pow, JT_MUL); }
static int parse_add(parser *p, jn_node **out) { return parse_left_assoc(p, out, parse_mul, JT_ADD); }

static int parse_cmp(parser *p, jn_node **out) {
    if (parse_add(p, out)) return p->c->status;
    for (;;) {
        int op;
        uint32_t pos = cur_pos(p);
        if (is_word_at(p, 0, "not") && is_word_at(p, 1, "in")) {
            op = JOP_NOTIN;
            p->i += 2;
        } else if (is_word_at(p, 0, "in")) {
            op = JOP_IN;
            p->i++;
        } else if (is_type(p, JT_CMP)) {
            op = binop_of(&p->t[p->i++]);
        } else {
            return 0;
        }
        jn_node *r;
        if (parse_add(p, &r) || mk_bin(p, op, pos, *out, r, out)) return p->c->status;
    }
}

static int parse_not(parser *p, jn_node **out) {
    if (is_word_at(p, 0, "not")) {
        jn_node *u = mk(p, JN_UNARY, cur_pos(p));
        if (!u) return p->c->status;
        p->i++;
        u->op = JOP_NOT;
        if (enter(p) || parse_not(p, &u->a)) return p->c->status;
        p->depth--;
        *out = u;
        return 0;
    }
    return parse_cmp(p, out);
}

static int parse_and(parser *p, jn_node **out) {
    if (parse_not(p, out)) return p->c->status;
    while (is_word_at(p, 0, "and")) {
        uint32_t pos = cur_pos(p);
        p->i++;
        jn_node *r;
        if (parse_not(p, &r) || mk_bin(p, JOP_AND, pos, *out, r, out)) return p->c->status;
    }
    return 0;
}

static int parse_or(parser *p, jn_node **out) {
    if (parse_and(p, out)) return p->c->status;
    while (is_word_at(p, 0, "or")) {
        uint32_t pos = cur_pos(p);
        p->i++;
        jn_node *r;
        if (parse_and(p, &r) || mk_bin(p, JOP_OR, pos, *out, r, out)) return p->c->status;
    }
    return 0;
}

static int parse_if_expr(parser *p, jn_node **out) {
    if (parse_or(p, out)) return p->c->status;
    if (is_word_at(p, 0, "if")) {
        uint32_t pos = cur_pos(p);
        p->i++;
        jn_node *test;
        if (parse_or(p, &test)) return p->c->status;
        jn_node *t = mk(p, JN_TERNARY, pos);
        if (!t) return p->c->status;
        t->a = test;
        t->b = *out;
        if (is_word_at(p, 0, "else")) {
            p->i++;
            if (enter(p) || parse_if_expr(p, &t->c3)) return p->c->status;
            p->depth--;
        } else {
            t->kind = JN_SELECT;
        }
        *out = t;
    }
    return 0;
}

static int parse_expr(parser *p, jn_node **out) {
    if (enter(p)) return p->c->status;
    int r = parse_if_expr(p, out);
    p->depth--;
    return r;
}

static int parse_if(parser *p, uint32_t open, jn_node **out) {
    jn_node *nd = mk(p, JN_IF, open);
    if (!nd || parse_expr(p, &nd->a) || expect(p, JT_CLOSE_STMT, "'%}'")) return p->c->status;
    nvec body = {0}, alt = {0};
    if (parse_body(p, &body, "elif", "else", "endif", open, "{% if %}")) return p->c->status;
    if (is_stmt(p, "elif", NULL, NULL)) {
        uint32_t pos = p->t[p->i].pos;
        p->i += 2;
        jn_node *e;
        if (enter(p) || parse_if(p, pos, &e) || nvec_push(p, &alt, e)) return p->c->status;
        p->depth--;
    } else if (is_stmt(p, "else", NULL, NULL)) {
        p->i += 2;
        if (expect(p, JT_CLOSE_STMT, "'%}'") || parse_body(p, &alt, "endif", NULL, NULL, open, "{% if %}"))
            return p->c->status;
    }
    nd->list = body.v;
    nd->nlist = body.n;
    nd->list2 = alt.v;
    nd->nlist2 = alt.n;
    *out = nd;
    return 0;
}

static int parse_stmt(parser *p, jn_node **out) {
    uint32_t open = cur_pos(p);
    p->i++;   // {%
    if (!is_type(p, JT_IDENT)) return perr(p, "%s", "expected a statement name after '{%'");
    const jn_token *name = &p->t[p->i++];
    if (enter(p)) return p->c->status;
    jn_node *nd = NULL;
    if (tok_is(name, "set")) {
        nd = mk(p, JN_SET, open);
        if (!nd || parse_seq(p, false, &nd->a)) return p->c->status;
        if (nd->a->kind != JN_IDENT && nd->a->kind != JN_TUPLE && nd->a->kind != JN_MEMBER)
            return jn_fail(p->c, PERI_E_FORMAT, nd->a->pos, "{%% set %%} needs a name, names, or ns.attribute");
        if (is_type(p, JT_EQUALS)) {
            p->i++;
            if (parse_seq(p, false, &nd->b)) return p->c->status;
        } else {
            nvec body = {0};
            if (expect(p, JT_CLOSE_STMT, "'=' or '%}'") ||
                parse_body(p, &body, "endset", NULL, NULL, open, "{% set %} block"))
                return p->c->status;
            p->i += 2;
            nd->list = body.v;
            nd->nlist = body.n;
            nd->flag = true;
        }
        if (expect(p, JT_CLOSE_STMT, "'%}'")) return p->c->status;
    } else if (tok_is(name, "if")) {
        if (parse_if(p, open, &nd) || end_tag(p, "endif")) return p->c->status;
    } else if (tok_is(name, "for")) {
        nd = mk(p, JN_FOR, open);
        if (!nd || parse_seq(p, true, &nd->a)) return p->c->status;
        if (nd->a->kind != JN_IDENT && nd->a->kind != JN_TUPLE)
            return jn_fail(p->c, PERI_E_FORMAT, nd->a->pos, "expected a loop variable name (or names) after 'for'");
        if (!is_word_at(p, 0, "in")) return perr(p, "%s", "expected 'in' after the loop variable");
        p->i++;
        if (parse_expr(p, &nd->b) || expect(p, JT_CLOSE_STMT, "'%}'")) return p->c->status;
        nvec body = {0}, alt = {0};
        if (parse_body(p, &body, "endfor", "else", NULL, open, "{% for %}")) return p->c->status;
        if (is_stmt(p, "else", NULL, NULL)) {
            p->i += 2;
            if (expect(p, JT_CLOSE_STMT, "'%}'") || parse_body(p, &alt, "endfor", NULL, NULL, open, "{% for %}"))
                return p->c->status;
        }
        nd->list = body.v;
        nd->nlist = body.n;
        nd->list2 = alt.v;
        nd->nlist2 = alt.n;
        if (end_tag(p, "endfor")) return p->c->status;
    } else if (tok_is(name, "macro")) {
        nd = mk(p, JN_MACRO, open);
        jn_node *mname;
        if (!nd || parse_primary(p, &mname)) return p->c->status;
        if (mname->kind != JN_IDENT) return jn_fail(p->c, PERI_E_FORMAT, mname->pos, "expected a macro name");
        nd->s = mname->s;
        nd->n = mname->n;
        nvec body = {0};
        if (parse_args(p, true, &nd->list2, &nd->nlist2) || expect(p, JT_CLOSE_STMT, "'%}'") ||
            parse_body(p, &body, "endmacro", NULL, NULL, open, "{% macro %}") || end_tag(p, "endmacro"))
            return p->c->status;
        nd->list = body.v;
        nd->nlist = body.n;
    } else if (tok_is(name, "break") || tok_is(name, "continue")) {
        nd = mk(p, tok_is(name, "break") ? JN_BREAK : JN_CONTINUE, open);
        if (!nd || expect(p, JT_CLOSE_STMT, "'%}'")) return p->c->status;
    } else {
        p->i--;
        char nm[64];
        snprintf(nm, sizeof nm, "%.*s", (int)(name->n < 40 ? name->n : 40), name->s);
        bool known = tok_is(name, "call") || tok_is(name, "filter") || tok_is(name, "raw") ||
                     tok_is(name, "include") || tok_is(name, "import") || tok_is(name, "extends") ||
                     tok_is(name, "block") || tok_is(name, "with");
        return jn_fail(p->c, known ? PERI_E_UNSUPPORTED : PERI_E_FORMAT, open,
                       known ? "{%% %s %%} is not supported by this renderer (see docs/chat_templates.md)"
                             : "unknown statement {%% %s %%}",
                       nm);
    }
    p->depth--;
    *out = nd;
    return 0;
}

static int parse_any(parser *p, jn_node **out) {
    *out = NULL;
    const jn_token *t = &p->t[p->i];
    switch (t->type) {
    case JT_COMMENT:
        p->i++;
        return 0;
    case JT_TEXT: {
        jn_node *nd = mk(p, JN_STR, t->pos);
        if (!nd) return p->c->status;
        nd->s = t->s;
        nd->n = t->n;
        p->i++;
        *out = nd;
        return 0;
    }
    case JT_OPEN_STMT:
        return parse_stmt(p, out);
    case JT_OPEN_EXPR: {
        jn_node *out_node = mk(p, JN_OUTPUT, t->pos);
        p->i++;
        if (!out_node || parse_expr(p, &out_node->a) || expect(p, JT_CLOSE_EXPR, "'}}'")) return p->c->status;
        *out = out_node;
        return 0;
    }
    default:
        return perr(p, "unexpected %s outside a tag", tok_name(t->type));
    }
}

int jn_parse(jn_ctx *c, const char *tmpl, size_t len, jn_node ***body, size_t *n_body) {
    jn_token *toks = NULL;
    size_t n = 0;
    if (lex(c, tmpl, len, &toks, &n)) return c->status;
    parser p = {.c = c, .t = toks, .n = n};
    nvec v = {0};
    while (p.i < p.n) {
        jn_node *nd;
        if (parse_any(&p, &nd)) return c->status;
        if (nd && nvec_push(&p, &v, nd)) return c->status;
    }
    *body = v.v;
    *n_body = v.n;
    return 0;
}
