// Chat template renderer: evaluates the syntax tree of jinja_parse.c with the value semantics of
// @huggingface/jinja (JavaScript numbers, loose ==, its filters and string methods), under the limits of
// chat_template.h.
#include "tokenizers/chat_template.h"

#include "core/error.h"
#include "tokenizers/jinja_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- values -----------------------------------------------------------------------------------------------

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_ARRAY, V_OBJ, V_FUNC };
enum { O_DICT, O_KWARGS, O_NS, O_LOOP };
enum { F_RAISE, F_RANGE, F_NAMESPACE, F_STRFTIME, F_METHOD, F_MACRO };
enum {
    M_UPPER, M_LOWER, M_STRIP, M_TITLE, M_CAPITALIZE, M_RSTRIP, M_LSTRIP, M_STARTSWITH, M_ENDSWITH, M_SPLIT,
    M_REPLACE, M_GET, M_ITEMS, M_KEYS, M_VALUES,
};

typedef struct jarr jarr;
typedef struct jobj jobj;
typedef struct jfn jfn;

typedef struct val {
    uint8_t t;
    bool nz;   // V_INT: JavaScript's -0 (prints as 0, but keeps its sign in float arithmetic)
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        jarr *a;
        jobj *o;
        jfn *fn;
    };
} val;

struct jarr {
    size_t n;
    val *v;
    bool tuple;
};

struct jobj {
    uint8_t kind;
    size_t n, cap;
    const char **kp;
    size_t *kn;
    val *v;
    // O_LOOP: computed on access, made into a dict only when used as a whole
    size_t loop_i, loop_n;
    const val *loop_items;
};

struct jfn {
    uint8_t kind, method;
    val self;
    const jn_node *macro;
};

static const val UNDEF = {.t = V_UNDEF};
static const val NONE = {.t = V_NONE};

static inline val mk_bool(bool b) { return (val){.t = V_BOOL, .b = b}; }
static inline val mk_int(int64_t i) { return (val){.t = V_INT, .i = i}; }
static inline val mk_float(double f) { return (val){.t = V_FLOAT, .f = f}; }
static inline val mk_str(const char *p, size_t n) { return (val){.t = V_STR, .s = {p, n}}; }

static const char *type_name(val v) {
    switch (v.t) {
    case V_UNDEF: return "undefined";
    case V_NONE: return "none";
    case V_BOOL: return "boolean";
    case V_INT: return "integer";
    case V_FLOAT: return "float";
    case V_STR: return "string";
    case V_ARRAY: return v.a->tuple ? "tuple" : "list";
    case V_OBJ: return v.o->kind == O_NS ? "namespace" : "dict";
    default: return "function";
    }
}

typedef struct env {
    struct env *parent;
    jobj vars;
} env;

#define FLOW_BREAK 1
#define FLOW_CONTINUE 2
#define TRY(x)                                                                                    \
    do {                                                                                          \
        int _r = (x);                                                                             \
        if (_r) return _r;                                                                        \
    } while (0)

static int fail(jn_ctx *c, int status, const char *fmt, ...) PERI_PRINTF(3, 4);
static int fail(jn_ctx *c, int status, const char *fmt, ...) {
    if (c->status) return c->status;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return jn_fail(c, status, c->cur_pos, "%s", msg);
}

static int oom(jn_ctx *c) { return c->status ? c->status : fail(c, PERI_E_NOMEM, "out of memory"); }

static int cost(jn_ctx *c, uint64_t units) {
    c->steps += units;
    if (c->steps > PERI_CHAT_MAX_STEPS)
        return fail(c, PERI_E_NOMEM, "the template takes more than %d evaluation steps; it loops too much",
                    PERI_CHAT_MAX_STEPS);
    return 0;
}

// ---- growable byte buffers (output and temporary strings) ------------------------------------------------

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static int sb_put(jn_ctx *c, sbuf *b, const char *s, size_t n) {
    if (n > PERI_CHAT_MAX_OUTPUT - b->n)
        return fail(c, PERI_E_NOMEM, "the rendered text would exceed %u MiB", PERI_CHAT_MAX_OUTPUT >> 20);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return oom(c);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}
static int sb_str(jn_ctx *c, sbuf *b, const char *s) { return sb_put(c, b, s, strlen(s)); }
static int sb_ch(jn_ctx *c, sbuf *b, char ch) { return sb_put(c, b, &ch, 1); }

// Moves the buffer's text into the arena as a string value; frees the buffer either way.
static int sb_take(jn_ctx *c, sbuf *b, val *out) {
    char *p = jn_strdup(c, b->p ? b->p : "", b->n);
    size_t n = b->n;
    free(b->p);
    *b = (sbuf){0};
    if (!p) return oom(c);
    *out = mk_str(p, n);
    return 0;
}

// Arena marks: the value of an output expression is printed and dropped, so what it allocated can go,
// unless a macro ran meanwhile (it may have stored values into a namespace).
typedef struct {
    jn_block *head;
    size_t used, mem_used;
    uint64_t mutations;
} amark;

static amark arena_mark(jn_ctx *c) {
    return (amark){c->blocks, c->blocks ? c->blocks->used : 0, c->mem_used, c->mutations};
}

static void arena_release(jn_ctx *c, amark m) {
    if (m.mutations != c->mutations || c->status) return;
    while (c->blocks && c->blocks != m.head) {
        jn_block *b = c->blocks;
        c->blocks = b->next;
        free(b);
    }
    if (c->blocks) c->blocks->used = m.used;
    c->mem_used = m.mem_used;
}

// ---- objects and environments -----------------------------------------------------------------------------

static int hexdigit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static bool is_word_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}

static bool key_eq(const char *a, size_t an, const char *b, size_t bn) { return an == bn && !memcmp(a, b, an); }

static int obj_set(jn_ctx *c, jobj *o, const char *k, size_t kn, val v) {
    for (size_t i = 0; i < o->n; i++)
        if (key_eq(o->kp[i], o->kn[i], k, kn)) {
            o->v[i] = v;
            return 0;
        }
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 4;
        const char **kp = jn_alloc(c, cap * sizeof *kp);
        size_t *knn = jn_alloc(c, cap * sizeof *knn);
        val *vv = jn_alloc(c, cap * sizeof *vv);
        if (!kp || !knn || !vv) return oom(c);
        if (o->n) {
            memcpy(kp, o->kp, o->n * sizeof *kp);
            memcpy(knn, o->kn, o->n * sizeof *knn);
            memcpy(vv, o->v, o->n * sizeof *vv);
        }
        o->kp = kp;
        o->kn = knn;
        o->v = vv;
        o->cap = cap;
    }
    o->kp[o->n] = k;
    o->kn[o->n] = kn;
    o->v[o->n++] = v;
    return 0;
}

static int obj_setz(jn_ctx *c, jobj *o, const char *k, val v) { return obj_set(c, o, k, strlen(k), v); }

static jobj *obj_new(jn_ctx *c, int kind) {
    jobj *o = jn_alloc(c, sizeof *o);
    if (!o) return NULL;
    memset(o, 0, sizeof *o);
    o->kind = (uint8_t)kind;
    return o;
}

static bool loop_get(const jobj *o, const char *k, size_t kn, val *out) {
    size_t i = o->loop_i, n = o->loop_n;
    if (key_eq(k, kn, "index", 5)) *out = mk_int((int64_t)i + 1);
    else if (key_eq(k, kn, "index0", 6)) *out = mk_int((int64_t)i);
    else if (key_eq(k, kn, "revindex", 8)) *out = mk_int((int64_t)(n - i));
    else if (key_eq(k, kn, "revindex0", 9)) *out = mk_int((int64_t)(n - i - 1));
    else if (key_eq(k, kn, "first", 5)) *out = mk_bool(i == 0);
    else if (key_eq(k, kn, "last", 4)) *out = mk_bool(i == n - 1);
    else if (key_eq(k, kn, "length", 6)) *out = mk_int((int64_t)n);
    else if (key_eq(k, kn, "previtem", 8)) *out = i > 0 ? o->loop_items[i - 1] : UNDEF;
    else if (key_eq(k, kn, "nextitem", 8)) *out = i + 1 < n ? o->loop_items[i + 1] : UNDEF;
    else return false;
    return true;
}

// A loop object used as a whole (printed, iterated, tojson) becomes an ordinary dict.
static int obj_full(jn_ctx *c, jobj *o) {
    if (o->kind != O_LOOP) return 0;
    c->mutations++;   // a pre-existing object changes: arena marks must not release its new parts
    static const char *keys[] = {"index", "index0", "revindex", "revindex0", "first", "last", "length",
                                 "previtem", "nextitem"};
    o->kind = O_DICT;
    for (size_t k = 0; k < 9; k++) {
        val v;
        loop_get(o, keys[k], strlen(keys[k]), &v);
        TRY(obj_setz(c, o, keys[k], v));
    }
    return 0;
}

static bool obj_get(const jobj *o, const char *k, size_t kn, val *out) {
    if (o->kind == O_LOOP) return loop_get(o, k, kn, out);
    for (size_t i = 0; i < o->n; i++)
        if (key_eq(o->kp[i], o->kn[i], k, kn)) {
            *out = o->v[i];
            return true;
        }
    return false;
}

static env *env_new(jn_ctx *c, env *parent) {
    env *e = jn_alloc(c, sizeof *e);
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->parent = parent;
    e->vars.kind = O_DICT;
    return e;
}

static jfn *fn_new(jn_ctx *c, int kind, int method, val self, const jn_node *macro) {
    jfn *f = jn_alloc(c, sizeof *f);
    if (!f) return NULL;
    f->kind = (uint8_t)kind;
    f->method = (uint8_t)method;
    f->self = self;
    f->macro = macro;
    return f;
}

static int lookup(jn_ctx *c, env *e, const char *k, size_t kn, val *out) {
    // Every scope of the reference predefines namespace(), so only the innermost scope can shadow it.
    if (key_eq(k, kn, "namespace", 9)) {
        if (obj_get(&e->vars, k, kn, out)) return 0;
        jfn *f = fn_new(c, F_NAMESPACE, 0, UNDEF, NULL);
        if (!f) return oom(c);
        *out = (val){.t = V_FUNC, .fn = f};
        return 0;
    }
    for (env *s = e; s; s = s->parent) {
        TRY(cost(c, s->vars.n / 8));
        if (obj_get(&s->vars, k, kn, out)) return 0;
    }
    *out = UNDEF;
    return 0;
}

// ---- numbers and strings as JavaScript prints them ------------------------------------------------------

// Number.prototype.toString: shortest round-trip digits, fixed notation for 1e-7 < |x| < 1e21.
static void js_num(double x, char *out) {
    if (isnan(x)) { strcpy(out, "NaN"); return; }
    if (isinf(x)) { strcpy(out, x > 0 ? "Infinity" : "-Infinity"); return; }
    if (x == 0) { strcpy(out, "0"); return; }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    char digits[24];
    int nd = 0;
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg) p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int e = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int n = e + 1;   // the decimal point sits after n digits
    char *o = out;
    if (neg) *o++ = '-';
    if (nd <= n && n <= 21) {
        memcpy(o, digits, (size_t)nd);
        o += nd;
        for (int k = nd; k < n; k++) *o++ = '0';
    } else if (0 < n && n <= 21) {
        memcpy(o, digits, (size_t)n);
        o += n;
        *o++ = '.';
        memcpy(o, digits + n, (size_t)(nd - n));
        o += nd - n;
    } else if (-6 < n && n <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int k = 0; k < -n; k++) *o++ = '0';
        memcpy(o, digits, (size_t)nd);
        o += nd;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)(nd - 1));
            o += nd - 1;
        }
        o += sprintf(o, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
    }
    *o = 0;
}

// FloatValue.toString of the reference: integral values keep one decimal ("2.0").
static void float_print(double x, char *out) {
    if (x == 0 && signbit(x)) strcpy(out, "-0.0");
    else if (isfinite(x) && x == floor(x) && fabs(x) < 1e21) snprintf(out, 40, "%.1f", x);
    else js_num(x, out);
}

static size_t utf8_len_at(const char *s, size_t n, size_t i) {
    unsigned char a = (unsigned char)s[i];
    size_t l = a < 0x80 ? 1 : a >= 0xF0 ? 4 : a >= 0xE0 ? 3 : a >= 0xC0 ? 2 : 1;
    if (i + l > n) l = n - i;
    for (size_t k = 1; k < l; k++)
        if (((unsigned char)s[i + k] & 0xC0) != 0x80) return k;
    return l;
}

// String length in UTF-16 code units, as JavaScript counts it.
static size_t js_length(const char *s, size_t n) {
    size_t len = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len_at(s, n, i);
        len += l == 4 ? 2 : 1;
        i += l;
    }
    return len;
}

static size_t count_chars(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i += utf8_len_at(s, n, i)) k++;
    return k;
}

static void js_trim(const char **s, size_t *n, bool start, bool end) {
    size_t w;
    if (start)
        while (*n && (w = jn_ws_at(*s, *n, 0))) { *s += w; *n -= w; }
    if (end)
        while (*n && (w = jn_ws_before(*s, *n))) *n -= w;
}

// ---- printing: toString(), .value.toString(), and toJSON of the reference ------------------------------

typedef struct {
    int indent;              // 0: none
    bool ensure_ascii, sort_keys;
    const char *item_sep, *key_sep;
    size_t item_sep_n, key_sep_n;
} json_opts;

static int to_json(jn_ctx *c, sbuf *b, val v, const json_opts *o, int depth, bool undef_null);

static int json_string(jn_ctx *c, sbuf *b, const char *s, size_t n, bool ascii) {
    TRY(sb_ch(c, b, '"'));
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char ubuf[16];
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (ch < 0x20) {
                snprintf(ubuf, sizeof ubuf, "\\u%04x", ch);
                esc = ubuf;
            } else if (ascii && ch >= 0x7F) {
                size_t l = utf8_len_at(s, n, i);
                uint32_t cp = ch;
                if (l == 2) cp = (ch & 0x1Fu) << 6 | ((unsigned char)s[i + 1] & 0x3Fu);
                else if (l == 3) cp = (ch & 0x0Fu) << 12 | ((unsigned char)s[i + 1] & 0x3Fu) << 6 | ((unsigned char)s[i + 2] & 0x3Fu);
                else if (l == 4)
                    cp = (ch & 0x07u) << 18 | ((unsigned char)s[i + 1] & 0x3Fu) << 12 |
                         ((unsigned char)s[i + 2] & 0x3Fu) << 6 | ((unsigned char)s[i + 3] & 0x3Fu);
                else cp = 0xFFFD;
                if (cp >= 0x10000)
                    snprintf(ubuf, sizeof ubuf, "\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10),
                             0xDC00 + ((cp - 0x10000) & 0x3FF));
                else snprintf(ubuf, sizeof ubuf, "\\u%04x", cp);
                TRY(sb_put(c, b, s + i - run, run));
                run = 0;
                TRY(sb_str(c, b, ubuf));
                i += l - 1;
                continue;
            }
        }
        if (esc) {
            TRY(sb_put(c, b, s + i - run, run));
            run = 0;
            TRY(sb_str(c, b, esc));
        } else {
            run++;
        }
    }
    TRY(sb_put(c, b, s + n - run, run));
    return sb_ch(c, b, '"');
}

// An approximation of String.prototype.localeCompare for sort_keys: case-insensitive first,
// lowercase before uppercase on ties, punctuation before digits before letters.
static int collate_class(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return 1;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch >= 0x80) return 2;
    return 0;
}
static int locale_cmp(const char *a, size_t an, const char *b, size_t bn) {
    size_t n = an < bn ? an : bn;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        int cx = collate_class(x), cy = collate_class(y);
        if (cx != cy) return cx < cy ? -1 : 1;
        unsigned char lx = (x >= 'A' && x <= 'Z') ? x + 32 : x, ly = (y >= 'A' && y <= 'Z') ? y + 32 : y;
        if (lx != ly) return lx < ly ? -1 : 1;
    }
    if (an != bn) return an < bn ? -1 : 1;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return (a[i] >= 'a' && a[i] <= 'z') ? -1 : 1;
    return 0;
}

static int newline_indent(jn_ctx *c, sbuf *b, int indent, int depth) {
    TRY(sb_ch(c, b, '\n'));
    for (int k = 0; k < indent * depth; k++) TRY(sb_ch(c, b, ' '));
    return 0;
}

static int to_json(jn_ctx *c, sbuf *b, val v, const json_opts *o, int depth, bool undef_null) {
    if (depth > 256) return fail(c, PERI_E_FORMAT, "value nested too deeply (or containing itself) for JSON");
    TRY(cost(c, 1));
    char num[48];
    switch (v.t) {
    case V_NONE: return sb_str(c, b, "null");
    case V_UNDEF: return sb_str(c, b, undef_null ? "null" : "undefined");
    case V_BOOL: return sb_str(c, b, v.b ? "true" : "false");
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v.i); return sb_str(c, b, num);
    case V_FLOAT:
        if (!isfinite(v.f)) return sb_str(c, b, "null");
        js_num(v.f, num);
        return sb_str(c, b, num);
    case V_STR: return json_string(c, b, v.s.p, v.s.n, o->ensure_ascii);
    case V_ARRAY:
        if (v.a->tuple) return fail(c, PERI_E_FORMAT, "a tuple cannot be converted to JSON (or printed); use a list");
        TRY(sb_ch(c, b, '['));
        for (size_t i = 0; i < v.a->n; i++) {
            if (i) TRY(sb_put(c, b, o->item_sep, o->item_sep_n));
            if (o->indent) TRY(newline_indent(c, b, o->indent, depth + 1));
            TRY(to_json(c, b, v.a->v[i], o, depth + 1, undef_null));
        }
        if (o->indent && v.a->n) TRY(newline_indent(c, b, o->indent, depth));
        return sb_ch(c, b, ']');
    case V_OBJ: {
        jobj *ob = v.o;
        if (ob->kind == O_LOOP) TRY(obj_full(c, ob));
        size_t *order = NULL;
        if (o->sort_keys && ob->n > 1) {
            order = jn_alloc(c, ob->n * sizeof *order);
            if (!order) return oom(c);
            for (size_t i = 0; i < ob->n; i++) order[i] = i;
            TRY(cost(c, ob->n * ob->n / 4));
            for (size_t i = 1; i < ob->n; i++)   // insertion sort: stable like Array.prototype.sort
                for (size_t j = i; j > 0 && locale_cmp(ob->kp[order[j - 1]], ob->kn[order[j - 1]],
                                                       ob->kp[order[j]], ob->kn[order[j]]) > 0; j--) {
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
        }
        TRY(sb_ch(c, b, '{'));
        for (size_t k = 0; k < ob->n; k++) {
            size_t i = order ? order[k] : k;
            if (k) TRY(sb_put(c, b, o->item_sep, o->item_sep_n));
            if (o->indent) TRY(newline_indent(c, b, o->indent, depth + 1));
            TRY(json_string(c, b, ob->kp[i], ob->kn[i], o->ensure_ascii));
            TRY(sb_put(c, b, o->key_sep, o->key_sep_n));
            TRY(to_json(c, b, ob->v[i], o, depth + 1, undef_null));
        }
        if (o->indent && ob->n) TRY(newline_indent(c, b, o->indent, depth));
        return sb_ch(c, b, '}');
    }
    default: return fail(c, PERI_E_FORMAT, "a function cannot be converted to JSON");
    }
}

static const json_opts json_default = {0, false, false, ", ", ": ", 2, 2};

// RuntimeValue.toString(): how a value prints in {{ }}.
static int rv_print(jn_ctx *c, sbuf *b, val v) {
    char num[48];
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return sb_str(c, b, "undefined");
    case V_BOOL: return sb_str(c, b, v.b ? "true" : "false");
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v.i); return sb_str(c, b, num);
    case V_FLOAT: float_print(v.f, num); return sb_str(c, b, num);
    case V_STR: return sb_put(c, b, v.s.p, v.s.n);
    case V_ARRAY:
    case V_OBJ: return to_json(c, b, v, &json_default, 0, false);
    default: return fail(c, PERI_E_FORMAT, "a function cannot be printed; call it with ()");
    }
}

// value.toString() of the underlying JavaScript value: what ~, string + and join use.
static int raw_print(jn_ctx *c, sbuf *b, val v, int depth) {
    char num[48];
    if (depth > 64) return fail(c, PERI_E_FORMAT, "value nested too deeply to convert to a string");
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return fail(c, PERI_E_FORMAT, "cannot convert none or undefined to a string");
    case V_BOOL: return sb_str(c, b, v.b ? "true" : "false");
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v.i); return sb_str(c, b, num);
    case V_FLOAT: js_num(v.f, num); return sb_str(c, b, num);
    case V_STR: return sb_put(c, b, v.s.p, v.s.n);
    case V_ARRAY:
        for (size_t i = 0; i < v.a->n; i++) {
            if (i) TRY(sb_ch(c, b, ','));
            TRY(rv_print(c, b, v.a->v[i]));
        }
        return 0;
    case V_OBJ: return sb_str(c, b, "[object Map]");
    default: return fail(c, PERI_E_FORMAT, "a function cannot be converted to a string");
    }
}

static int to_raw_str(jn_ctx *c, val v, val *out) {
    if (v.t == V_STR) {
        *out = v;
        return 0;
    }
    sbuf b = {0};
    int r = raw_print(c, &b, v, 0);
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

// ---- truthiness, equality, comparison --------------------------------------------------------------------

static bool truthy(val v) {
    switch (v.t) {
    case V_BOOL: return v.b;
    case V_INT: return v.i != 0;
    case V_FLOAT: return v.f != 0 && !isnan(v.f);
    case V_STR: return v.s.n > 0;
    case V_ARRAY: return v.a->n > 0;
    case V_OBJ: return v.o->kind == O_NS || v.o->kind == O_LOOP || v.o->n > 0;
    case V_FUNC: return true;
    default: return false;
    }
}

static bool is_num(val v) { return v.t == V_INT || v.t == V_FLOAT; }
static double num_of(val v) {
    if (v.t == V_INT) return v.nz ? -0.0 : (double)v.i;
    return v.t == V_FLOAT ? v.f : v.t == V_BOOL ? v.b : 0;
}

// ToNumber of a string (StringToNumber of ECMAScript).
static double js_str_to_num(const char *s, size_t n) {
    js_trim(&s, &n, true, true);
    if (!n) return 0;
    char buf[400];
    if (n >= sizeof buf) return NAN;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (n > 2 && buf[0] == '0' && strchr("xXoObB", buf[1])) {
        int base = (buf[1] | 32) == 'x' ? 16 : (buf[1] | 32) == 'o' ? 8 : 2;
        double r = 0;
        for (size_t i = 2; i < n; i++) {
            int d = hexdigit(buf[i]);
            if (d < 0 || d >= base) return NAN;
            r = r * base + d;
        }
        return r;
    }
    const char *p = buf;
    if (*p == '+' || *p == '-') p++;
    if (!strcmp(p, "Infinity")) return buf[0] == '-' ? -INFINITY : INFINITY;
    // StrDecimalLiteral: digits [. digits] [e [+-] digits], with digits on at least one side of '.'
    const char *q = p;
    bool any = false;
    while (*q >= '0' && *q <= '9') { q++; any = true; }
    if (*q == '.') {
        q++;
        while (*q >= '0' && *q <= '9') { q++; any = true; }
    }
    if (!any) return NAN;
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-') q++;
        if (!(*q >= '0' && *q <= '9')) return NAN;
        while (*q >= '0' && *q <= '9') q++;
    }
    if (*q) return NAN;
    return strtod(buf, NULL);
}

static int loose_eq(jn_ctx *c, val a, val b, bool *out);

static int to_primitive_str(jn_ctx *c, val v, val *out) {
    if (v.t == V_OBJ) {
        *out = mk_str("[object Map]", 12);
        return 0;
    }
    return to_raw_str(c, v, out);   // arrays join their elements' toString() with ','
}

// JavaScript's ==, which the reference applies to the underlying values.
static int loose_eq(jn_ctx *c, val a, val b, bool *out) {
    bool an = a.t == V_UNDEF || a.t == V_NONE, bn = b.t == V_UNDEF || b.t == V_NONE;
    if (an || bn) {
        *out = an && bn;
        return 0;
    }
    if (is_num(a) && is_num(b)) { *out = num_of(a) == num_of(b); return 0; }
    if (a.t == V_STR && b.t == V_STR) { *out = key_eq(a.s.p, a.s.n, b.s.p, b.s.n); return 0; }
    if (a.t == V_BOOL && b.t == V_BOOL) { *out = a.b == b.b; return 0; }
    bool ao = a.t == V_ARRAY || a.t == V_OBJ || a.t == V_FUNC, bo = b.t == V_ARRAY || b.t == V_OBJ || b.t == V_FUNC;
    if (ao && bo) {
        *out = a.t == b.t && (a.t == V_ARRAY ? a.a == b.a : a.t == V_OBJ ? a.o == b.o : a.fn == b.fn);
        return 0;
    }
    if (a.t == V_BOOL) return loose_eq(c, mk_float(a.b), b, out);
    if (b.t == V_BOOL) return loose_eq(c, a, mk_float(b.b), out);
    if (is_num(a) && b.t == V_STR) { *out = num_of(a) == js_str_to_num(b.s.p, b.s.n); return 0; }
    if (a.t == V_STR && is_num(b)) { *out = js_str_to_num(a.s.p, a.s.n) == num_of(b); return 0; }
    if (a.t == V_FUNC || b.t == V_FUNC) { *out = false; return 0; }
    val p;
    if (ao) {
        TRY(to_primitive_str(c, a, &p));
        return loose_eq(c, p, b, out);
    }
    TRY(to_primitive_str(c, b, &p));
    return loose_eq(c, a, p, out);
}

// JavaScript's === on the underlying values (in, unique, equalto).
static bool strict_eq(val a, val b) {
    if (is_num(a) && is_num(b)) return num_of(a) == num_of(b);
    bool an = a.t == V_UNDEF || a.t == V_NONE, bn = b.t == V_UNDEF || b.t == V_NONE;
    if (an || bn) return an && bn;
    if (a.t != b.t) return false;
    switch (a.t) {
    case V_BOOL: return a.b == b.b;
    case V_STR: return key_eq(a.s.p, a.s.n, b.s.p, b.s.n);
    case V_ARRAY: return a.a == b.a;
    case V_OBJ: return a.o == b.o;
    default: return a.fn == b.fn;
    }
}

static int ascii_lower(int ch) { return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch; }

// compareRuntimeValues of the reference (sort filters).
static int compare_vals(jn_ctx *c, val a, val b, bool case_sensitive, int *out) {
    if (a.t == V_NONE && b.t == V_NONE) { *out = 0; return 0; }
    if (a.t == V_UNDEF && b.t == V_UNDEF) { *out = 0; return 0; }
    if (a.t == V_NONE || b.t == V_NONE || a.t == V_UNDEF || b.t == V_UNDEF)
        return fail(c, PERI_E_FORMAT, "cannot compare %s with %s", type_name(a), type_name(b));
    bool na = is_num(a) || a.t == V_BOOL, nb = is_num(b) || b.t == V_BOOL;
    if (na && nb) {
        double x = num_of(a), y = num_of(b);
        *out = x < y ? -1 : x > y ? 1 : 0;
        return 0;
    }
    if (a.t != V_STR || b.t != V_STR)
        return fail(c, PERI_E_FORMAT, "cannot compare %s with %s", type_name(a), type_name(b));
    size_t n = a.s.n < b.s.n ? a.s.n : b.s.n;
    for (size_t i = 0; i < n; i++) {
        int x = (unsigned char)a.s.p[i], y = (unsigned char)b.s.p[i];
        if (!case_sensitive) { x = ascii_lower(x); y = ascii_lower(y); }
        if (x != y) { *out = x < y ? -1 : 1; return 0; }
    }
    *out = a.s.n < b.s.n ? -1 : a.s.n > b.s.n ? 1 : 0;
    return 0;
}

// ---- evaluation -------------------------------------------------------------------------------------------

static int eval(jn_ctx *c, const jn_node *nd, env *e, val *out);
static int exec_block(jn_ctx *c, jn_node *const *list, size_t n, env *e, sbuf *out);

typedef struct {
    val *pos;
    size_t npos;
    jobj *kw;   // NULL when no keyword arguments
} args_t;

static int eval_args(jn_ctx *c, jn_node *const *list, size_t n, env *e, args_t *a) {
    a->pos = jn_alloc(c, (n ? n : 1) * sizeof *a->pos);
    a->npos = 0;
    a->kw = NULL;
    if (!a->pos) return oom(c);
    for (size_t i = 0; i < n; i++)
        if (list[i]->kind != JN_KWARG) TRY(eval(c, list[i], e, &a->pos[a->npos++]));
    for (size_t i = 0; i < n; i++) {
        if (list[i]->kind != JN_KWARG) continue;
        if (!a->kw && !(a->kw = obj_new(c, O_KWARGS))) return oom(c);
        val v, old;
        if (obj_get(a->kw, list[i]->s, list[i]->n, &old))
            return fail(c, PERI_E_FORMAT, "keyword argument '%.*s' given twice", (int)list[i]->n, list[i]->s);
        TRY(eval(c, list[i]->a, e, &v));
        TRY(obj_set(c, a->kw, list[i]->s, list[i]->n, v));
    }
    return 0;
}

static val kwarg(const args_t *a, const char *name, val def) {
    val v;
    if (a->kw && obj_get(a->kw, name, strlen(name), &v)) return v;
    return def;
}

// Positional argument i, else keyword name, else def.
static val arg_or(const args_t *a, size_t i, const char *name, val def) {
    if (i < a->npos) return a->pos[i];
    return name ? kwarg(a, name, def) : def;
}

static int new_array(jn_ctx *c, size_t n, jarr **out) {
    jarr *a = jn_alloc(c, sizeof *a);
    if (!a) return oom(c);
    a->n = n;
    a->tuple = false;
    a->v = jn_alloc(c, (n ? n : 1) * sizeof *a->v);
    if (!a->v) return oom(c);
    *out = a;
    return 0;
}

static int str_replace(jn_ctx *c, val s, val from, val to, int64_t count, val *out) {
    if (count == 0) {
        *out = s;
        return 0;
    }
    uint64_t remaining = count < 0 ? UINT64_MAX : (uint64_t)count;
    sbuf b = {0};
    int r = cost(c, s.s.n / 16 + 1);
    if (from.s.n == 0) {   // an empty pattern matches at every character boundary
        for (size_t i = 0; !r && i <= s.s.n;) {
            if (remaining) { r = sb_put(c, &b, to.s.p, to.s.n); remaining--; }
            if (r || i == s.s.n) break;
            size_t l = utf8_len_at(s.s.p, s.s.n, i);
            r = sb_put(c, &b, s.s.p + i, l);
            i += l;
        }
    } else {
        size_t i = 0;
        while (!r && i < s.s.n) {
            const char *hit = remaining ? memmem(s.s.p + i, s.s.n - i, from.s.p, from.s.n) : NULL;
            if (!hit) break;
            size_t at = (size_t)(hit - s.s.p);
            r = sb_put(c, &b, s.s.p + i, at - i);
            if (!r) r = sb_put(c, &b, to.s.p, to.s.n);
            i = at + from.s.n;
            remaining--;
        }
        if (!r) r = sb_put(c, &b, s.s.p + i, s.s.n - i);
    }
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

static int str_split(jn_ctx *c, val s, val sep, int64_t maxsplit, val *out) {
    TRY(cost(c, s.s.n / 8 + 1));
    size_t cap = 8, n = 0;
    val *parts = jn_alloc(c, cap * sizeof *parts);
    if (!parts) return oom(c);
#define PUSH_PART(P, N)                                                                           \
    do {                                                                                          \
        if (n == cap) {                                                                           \
            val *np = jn_alloc(c, cap * 2 * sizeof *np);                                          \
            if (!np) return oom(c);                                                               \
            memcpy(np, parts, n * sizeof *np);                                                    \
            parts = np;                                                                           \
            cap *= 2;                                                                             \
        }                                                                                         \
        parts[n++] = mk_str((P), (N));                                                            \
    } while (0)
    if (sep.t != V_STR) {   // runs of non-whitespace; with maxsplit the rest is kept as is
        const char *p = s.s.p;
        size_t len = s.s.n;
        js_trim(&p, &len, true, false);
        size_t i = 0;
        while (i < len) {
            size_t st = i;
            while (i < len && !jn_ws_at(p, len, i)) i += utf8_len_at(p, len, i);
            if (maxsplit != -1 && (int64_t)n >= maxsplit) {
                PUSH_PART(p + st, len - st);
                break;
            }
            PUSH_PART(p + st, i - st);
            for (size_t w; i < len && (w = jn_ws_at(p, len, i)); i += w) {}
        }
    } else {
        if (!sep.s.n) return fail(c, PERI_E_FORMAT, "split(): empty separator");
        size_t i = 0;
        for (;;) {
            const char *hit = (maxsplit == -1 || (int64_t)n < maxsplit)
                                  ? memmem(s.s.p + i, s.s.n - i, sep.s.p, sep.s.n) : NULL;
            if (!hit) {
                PUSH_PART(s.s.p + i, s.s.n - i);
                break;
            }
            PUSH_PART(s.s.p + i, (size_t)(hit - (s.s.p + i)));
            i = (size_t)(hit - s.s.p) + sep.s.n;
        }
    }
#undef PUSH_PART
    jarr *a = jn_alloc(c, sizeof *a);
    if (!a) return oom(c);
    *a = (jarr){n, parts, false};
    *out = (val){.t = V_ARRAY, .a = a};
    return 0;
}

static const char *case_lookup(const jn_case_map *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid].cp == cp) return t[mid].to;
        if (t[mid].cp < cp) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static size_t utf8_decode(const char *s, size_t n, size_t i, uint32_t *cp) {
    size_t l = utf8_len_at(s, n, i);
    unsigned char a = (unsigned char)s[i];
    if (l == 1) *cp = a < 0x80 ? a : 0xFFFD;
    else if (l == 2) *cp = (a & 0x1Fu) << 6 | ((unsigned char)s[i + 1] & 0x3Fu);
    else if (l == 3) *cp = (a & 0x0Fu) << 12 | ((unsigned char)s[i + 1] & 0x3Fu) << 6 | ((unsigned char)s[i + 2] & 0x3Fu);
    else *cp = (a & 0x07u) << 18 | ((unsigned char)s[i + 1] & 0x3Fu) << 12 | ((unsigned char)s[i + 2] & 0x3Fu) << 6 |
               ((unsigned char)s[i + 3] & 0x3Fu);
    if ((l == 2 && *cp < 0x80) || (l == 3 && *cp < 0x800) || (l == 4 && (*cp < 0x10000 || *cp > 0x10FFFF)))
        *cp = 0xFFFD;   // overlong or out of range: no case mapping applies
    return l;
}

static bool is_cased(uint32_t cp) {
    return case_lookup(jn_upper, jn_upper_n, cp) || case_lookup(jn_lower, jn_lower_n, cp);
}

// Final_Sigma of toLowerCase: a capital sigma after a cased letter and not before one becomes 'ς'.
// (Approximated: the neighbours are the adjacent characters, without skipping case-ignorable ones.)
static bool final_sigma(val s, size_t i, size_t l) {
    if (i == 0) return false;
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)s.s.p[j] & 0xC0) == 0x80) j--;
    uint32_t prev, next;
    utf8_decode(s.s.p, s.s.n, j, &prev);
    if (!is_cased(prev)) return false;
    if (i + l >= s.s.n) return true;
    utf8_decode(s.s.p, s.s.n, i + l, &next);
    return !is_cased(next);
}

// mode 0 upper, 1 lower (whole string, Unicode), 2 title (the reference's /\b\w/ is ASCII), 3 capitalize
// (first character only).
static int str_case(jn_ctx *c, val s, int mode, val *out) {
    TRY(cost(c, s.s.n / 16));
    sbuf b = {0};
    int r = 0;
    for (size_t i = 0; !r && i < s.s.n;) {
        uint32_t cp;
        size_t l = utf8_decode(s.s.p, s.s.n, i, &cp);
        const char *to = NULL;
        if (mode == 0 || (mode == 3 && i == 0 && cp < 0x10000)) to = case_lookup(jn_upper, jn_upper_n, cp);
        else if (mode == 1 && cp == 0x3A3 && final_sigma(s, i, l)) to = "\xcf\x82";
        else if (mode == 1) to = case_lookup(jn_lower, jn_lower_n, cp);
        else if (mode == 2 && cp >= 'a' && cp <= 'z' && (i == 0 || !is_word_char(s.s.p[i - 1])))
            to = case_lookup(jn_upper, jn_upper_n, cp);
        r = to ? sb_str(c, &b, to) : sb_put(c, &b, s.s.p + i, l);
        i += l;
    }
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

// s == s.toLowerCase() (or toUpperCase), character by character.
static bool case_is(val v, bool upper) {
    for (size_t i = 0; i < v.s.n;) {
        uint32_t cp;
        i += utf8_decode(v.s.p, v.s.n, i, &cp);
        if (upper ? case_lookup(jn_upper, jn_upper_n, cp) : case_lookup(jn_lower, jn_lower_n, cp)) return false;
    }
    return true;
}

static bool starts_ends(val s, val pat, bool start) {
    if (pat.s.n > s.s.n) return false;
    return !memcmp(start ? s.s.p : s.s.p + s.s.n - pat.s.n, pat.s.p, pat.s.n);
}

static int call_method(jn_ctx *c, const jfn *f, const args_t *a, val *out) {
    val self = f->self;
    if (a->kw && f->method != M_REPLACE)
        return fail(c, PERI_E_UNSUPPORTED, "keyword arguments are not supported by this method; pass them by position");
    switch (f->method) {
    case M_UPPER: return str_case(c, self, 0, out);
    case M_LOWER: return str_case(c, self, 1, out);
    case M_TITLE: return str_case(c, self, 2, out);
    case M_CAPITALIZE: return str_case(c, self, 3, out);
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {   // the reference ignores a chars argument and strips whitespace
        const char *p = self.s.p;
        size_t n = self.s.n;
        js_trim(&p, &n, f->method != M_RSTRIP, f->method != M_LSTRIP);
        *out = mk_str(p, n);
        return 0;
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        bool st = f->method == M_STARTSWITH;
        if (a->npos == 0) return fail(c, PERI_E_FORMAT, "%s() needs an argument", st ? "startswith" : "endswith");
        val pat = a->pos[0];
        if (pat.t == V_STR) {
            *out = mk_bool(starts_ends(self, pat, st));
            return 0;
        }
        if (pat.t == V_ARRAY) {
            for (size_t i = 0; i < pat.a->n; i++) {
                if (pat.a->v[i].t != V_STR) return fail(c, PERI_E_FORMAT, "%s() takes strings", st ? "startswith" : "endswith");
                if (starts_ends(self, pat.a->v[i], st)) { *out = mk_bool(true); return 0; }
            }
            *out = mk_bool(false);
            return 0;
        }
        return fail(c, PERI_E_FORMAT, "%s() takes a string or a tuple of strings", st ? "startswith" : "endswith");
    }
    case M_SPLIT: {
        val sep = a->npos > 0 ? a->pos[0] : NONE, mx = a->npos > 1 ? a->pos[1] : mk_int(-1);
        if (sep.t != V_STR && sep.t != V_NONE) return fail(c, PERI_E_FORMAT, "split(): the separator must be a string or none");
        if (mx.t != V_INT) return fail(c, PERI_E_FORMAT, "split(): maxsplit must be an integer");
        return str_split(c, self, sep, mx.i, out);
    }
    case M_REPLACE: {
        if (a->npos < 2) return fail(c, PERI_E_FORMAT, "replace() needs two arguments");
        val from = a->pos[0], to = a->pos[1];
        if (from.t != V_STR || to.t != V_STR) return fail(c, PERI_E_FORMAT, "replace() arguments must be strings");
        val cnt = a->npos > 2 ? a->pos[2] : kwarg(a, "count", NONE);
        if (cnt.t != V_INT && cnt.t != V_NONE) return fail(c, PERI_E_FORMAT, "replace(): count must be an integer");
        return str_replace(c, self, from, to, cnt.t == V_INT ? cnt.i : -1, out);
    }
    case M_GET: {
        val key = a->npos > 0 ? a->pos[0] : UNDEF;
        if (key.t != V_STR) return fail(c, PERI_E_FORMAT, "get(): the key must be a string, not %s", type_name(key));
        if (!obj_get(self.o, key.s.p, key.s.n, out)) *out = a->npos > 1 ? a->pos[1] : NONE;
        return 0;
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        jobj *o = self.o;
        TRY(obj_full(c, o));
        jarr *r = NULL;
        TRY(new_array(c, o->n, &r));
        for (size_t i = 0; i < o->n; i++) {
            val k = mk_str(o->kp[i], o->kn[i]);
            if (f->method == M_KEYS) r->v[i] = k;
            else if (f->method == M_VALUES) r->v[i] = o->v[i];
            else {
                jarr *pair = NULL;
                TRY(new_array(c, 2, &pair));
                pair->v[0] = k;
                pair->v[1] = o->v[i];
                r->v[i] = (val){.t = V_ARRAY, .a = pair};
            }
        }
        *out = (val){.t = V_ARRAY, .a = r};
        return 0;
    }
    }
    return fail(c, PERI_E_UNSUPPORTED, "unsupported method");
}

static int bound_method(jn_ctx *c, val self, int m, val *out) {
    jfn *f = fn_new(c, F_METHOD, m, self, NULL);
    if (!f) return oom(c);
    *out = (val){.t = V_FUNC, .fn = f};
    return 0;
}

static const struct { const char *name; int id; } str_methods[] = {
    {"upper", M_UPPER}, {"lower", M_LOWER}, {"strip", M_STRIP}, {"title", M_TITLE},
    {"capitalize", M_CAPITALIZE}, {"rstrip", M_RSTRIP}, {"lstrip", M_LSTRIP},
    {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH}, {"split", M_SPLIT}, {"replace", M_REPLACE},
};
static const struct { const char *name; int id; } obj_methods[] = {
    {"get", M_GET}, {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES},
};

// The built-in attributes of a value (string methods and length, list length, dict methods).
static int builtin_attr(jn_ctx *c, val obj, const char *k, size_t kn, val *out) {
    *out = UNDEF;
    if (obj.t == V_STR || obj.t == V_ARRAY) {
        if (key_eq(k, kn, "length", 6)) {
            *out = mk_int((int64_t)(obj.t == V_STR ? js_length(obj.s.p, obj.s.n) : obj.a->n));
            return 0;
        }
        if (obj.t == V_STR)
            for (size_t i = 0; i < sizeof str_methods / sizeof str_methods[0]; i++)
                if (key_eq(k, kn, str_methods[i].name, strlen(str_methods[i].name)))
                    return bound_method(c, obj, str_methods[i].id, out);
    } else if (obj.t == V_OBJ && obj.o->kind != O_NS) {
        for (size_t i = 0; i < sizeof obj_methods / sizeof obj_methods[0]; i++)
            if (key_eq(k, kn, obj_methods[i].name, strlen(obj_methods[i].name)))
                return bound_method(c, obj, obj_methods[i].id, out);
        if (key_eq(k, kn, "dictsort", 8))
            return fail(c, PERI_E_UNSUPPORTED, "dictsort is not supported by this renderer");
    }
    return 0;
}

// Python-style index into n items (negative from the end); false when out of range.
static bool js_at(int64_t i, size_t n, size_t *out) {
    if (i < 0) i += (int64_t)n;
    if (i < 0 || (uint64_t)i >= n) return false;
    *out = (size_t)i;
    return true;
}

static int get_member(jn_ctx *c, val obj, val prop, val *out) {
    *out = UNDEF;
    if (obj.t == V_OBJ) {
        if (prop.t != V_STR) return fail(c, PERI_E_FORMAT, "a dict key must be a string, not %s", type_name(prop));
        if (obj_get(obj.o, prop.s.p, prop.s.n, out)) return 0;
        return builtin_attr(c, obj, prop.s.p, prop.s.n, out);
    }
    if (obj.t == V_ARRAY || obj.t == V_STR) {
        if (prop.t == V_INT) {
            size_t idx;
            if (obj.t == V_ARRAY) {
                if (js_at(prop.i, obj.a->n, &idx)) *out = obj.a->v[idx];
                return 0;
            }
            size_t nch = count_chars(obj.s.p, obj.s.n);
            TRY(cost(c, obj.s.n / 16));
            if (!js_at(prop.i, nch, &idx)) return 0;
            size_t off = 0;
            for (size_t k = 0; k < idx; k++) off += utf8_len_at(obj.s.p, obj.s.n, off);
            *out = mk_str(obj.s.p + off, utf8_len_at(obj.s.p, obj.s.n, off));
            return 0;
        }
        if (prop.t == V_STR) return builtin_attr(c, obj, prop.s.p, prop.s.n, out);
        return fail(c, PERI_E_FORMAT, "cannot index a %s with a %s", type_name(obj), type_name(prop));
    }
    if (prop.t != V_STR) {
        if (obj.t == V_UNDEF || obj.t == V_NONE)
            return fail(c, PERI_E_FORMAT, "cannot index %s (a missing variable or key?)", type_name(obj));
        return fail(c, PERI_E_FORMAT, "cannot index a %s with a %s", type_name(obj), type_name(prop));
    }
    return 0;
}

static int slice_bound(jn_ctx *c, const jn_node *nd, env *e, bool *given, int64_t *v) {
    *given = false;
    if (!nd) return 0;
    val x;
    TRY(eval(c, nd, e, &x));
    if (x.t == V_UNDEF) return 0;
    if (x.t != V_INT) return fail(c, PERI_E_FORMAT, "slice bounds must be integers, not %s", type_name(x));
    *given = true;
    *v = x.i;
    return 0;
}

static int eval_slice(jn_ctx *c, val obj, const jn_node *sl, env *e, val *out) {
    if (obj.t != V_ARRAY && obj.t != V_STR) return fail(c, PERI_E_FORMAT, "cannot slice a %s", type_name(obj));
    bool hs, he, hp;
    int64_t start = 0, stop = 0, step = 1;
    TRY(slice_bound(c, sl->a, e, &hs, &start));
    TRY(slice_bound(c, sl->b, e, &he, &stop));
    TRY(slice_bound(c, sl->c3, e, &hp, &step));
    if (!hp) step = 1;
    size_t *offs = NULL;   // strings slice by characters
    int64_t len;
    if (obj.t == V_STR) {
        size_t nch = count_chars(obj.s.p, obj.s.n);
        offs = jn_alloc(c, (nch + 1) * sizeof *offs);
        if (!offs) return oom(c);
        size_t o = 0;
        for (size_t k = 0; k < nch; k++) { offs[k] = o; o += utf8_len_at(obj.s.p, obj.s.n, o); }
        offs[nch] = o;
        len = (int64_t)nch;
    } else {
        len = (int64_t)obj.a->n;
    }
    TRY(cost(c, (uint64_t)len / 8 + 1));
    if (step >= 0) {
        start = !hs ? 0 : start < 0 ? (len + start > 0 ? len + start : 0) : (start < len ? start : len);
        stop = !he ? len : stop < 0 ? (len + stop > 0 ? len + stop : 0) : (stop < len ? stop : len);
    } else {
        start = !hs ? len - 1 : start < 0 ? (len + start > -1 ? len + start : -1) : (start < len - 1 ? start : len - 1);
        stop = !he ? -1 : stop < -1 ? (len + stop > -1 ? len + stop : -1) : (stop < len - 1 ? stop : len - 1);
    }
    int dir = step > 0 ? 1 : step < 0 ? -1 : 0;
    size_t cnt = 0;
    if (dir != 0)
        for (int64_t i = start; dir * i < dir * stop; i += step) cnt++;
    if (obj.t == V_ARRAY) {
        jarr *r = NULL;
        TRY(new_array(c, cnt, &r));
        size_t k = 0;
        if (dir != 0)
            for (int64_t i = start; dir * i < dir * stop; i += step) r->v[k++] = obj.a->v[i];
        *out = (val){.t = V_ARRAY, .a = r};
        return 0;
    }
    if (step == 1) {
        *out = mk_str(obj.s.p + offs[start], start < stop ? offs[stop] - offs[start] : 0);
        return 0;
    }
    sbuf b = {0};
    int r = 0;
    if (dir != 0)
        for (int64_t i = start; !r && dir * i < dir * stop; i += step) r = sb_put(c, &b, obj.s.p + offs[i], offs[i + 1] - offs[i]);
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

// ---- tests (x is name) ------------------------------------------------------------------------------------

static int run_test(jn_ctx *c, const char *name, size_t n, val v, const val *arg, bool *out) {
#define IS(s) key_eq(name, n, s, strlen(s))
    if (IS("boolean")) *out = v.t == V_BOOL;
    else if (IS("callable")) *out = v.t == V_FUNC;
    else if (IS("odd") || IS("even")) {
        if (v.t != V_INT) return fail(c, PERI_E_FORMAT, "'%.*s' tests an integer, not %s", (int)n, name, type_name(v));
        *out = (v.i % 2 != 0) == IS("odd");
    } else if (IS("false")) *out = v.t == V_BOOL && !v.b;
    else if (IS("true")) *out = v.t == V_BOOL && v.b;
    else if (IS("none")) *out = v.t == V_NONE;
    else if (IS("string")) *out = v.t == V_STR;
    else if (IS("number")) *out = is_num(v);
    else if (IS("integer")) *out = v.t == V_INT;
    else if (IS("iterable")) *out = (v.t == V_ARRAY && !v.a->tuple) || v.t == V_STR;
    else if (IS("mapping")) *out = v.t == V_OBJ && v.o->kind != O_NS;
    else if (IS("sequence")) *out = v.t == V_ARRAY || (v.t == V_OBJ && v.o->kind != O_NS) || v.t == V_STR;
    else if (IS("lower")) *out = v.t == V_STR && case_is(v, false);
    else if (IS("upper")) *out = v.t == V_STR && case_is(v, true);
    else if (IS("defined")) *out = v.t != V_UNDEF;
    else if (IS("undefined")) *out = v.t == V_UNDEF;
    else if (IS("equalto") || IS("eq")) {
        if (!arg) return fail(c, PERI_E_FORMAT, "the '%.*s' test needs a value", (int)n, name);
        *out = strict_eq(v, *arg);
    } else {
        return fail(c, PERI_E_FORMAT, "unknown test '%.*s'", (int)(n < 60 ? n : 60), name);
    }
#undef IS
    return 0;
}

// ---- filters ---------------------------------------------------------------------------------------------

typedef struct {
    jn_ctx *c;
    bool case_sensitive, reverse;
    val attr;   // none, or a string/integer attribute path
    int status;
} sort_ctx;

static val attr_path(val item, const char *path, size_t n) {
    size_t i = 0;
    val v = item;
    while (i <= n) {
        const char *dot = memchr(path + i, '.', n - i);
        size_t e = dot ? (size_t)(dot - path) : n;
        if (v.t == V_OBJ) {
            if (!obj_get(v.o, path + i, e - i, &v)) return UNDEF;
        } else if (v.t == V_ARRAY) {
            char buf[24];
            size_t l = e - i < sizeof buf - 1 ? e - i : sizeof buf - 1;
            memcpy(buf, path + i, l);
            buf[l] = 0;
            char *end;
            long long k = strtoll(buf, &end, 10);
            if (end == buf || k < 0 || (uint64_t)k >= v.a->n) return UNDEF;
            v = v.a->v[k];
        } else {
            return UNDEF;
        }
        i = e + 1;
    }
    return v;
}

static int sort_cmp(sort_ctx *s, val a, val b) {
    if (s->status) return 0;
    if (s->attr.t == V_STR) {
        a = attr_path(a, s->attr.s.p, s->attr.s.n);
        b = attr_path(b, s->attr.s.p, s->attr.s.n);
    } else if (s->attr.t == V_INT) {
        char buf[24];
        int l = snprintf(buf, sizeof buf, "%lld", (long long)s->attr.i);
        a = attr_path(a, buf, (size_t)l);
        b = attr_path(b, buf, (size_t)l);
    }
    int r = 0;
    s->status = compare_vals(s->c, a, b, s->case_sensitive, &r);
    return s->reverse ? -r : r;
}

static int sort_vals(sort_ctx *s, val *v, size_t n) {   // stable merge sort, as V8's Array.prototype.sort
    TRY(cost(s->c, n * 4 + 1));
    if (n < 2) return 0;
    val *tmp = jn_alloc(s->c, n * sizeof *tmp);
    if (!tmp) return oom(s->c);
    for (size_t w = 1; w < n; w *= 2) {
        TRY(cost(s->c, n));
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = sort_cmp(s, v[j], v[i]) < 0 ? v[j++] : v[i++];
            while (i < mid) tmp[k++] = v[i++];
            while (j < hi) tmp[k++] = v[j++];
        }
        memcpy(v, tmp, n * sizeof *v);
        if (s->status) return s->status;
    }
    return s->status;
}

static int copy_array(jn_ctx *c, const jarr *a, jarr **out) {
    TRY(new_array(c, a->n, out));
    if (a->n) memcpy((*out)->v, a->v, a->n * sizeof *a->v);
    return 0;
}

// join of the underlying values: none and undefined join as "".
static int join_vals(jn_ctx *c, val operand, val sep, val *out) {
    sbuf b = {0};
    int r = 0;
    if (operand.t == V_STR) {
        for (size_t i = 0; !r && i < operand.s.n;) {
            size_t l = utf8_len_at(operand.s.p, operand.s.n, i);
            if (i) r = sb_put(c, &b, sep.s.p, sep.s.n);
            if (!r) r = sb_put(c, &b, operand.s.p + i, l);
            i += l;
        }
    } else {
        for (size_t i = 0; !r && i < operand.a->n; i++) {
            if (i) r = sb_put(c, &b, sep.s.p, sep.s.n);
            val x = operand.a->v[i];
            if (!r && x.t != V_NONE && x.t != V_UNDEF) r = raw_print(c, &b, x, 0);
        }
    }
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

static int indent_str(jn_ctx *c, val s, int64_t width, bool first, bool blank, val *out) {
    if (width < 0 || width > 1000) return fail(c, PERI_E_FORMAT, "indent width %lld is out of range", (long long)width);
    sbuf b = {0};
    int r = 0;
    size_t i = 0;
    for (size_t line = 0; !r; line++) {
        const char *nl = memchr(s.s.p + i, '\n', s.s.n - i);
        size_t e = nl ? (size_t)(nl - s.s.p) : s.s.n;
        bool skip = (!first && line == 0) || (!blank && e == i);
        for (int64_t k = 0; !r && !skip && k < width; k++) r = sb_ch(c, &b, ' ');
        if (!r) r = sb_put(c, &b, s.s.p + i, e - i);
        if (!nl) break;
        if (!r) r = sb_ch(c, &b, '\n');
        i = e + 1;
    }
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

// parseInt(s, 10) / parseFloat(s); false for NaN.
static bool js_parse_num(val s, bool integer, double *out) {
    const char *p = s.s.p;
    size_t n = s.s.n;
    js_trim(&p, &n, true, false);
    char buf[400];
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, p, n);
    buf[n] = 0;
    char *q = buf;
    bool neg = false;
    if (*q == '+' || *q == '-') neg = *q++ == '-';
    if (integer) {
        if (!(*q >= '0' && *q <= '9')) return false;
        double r = 0;
        while (*q >= '0' && *q <= '9') r = r * 10 + (*q++ - '0');
        *out = neg ? -r : r;
        return true;
    }
    if (!strncmp(q, "Infinity", 8)) { *out = neg ? -INFINITY : INFINITY; return true; }
    char *e = q;
    bool any = false;
    while (*e >= '0' && *e <= '9') { e++; any = true; }
    if (*e == '.') { e++; while (*e >= '0' && *e <= '9') { e++; any = true; } }
    if (!any) return false;
    if (*e == 'e' || *e == 'E') {
        char *f = e + 1;
        if (*f == '+' || *f == '-') f++;
        if (*f >= '0' && *f <= '9') {
            while (*f >= '0' && *f <= '9') f++;
            e = f;
        }
    }
    *e = 0;
    *out = strtod(buf, NULL);
    return true;
}

static int float_to_int(jn_ctx *c, double d, val *out) {
    if (!(d > -9007199254740992.0 && d < 9007199254740992.0))
        return fail(c, PERI_E_FORMAT, "number out of the integer range");
    *out = mk_int((int64_t)d);
    return 0;
}

static int unknown_filter(jn_ctx *c, const jn_node *nd, val operand) {
    return fail(c, PERI_E_FORMAT, "filter '%.*s' does not apply to a %s (or is not supported)",
                (int)(nd->n < 60 ? nd->n : 60), nd->s, type_name(operand));
}

static int apply_filter(jn_ctx *c, val x, const jn_node *nd, env *e, val *out) {
    const char *name = nd->s;
    size_t nn = nd->n;
#define IS(s) key_eq(name, nn, s, strlen(s))
    TRY(cost(c, 1));
    if (!nd->flag) {
        if (IS("safe")) { *out = x; return 0; }
        if (IS("tojson")) {
            sbuf b = {0};
            int r = to_json(c, &b, x, &json_default, 0, true);
            if (r) { free(b.p); return r; }
            return sb_take(c, &b, out);
        }
        if (x.t == V_ARRAY) {
            jarr *a = x.a;
            if (IS("list")) { *out = x; return 0; }
            if (IS("first") || IS("last")) {
                if (!a->n) return fail(c, PERI_E_FORMAT, "'%s' of an empty list", IS("first") ? "first" : "last");
                *out = a->v[IS("first") ? 0 : a->n - 1];
                return 0;
            }
            if (IS("length")) { *out = mk_int((int64_t)a->n); return 0; }
            if (IS("reverse") || IS("sort")) {
                jarr *r = NULL;
                TRY(copy_array(c, a, &r));
                if (IS("reverse"))
                    for (size_t i = 0; i < r->n / 2; i++) {
                        val t = r->v[i];
                        r->v[i] = r->v[r->n - 1 - i];
                        r->v[r->n - 1 - i] = t;
                    }
                else {
                    sort_ctx s = {c, false, false, NONE, 0};
                    TRY(sort_vals(&s, r->v, r->n));
                }
                *out = (val){.t = V_ARRAY, .a = r};
                return 0;
            }
            if (IS("join")) return join_vals(c, x, mk_str("", 0), out);
            if (IS("string")) {
                sbuf b = {0};
                int r = to_json(c, &b, x, &json_default, 0, false);
                if (r) { free(b.p); return r; }
                return sb_take(c, &b, out);
            }
            if (IS("unique")) {
                jarr *r = NULL;
                TRY(new_array(c, a->n, &r));
                TRY(cost(c, a->n * a->n / 8 + 1));
                r->n = 0;
                for (size_t i = 0; i < a->n; i++) {
                    bool seen = false;
                    for (size_t j = 0; j < r->n && !seen; j++) seen = strict_eq(r->v[j], a->v[i]);
                    if (!seen) r->v[r->n++] = a->v[i];
                }
                *out = (val){.t = V_ARRAY, .a = r};
                return 0;
            }
            return unknown_filter(c, nd, x);
        }
        if (x.t == V_STR) {
            if (IS("length")) { *out = mk_int((int64_t)js_length(x.s.p, x.s.n)); return 0; }
            if (IS("upper")) return str_case(c, x, 0, out);
            if (IS("lower")) return str_case(c, x, 1, out);
            if (IS("title")) return str_case(c, x, 2, out);
            if (IS("capitalize")) return str_case(c, x, 3, out);
            if (IS("trim")) {
                *out = x;
                js_trim(&out->s.p, &out->s.n, true, true);
                return 0;
            }
            if (IS("indent")) return indent_str(c, x, 4, false, false, out);
            if (IS("join") || IS("string")) { *out = x; return 0; }
            if (IS("int") || IS("float")) {
                double d;
                if (!js_parse_num(x, IS("int"), &d)) d = 0;
                if (IS("float")) { *out = mk_float(d); return 0; }
                return float_to_int(c, d, out);
            }
            return unknown_filter(c, nd, x);
        }
        if (is_num(x)) {
            if (IS("abs")) {
                if (x.t == V_INT) *out = mk_int(x.i < 0 ? -x.i : x.i);
                else *out = mk_float(fabs(x.f));
                if (x.t == V_INT && x.i == INT64_MIN) return fail(c, PERI_E_FORMAT, "integer overflow");
                return 0;
            }
            if (IS("int")) return x.t == V_INT ? (*out = x, 0) : float_to_int(c, floor(x.f), out);
            if (IS("float")) { *out = mk_float(num_of(x)); return 0; }
            if (IS("string")) {
                sbuf b = {0};
                int r = rv_print(c, &b, x);
                if (r) { free(b.p); return r; }
                return sb_take(c, &b, out);
            }
            return unknown_filter(c, nd, x);
        }
        if (x.t == V_OBJ && x.o->kind != O_NS) {
            TRY(obj_full(c, x.o));
            if (IS("items")) {
                jfn f = {.kind = F_METHOD, .method = M_ITEMS, .self = x};
                args_t none = {0};
                return call_method(c, &f, &none, out);
            }
            if (IS("length")) { *out = mk_int((int64_t)x.o->n); return 0; }
            val m;
            TRY(builtin_attr(c, x, name, nn, &m));
            if (m.t == V_FUNC) {
                args_t none = {0};
                return call_method(c, m.fn, &none, out);
            }
            return unknown_filter(c, nd, x);
        }
        if (x.t == V_BOOL) {
            if (IS("bool")) { *out = x; return 0; }
            if (IS("int")) { *out = mk_int(x.b); return 0; }
            if (IS("float")) { *out = mk_float(x.b); return 0; }
            if (IS("string")) { *out = x.b ? mk_str("true", 4) : mk_str("false", 5); return 0; }
        }
        return unknown_filter(c, nd, x);
    }

    // called form: name(args)
    args_t a;
    TRY(eval_args(c, nd->list, nd->nlist, e, &a));
    c->cur_pos = nd->pos;
    if (IS("tojson")) {
        json_opts o = json_default;
        val ind = kwarg(&a, "indent", NONE), asc = kwarg(&a, "ensure_ascii", mk_bool(false));
        val sk = kwarg(&a, "sort_keys", mk_bool(false)), seps = kwarg(&a, "separators", NONE);
        if (ind.t != V_INT && ind.t != V_NONE) return fail(c, PERI_E_FORMAT, "tojson: indent must be an integer");
        if (asc.t != V_BOOL || sk.t != V_BOOL) return fail(c, PERI_E_FORMAT, "tojson: ensure_ascii and sort_keys must be booleans");
        if (ind.t == V_INT) {
            if (ind.i < 0 || ind.i > 64) return fail(c, PERI_E_FORMAT, "tojson: indent %lld is out of range", (long long)ind.i);
            o.indent = (int)ind.i;
            if (o.indent) o.item_sep = ",", o.item_sep_n = 1;
        }
        if (seps.t == V_ARRAY) {
            if (seps.a->n != 2 || seps.a->v[0].t != V_STR || seps.a->v[1].t != V_STR)
                return fail(c, PERI_E_FORMAT, "tojson: separators must be two strings");
            o.item_sep = seps.a->v[0].s.p;
            o.item_sep_n = seps.a->v[0].s.n;
            o.key_sep = seps.a->v[1].s.p;
            o.key_sep_n = seps.a->v[1].s.n;
        } else if (seps.t != V_NONE) {
            return fail(c, PERI_E_FORMAT, "tojson: separators must be two strings");
        }
        o.ensure_ascii = asc.b;
        o.sort_keys = sk.b;
        sbuf b = {0};
        int r = to_json(c, &b, x, &o, 0, true);
        if (r) { free(b.p); return r; }
        return sb_take(c, &b, out);
    }
    if (IS("join")) {
        if (x.t != V_STR && x.t != V_ARRAY) return unknown_filter(c, nd, x);
        val sep = arg_or(&a, 0, "separator", mk_str("", 0));
        if (sep.t != V_STR) return fail(c, PERI_E_FORMAT, "join: the separator must be a string");
        return join_vals(c, x, sep, out);
    }
    if (IS("int") || IS("float")) {
        bool is_int = IS("int");
        val def = arg_or(&a, 0, "default", is_int ? mk_int(0) : mk_float(0));
        if (x.t == V_STR) {
            double d;
            if (!js_parse_num(x, is_int, &d)) { *out = def; return 0; }
            if (!is_int) { *out = mk_float(d); return 0; }
            return float_to_int(c, d, out);
        }
        if (is_num(x)) { *out = x; return 0; }
        if (x.t == V_BOOL) { *out = is_int ? mk_int(x.b) : mk_float(x.b); return 0; }
        return unknown_filter(c, nd, x);
    }
    if (IS("default")) {
        val def = a.npos > 0 ? a.pos[0] : mk_str("", 0);
        val bo = arg_or(&a, 1, "boolean", mk_bool(false));
        if (bo.t != V_BOOL) return fail(c, PERI_E_FORMAT, "default: the second argument must be a boolean");
        *out = (x.t == V_UNDEF || (bo.b && !truthy(x))) ? def : x;
        return 0;
    }
    if (x.t == V_ARRAY) {
        jarr *arr = x.a;
        if (IS("sort")) {
            val rev = arg_or(&a, 0, "reverse", mk_bool(false)), cs = arg_or(&a, 1, "case_sensitive", mk_bool(false));
            val at = arg_or(&a, 2, "attribute", NONE);
            if (rev.t != V_BOOL || cs.t != V_BOOL) return fail(c, PERI_E_FORMAT, "sort: reverse and case_sensitive must be booleans");
            if (at.t != V_STR && at.t != V_INT && at.t != V_NONE) return fail(c, PERI_E_FORMAT, "sort: attribute must be a string or integer");
            jarr *r = NULL;
            TRY(copy_array(c, arr, &r));
            sort_ctx s = {c, cs.b, rev.b, at, 0};
            TRY(sort_vals(&s, r->v, r->n));
            *out = (val){.t = V_ARRAY, .a = r};
            return 0;
        }
        if (IS("selectattr") || IS("rejectattr")) {
            bool sel = IS("selectattr");
            for (size_t i = 0; i < arr->n; i++)
                if (arr->v[i].t != V_OBJ) return fail(c, PERI_E_FORMAT, "%s applies to a list of dicts", sel ? "selectattr" : "rejectattr");
            for (size_t i = 0; i < nd->nlist; i++)
                if (nd->list[i]->kind != JN_STR) return fail(c, PERI_E_FORMAT, "the arguments of selectattr/rejectattr must be string literals");
            if (a.npos == 0) return fail(c, PERI_E_FORMAT, "selectattr/rejectattr need an attribute name");
            val attr = a.pos[0];
            const val *cmp = a.npos > 2 ? &a.pos[2] : NULL;
            if (a.npos > 1) {   // an unknown test fails even on an empty list
                bool ignored;
                TRY(run_test(c, a.pos[1].s.p, a.pos[1].s.n, mk_str("", 0), &a.pos[1], &ignored));
            }
            jarr *r = NULL;
            TRY(new_array(c, arr->n, &r));
            TRY(cost(c, arr->n));
            r->n = 0;
            for (size_t i = 0; i < arr->n; i++) {
                val item = arr->v[i], av;
                bool res = false;
                if (obj_get(item.o, attr.s.p, attr.s.n, &av)) {
                    if (a.npos > 1) TRY(run_test(c, a.pos[1].s.p, a.pos[1].s.n, av, cmp, &res));
                    else res = truthy(av);
                }
                if (res == sel) r->v[r->n++] = item;
            }
            *out = (val){.t = V_ARRAY, .a = r};
            return 0;
        }
        if (IS("map")) {
            val at;
            if (!a.kw || !obj_get(a.kw, "attribute", 9, &at))
                return fail(c, PERI_E_UNSUPPORTED, "map is supported only as map(attribute='name')");
            if (at.t != V_STR) return fail(c, PERI_E_FORMAT, "map: attribute must be a string");
            val def;
            bool has_def = obj_get(a.kw, "default", 7, &def);
            jarr *r = NULL;
            TRY(new_array(c, arr->n, &r));
            TRY(cost(c, arr->n));
            for (size_t i = 0; i < arr->n; i++) {
                if (arr->v[i].t != V_OBJ) return fail(c, PERI_E_FORMAT, "map: the items must be dicts");
                val v = attr_path(arr->v[i], at.s.p, at.s.n);
                r->v[i] = v.t == V_UNDEF && has_def ? def : v;
            }
            *out = (val){.t = V_ARRAY, .a = r};
            return 0;
        }
        return unknown_filter(c, nd, x);
    }
    if (x.t == V_STR) {
        if (IS("indent")) {
            val w = arg_or(&a, 0, "width", mk_int(4)), fi = arg_or(&a, 1, "first", mk_bool(false));
            val bl = arg_or(&a, 2, "blank", mk_bool(false));
            if (w.t != V_INT) return fail(c, PERI_E_FORMAT, "indent: width must be an integer");
            return indent_str(c, x, w.i, truthy(fi), truthy(bl), out);
        }
        if (IS("replace")) {
            jfn f = {.kind = F_METHOD, .method = M_REPLACE, .self = x};
            return call_method(c, &f, &a, out);
        }
        return unknown_filter(c, nd, x);
    }
    if (x.t == V_OBJ && x.o->kind != O_NS) {
        val m;
        TRY(builtin_attr(c, x, name, nn, &m));
        if (m.t == V_FUNC) return call_method(c, m.fn, &a, out);
    }
    return unknown_filter(c, nd, x);
#undef IS
}

// ---- functions --------------------------------------------------------------------------------------------

static int call_macro(jn_ctx *c, const jn_node *m, args_t *a, env *caller, val *out) {
    if (c->call_depth >= PERI_CHAT_MAX_CALL_DEPTH)
        return fail(c, PERI_E_NOMEM, "macro calls nested deeper than %d (runaway recursion?)", PERI_CHAT_MAX_CALL_DEPTH);
    c->mutations++;
    env *ms = env_new(c, caller);   // the reference scopes a macro under its caller
    if (!ms) return oom(c);
    size_t used_kw = 0;
    for (size_t i = 0; i < m->nlist2; i++) {
        const jn_node *p = m->list2[i];
        val v = UNDEF;
        bool have = false;
        if (i < a->npos) {
            v = a->pos[i];
            have = true;
        } else if (a->kw && obj_get(a->kw, p->s, p->n, &v)) {
            have = true;
            used_kw++;
        }
        TRY(obj_set(c, &ms->vars, p->s, p->n, have ? v : UNDEF));
    }
    if (a->kw && used_kw < a->kw->n)
        return fail(c, PERI_E_FORMAT, "macro '%.*s' got an unknown keyword argument", (int)m->n, m->s);
    if (a->npos > m->nlist2)
        return fail(c, PERI_E_FORMAT, "macro '%.*s' takes at most %zu arguments", (int)m->n, m->s, m->nlist2);
    for (size_t i = 0; i < m->nlist2; i++) {
        const jn_node *p = m->list2[i];
        bool given = i < a->npos;
        val tmp;
        if (!given && a->kw && obj_get(a->kw, p->s, p->n, &tmp)) given = true;
        if (!given && p->kind == JN_KWARG) {
            val d;
            TRY(eval(c, p->a, ms, &d));
            TRY(obj_set(c, &ms->vars, p->s, p->n, d));
        }
    }
    c->call_depth++;
    sbuf b = {0};
    int r = exec_block(c, m->list, m->nlist, ms, &b);
    c->call_depth--;
    if (r > 0) {
        free(b.p);
        c->cur_pos = m->pos;
        return fail(c, PERI_E_UNSUPPORTED, "{%% break %%} or {%% continue %%} inside a macro but outside its loops");
    }
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

// range(start, stop, step) as the reference's JavaScript: a missing or undefined stop makes the one-argument
// form, extra arguments are ignored, and an undefined bound gives an empty range.
static int call_range(jn_ctx *c, const args_t *a, val *out) {
    if (a->kw || a->npos < 1) return fail(c, PERI_E_FORMAT, "range() takes 1 to 3 integers");
    val v0 = a->pos[0], v1 = a->npos > 1 ? a->pos[1] : UNDEF, v2 = a->npos > 2 ? a->pos[2] : UNDEF;
    val vstart = v1.t == V_UNDEF ? mk_int(0) : v0, vstop = v1.t == V_UNDEF ? v0 : v1;
    val vstep = v2.t == V_UNDEF ? mk_int(1) : v2;
    jarr *r;
    if (vstart.t == V_UNDEF || vstop.t == V_UNDEF) {
        if (vstep.t == V_INT && vstep.i == 0) return fail(c, PERI_E_FORMAT, "range() step must not be zero");
        TRY(new_array(c, 0, &r));
        *out = (val){.t = V_ARRAY, .a = r};
        return 0;
    }
    if (vstart.t != V_INT || vstop.t != V_INT || vstep.t != V_INT)
        return fail(c, PERI_E_UNSUPPORTED, "range() takes integers");
    int64_t start = vstart.i, stop = vstop.i, step = vstep.i;
    if (step == 0) return fail(c, PERI_E_FORMAT, "range() step must not be zero");
    double cnt = step > 0 ? ceil(((double)stop - (double)start) / (double)step)
                          : ceil(((double)start - (double)stop) / -(double)step);
    if (cnt < 0) cnt = 0;
    if (cnt > PERI_CHAT_MAX_ITERATIONS)
        return fail(c, PERI_E_NOMEM, "range() of %.0f items is beyond the limit of %d", cnt, PERI_CHAT_MAX_ITERATIONS);
    c->iterations += (uint64_t)cnt;
    if (c->iterations > PERI_CHAT_MAX_ITERATIONS)
        return fail(c, PERI_E_NOMEM, "more than %d loop iterations (range() items included); the template loops too much",
                    PERI_CHAT_MAX_ITERATIONS);
    TRY(new_array(c, (size_t)cnt, &r));
    TRY(cost(c, (uint64_t)cnt));
    for (size_t i = 0; i < r->n; i++) r->v[i] = mk_int(start + (int64_t)i * step);
    *out = (val){.t = V_ARRAY, .a = r};
    return 0;
}

static int call_namespace(jn_ctx *c, const args_t *a, val *out) {
    if (a->npos > 1) return fail(c, PERI_E_FORMAT, "namespace() takes at most one positional argument");
    jobj *ns = obj_new(c, O_NS);
    if (!ns) return oom(c);
    if (a->npos == 1) {
        val src = a->pos[0];
        if (src.t == V_OBJ && src.o->kind != O_NS) {
            TRY(obj_full(c, src.o));
            for (size_t i = 0; i < src.o->n; i++) TRY(obj_set(c, ns, src.o->kp[i], src.o->kn[i], src.o->v[i]));
        } else if (src.t == V_ARRAY) {
            for (size_t i = 0; i < src.a->n; i++) {
                val pr = src.a->v[i];
                if (pr.t != V_ARRAY || pr.a->n != 2 || pr.a->v[0].t != V_STR)
                    return fail(c, PERI_E_FORMAT, "namespace() takes a dict or a list of [key, value] pairs");
                TRY(obj_set(c, ns, pr.a->v[0].s.p, pr.a->v[0].s.n, pr.a->v[1]));
            }
        } else {
            return fail(c, PERI_E_FORMAT, "namespace() takes a dict or a list of pairs, not %s", type_name(src));
        }
    }
    if (a->kw)
        for (size_t i = 0; i < a->kw->n; i++) TRY(obj_set(c, ns, a->kw->kp[i], a->kw->kn[i], a->kw->v[i]));
    *out = (val){.t = V_OBJ, .o = ns};
    return 0;
}

static int call_strftime(jn_ctx *c, const args_t *a, val *out) {
    if (a->npos < 1 || a->pos[0].t != V_STR) return fail(c, PERI_E_FORMAT, "strftime_now() takes a format string");
    static const char *months[] = {"January", "February", "March", "April", "May", "June", "July",
                                   "August", "September", "October", "November", "December"};
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    val f = a->pos[0];
    sbuf b = {0};
    int r = 0;
    for (size_t i = 0; !r && i < f.s.n; i++) {
        char buf[32];
        if (f.s.p[i] != '%' || i + 1 >= f.s.n || !strchr("YmdbBHM%", f.s.p[i + 1])) {
            r = sb_ch(c, &b, f.s.p[i]);
            continue;
        }
        switch (f.s.p[++i]) {
        case 'Y': snprintf(buf, sizeof buf, "%d", tm.tm_year + 1900); break;
        case 'm': snprintf(buf, sizeof buf, "%02d", tm.tm_mon + 1); break;
        case 'd': snprintf(buf, sizeof buf, "%02d", tm.tm_mday); break;
        case 'b': snprintf(buf, sizeof buf, "%.3s", months[tm.tm_mon]); break;
        case 'B': snprintf(buf, sizeof buf, "%s", months[tm.tm_mon]); break;
        case 'H': snprintf(buf, sizeof buf, "%02d", tm.tm_hour); break;
        case 'M': snprintf(buf, sizeof buf, "%02d", tm.tm_min); break;
        default: strcpy(buf, "%"); break;
        }
        r = sb_str(c, &b, buf);
    }
    if (r) {
        free(b.p);
        return r;
    }
    return sb_take(c, &b, out);
}

static int call_fn(jn_ctx *c, val fv, args_t *a, env *e, val *out) {
    if (fv.t != V_FUNC)
        return fail(c, PERI_E_FORMAT, "cannot call a %s%s", type_name(fv),
                    fv.t == V_UNDEF ? " (an unknown function or method?)" : "");
    const jfn *f = fv.fn;
    switch (f->kind) {
    case F_RAISE: {
        val m = a->npos ? a->pos[0] : UNDEF, s = mk_str("", 0);
        if (m.t != V_UNDEF && m.t != V_NONE && m.t != V_FUNC) TRY(to_raw_str(c, m, &s));
        return fail(c, PERI_E_ARG, "the template raised an error: %.*s", (int)(s.s.n < 300 ? s.s.n : 300), s.s.p);
    }
    case F_RANGE: return call_range(c, a, out);
    case F_NAMESPACE: return call_namespace(c, a, out);
    case F_STRFTIME: return call_strftime(c, a, out);
    case F_METHOD: return call_method(c, f, a, out);
    default: return call_macro(c, f->macro, a, e, out);
    }
}

// ---- expressions ------------------------------------------------------------------------------------------

static int arith_int(jn_ctx *c, int op, val l, val r, val *out) {
    int64_t x = l.i, y = r.i, res;
    double dx = num_of(l), dy = num_of(r), dres;
    bool ovf = false;
    switch (op) {
    case JOP_ADD: ovf = __builtin_add_overflow(x, y, &res); dres = dx + dy; break;
    case JOP_SUB: ovf = __builtin_sub_overflow(x, y, &res); dres = dx - dy; break;
    case JOP_MUL: ovf = __builtin_mul_overflow(x, y, &res); dres = dx * dy; break;
    case JOP_FLOORDIV:
    case JOP_MOD:
        if (y == 0) {   // JavaScript gives NaN or Infinity, which print the same as these floats
            *out = mk_float(op == JOP_MOD ? NAN : floor(dx / dy));
            return 0;
        }
        if (x == INT64_MIN && y == -1) { ovf = true; res = 0; dres = 0; break; }
        if (op == JOP_MOD) {   // JavaScript's %: the sign of the dividend
            res = x % y;
            dres = fmod(dx, dy);
        } else {
            res = x / y;
            if ((x % y != 0) && ((x < 0) != (y < 0))) res--;
            dres = floor(dx / dy);
        }
        break;
    default: return fail(c, PERI_E_FORMAT, "bad integer operator");
    }
    if (ovf || res > 9007199254740992LL || res < -9007199254740992LL)
        return fail(c, PERI_E_FORMAT, "integer overflow (results beyond 2^53 are not supported)");
    *out = mk_int(res);
    out->nz = res == 0 && signbit(dres);
    return 0;
}

static int concat(jn_ctx *c, val l, val r, val *out) {
    val ls, rs;
    TRY(to_raw_str(c, l, &ls));
    TRY(to_raw_str(c, r, &rs));
    if (!rs.s.n) { *out = ls; return 0; }
    if (!ls.s.n) { *out = rs; return 0; }
    if (ls.s.n + rs.s.n > PERI_CHAT_MAX_OUTPUT)
        return fail(c, PERI_E_NOMEM, "a string would exceed %u MiB", PERI_CHAT_MAX_OUTPUT >> 20);
    char *p = jn_alloc(c, ls.s.n + rs.s.n + 1);
    if (!p) return oom(c);
    memcpy(p, ls.s.p, ls.s.n);
    memcpy(p + ls.s.n, rs.s.p, rs.s.n);
    p[ls.s.n + rs.s.n] = 0;
    *out = mk_str(p, ls.s.n + rs.s.n);
    return 0;
}

static const char *op_name(int op) {
    static const char *names[] = {"+", "-", "~", "*", "/", "//", "%", "**", "==", "!=", "<", ">", "<=", ">=",
                                  "in", "not in", "and", "or", "not", "-", "+"};
    return op >= 0 && op < (int)(sizeof names / sizeof names[0]) ? names[op] : "?";
}

static int eval_binary(jn_ctx *c, const jn_node *nd, env *e, val *out) {
    val l, r;
    TRY(eval(c, nd->a, e, &l));
    int op = nd->op;
    if (op == JOP_AND || op == JOP_OR) {
        if (truthy(l) == (op == JOP_OR)) { *out = l; return 0; }
        return eval(c, nd->b, e, out);
    }
    TRY(eval(c, nd->b, e, &r));
    c->cur_pos = nd->pos;
    TRY(cost(c, 1));
    if (op == JOP_EQ || op == JOP_NE) {
        bool eq;
        TRY(loose_eq(c, l, r, &eq));
        *out = mk_bool(eq == (op == JOP_EQ));
        return 0;
    }
    if (l.t == V_UNDEF || r.t == V_UNDEF) {
        if (r.t == V_UNDEF && (op == JOP_IN || op == JOP_NOTIN)) { *out = mk_bool(op == JOP_NOTIN); return 0; }
        return fail(c, PERI_E_FORMAT, "'%s' on an undefined value (a missing variable or key?)", op_name(op));
    }
    if (l.t == V_NONE || r.t == V_NONE) return fail(c, PERI_E_FORMAT, "'%s' on a none value", op_name(op));
    if (op == JOP_CONCAT) return concat(c, l, r, out);
    bool lnum = is_num(l), rnum = is_num(r);
    if (op == JOP_POW && (lnum || l.t == V_BOOL) && (rnum || r.t == V_BOOL)) {
        double x = num_of(l), y = num_of(r);
        if (x == 0 && y < 0) return fail(c, PERI_E_FORMAT, "0 cannot be raised to a negative power");
        double p = pow(x, y);
        if (!isfinite(p)) return fail(c, PERI_E_FORMAT, "'**' result is not a finite number");
        if (l.t == V_FLOAT || r.t == V_FLOAT || y < 0) { *out = mk_float(p); return 0; }
        return float_to_int(c, p, out);
    }
    if (lnum && rnum) {
        bool fl = l.t == V_FLOAT || r.t == V_FLOAT;
        double x = num_of(l), y = num_of(r);
        switch (op) {
        case JOP_ADD:
        case JOP_SUB:
        case JOP_MUL:
            if (!fl) return arith_int(c, op, l, r, out);
            *out = mk_float(op == JOP_ADD ? x + y : op == JOP_SUB ? x - y : x * y);
            return 0;
        case JOP_DIV: *out = mk_float(x / y); return 0;
        case JOP_FLOORDIV:
        case JOP_MOD:
            if (!fl) return arith_int(c, op, l, r, out);
            *out = mk_float(op == JOP_MOD ? fmod(x, y) : floor(x / y));
            return 0;
        case JOP_LT: *out = mk_bool(x < y); return 0;
        case JOP_GT: *out = mk_bool(x > y); return 0;
        case JOP_LE: *out = mk_bool(x <= y); return 0;
        case JOP_GE: *out = mk_bool(x >= y); return 0;
        }
    } else if (l.t == V_ARRAY && r.t == V_ARRAY) {
        if (op == JOP_ADD) {
            jarr *res;
            TRY(new_array(c, l.a->n + r.a->n, &res));
            TRY(cost(c, res->n / 8));
            if (l.a->n) memcpy(res->v, l.a->v, l.a->n * sizeof *res->v);
            if (r.a->n) memcpy(res->v + l.a->n, r.a->v, r.a->n * sizeof *res->v);
            *out = (val){.t = V_ARRAY, .a = res};
            return 0;
        }
    } else if (r.t == V_ARRAY && (op == JOP_IN || op == JOP_NOTIN)) {
        TRY(cost(c, r.a->n));
        bool found = false;
        for (size_t i = 0; i < r.a->n && !found; i++) found = strict_eq(r.a->v[i], l);
        *out = mk_bool(found == (op == JOP_IN));
        return 0;
    }
    if ((l.t == V_STR || r.t == V_STR) && op == JOP_ADD) return concat(c, l, r, out);
    if (l.t == V_STR && r.t == V_STR && (op == JOP_IN || op == JOP_NOTIN)) {
        TRY(cost(c, r.s.n / 16));
        bool found = l.s.n == 0 || memmem(r.s.p, r.s.n, l.s.p, l.s.n) != NULL;
        *out = mk_bool(found == (op == JOP_IN));
        return 0;
    }
    if (l.t == V_STR && r.t == V_OBJ && r.o->kind != O_NS && (op == JOP_IN || op == JOP_NOTIN)) {
        val tmp;
        bool found = obj_get(r.o, l.s.p, l.s.n, &tmp);
        *out = mk_bool(found == (op == JOP_IN));
        return 0;
    }
    return fail(c, PERI_E_FORMAT, "operator '%s' is not supported between %s and %s", op_name(op), type_name(l),
                type_name(r));
}

static int eval_inner(jn_ctx *c, const jn_node *nd, env *e, val *out) {
    switch (nd->kind) {
    case JN_STR: *out = mk_str(nd->s, nd->n); return 0;
    case JN_INT: *out = mk_int(nd->i); out->nz = nd->flag; return 0;
    case JN_FLOAT: *out = mk_float(nd->f); return 0;
    case JN_ARRAY:
    case JN_TUPLE: {
        jarr *a = NULL;
        TRY(new_array(c, nd->nlist, &a));
        a->tuple = nd->kind == JN_TUPLE;
        for (size_t i = 0; i < nd->nlist; i++) TRY(eval(c, nd->list[i], e, &a->v[i]));
        *out = (val){.t = V_ARRAY, .a = a};
        return 0;
    }
    case JN_DICT: {
        jobj *o = obj_new(c, O_DICT);
        if (!o) return oom(c);
        for (size_t i = 0; i < nd->nlist; i++) {
            val k, v;
            TRY(eval(c, nd->list[i], e, &k));
            if (k.t != V_STR) {
                c->cur_pos = nd->list[i]->pos;
                return fail(c, PERI_E_FORMAT, "dict keys must be strings, not %s", type_name(k));
            }
            TRY(eval(c, nd->list2[i], e, &v));
            TRY(obj_set(c, o, k.s.p, k.s.n, v));
        }
        *out = (val){.t = V_OBJ, .o = o};
        return 0;
    }
    case JN_IDENT: return lookup(c, e, nd->s, nd->n, out);
    case JN_CALL: {
        args_t a;
        val f;
        TRY(eval_args(c, nd->list, nd->nlist, e, &a));
        TRY(eval(c, nd->a, e, &f));
        c->cur_pos = nd->pos;
        return call_fn(c, f, &a, e, out);
    }
    case JN_MEMBER: {
        val obj, prop;
        TRY(eval(c, nd->a, e, &obj));
        if (nd->flag && nd->b->kind == JN_SLICE) {
            c->cur_pos = nd->pos;
            return eval_slice(c, obj, nd->b, e, out);
        }
        if (nd->flag) TRY(eval(c, nd->b, e, &prop));
        else if (nd->b->kind == JN_INT) prop = mk_int(nd->b->i);
        else prop = mk_str(nd->b->s, nd->b->n);
        c->cur_pos = nd->pos;
        return get_member(c, obj, prop, out);
    }
    case JN_UNARY: {
        val v;
        TRY(eval(c, nd->a, e, &v));
        c->cur_pos = nd->pos;
        if (nd->op == JOP_NOT) { *out = mk_bool(!truthy(v)); return 0; }
        int sign = nd->op == JOP_NEG ? -1 : 1;
        if (v.t == V_FLOAT) { *out = mk_float(sign * v.f); return 0; }
        if (v.t == V_INT || v.t == V_BOOL) {
            int64_t x = v.t == V_BOOL ? v.b : v.i;
            if (x == INT64_MIN) return fail(c, PERI_E_FORMAT, "integer overflow");
            *out = mk_int(sign * x);
            out->nz = x == 0 && (sign < 0) != (v.t == V_INT && v.nz);
            return 0;
        }
        return fail(c, PERI_E_FORMAT, "unary '%s' on a %s", sign < 0 ? "-" : "+", type_name(v));
    }
    case JN_BINARY: return eval_binary(c, nd, e, out);
    case JN_FILTER: {
        val x;
        TRY(eval(c, nd->a, e, &x));
        c->cur_pos = nd->pos;
        return apply_filter(c, x, nd, e, out);
    }
    case JN_TEST: {
        val x;
        bool r;
        TRY(eval(c, nd->a, e, &x));
        c->cur_pos = nd->pos;
        TRY(run_test(c, nd->s, nd->n, x, NULL, &r));
        *out = mk_bool(r != nd->flag);
        return 0;
    }
    case JN_SELECT:
    case JN_TERNARY: {
        val t;
        TRY(eval(c, nd->a, e, &t));
        if (truthy(t)) return eval(c, nd->b, e, out);
        if (nd->kind == JN_SELECT) { *out = UNDEF; return 0; }
        return eval(c, nd->c3, e, out);
    }
    default: return fail(c, PERI_E_FORMAT, "this expression cannot be evaluated here");
    }
}

static int eval(jn_ctx *c, const jn_node *nd, env *e, val *out) {
    c->cur_pos = nd->pos;
    if (++c->depth > 4 * PERI_CHAT_MAX_NESTING) {
        c->depth--;
        return fail(c, PERI_E_NOMEM, "expression nested too deeply (more than %d levels)", 4 * PERI_CHAT_MAX_NESTING);
    }
    int r = cost(c, 1);
    if (!r) r = eval_inner(c, nd, e, out);
    c->depth--;
    return r;
}

// ---- statements -------------------------------------------------------------------------------------------

static int assign(jn_ctx *c, const jn_node *target, val v, env *e) {
    if (target->kind == JN_IDENT) return obj_set(c, &e->vars, target->s, target->n, v);
    if (target->kind == JN_TUPLE) {
        if (v.t != V_ARRAY) return fail(c, PERI_E_FORMAT, "cannot unpack a %s", type_name(v));
        if (v.a->n != target->nlist)
            return fail(c, PERI_E_FORMAT, "cannot unpack %zu values into %zu names", v.a->n, target->nlist);
        for (size_t i = 0; i < target->nlist; i++) {
            if (target->list[i]->kind != JN_IDENT) return fail(c, PERI_E_FORMAT, "can only unpack into names");
            TRY(obj_set(c, &e->vars, target->list[i]->s, target->list[i]->n, v.a->v[i]));
        }
        return 0;
    }
    // ns.attr = v
    val obj;
    TRY(eval(c, target->a, e, &obj));
    c->cur_pos = target->pos;
    if (obj.t != V_OBJ || obj.o->kind != O_NS)
        return fail(c, PERI_E_FORMAT, "can only set attributes of a namespace(), not of a %s", type_name(obj));
    if (target->flag || target->b->kind != JN_IDENT) return fail(c, PERI_E_FORMAT, "expected ns.name = value");
    return obj_set(c, obj.o, target->b->s, target->b->n, v);
}

static int exec_for(jn_ctx *c, const jn_node *nd, env *e, sbuf *out) {
    env *scope = env_new(c, e);
    if (!scope) return oom(c);
    const jn_node *test = NULL;
    val it;
    if (nd->b->kind == JN_SELECT) {
        test = nd->b->a;
        TRY(eval(c, nd->b->b, scope, &it));
    } else {
        TRY(eval(c, nd->b, scope, &it));
    }
    c->cur_pos = nd->pos;
    if (it.t == V_OBJ && it.o->kind != O_NS) {
        jfn f = {.kind = F_METHOD, .method = M_KEYS, .self = it};
        args_t none = {0};
        TRY(call_method(c, &f, &none, &it));
    }
    if (it.t != V_ARRAY) return fail(c, PERI_E_FORMAT, "cannot loop over a %s", type_name(it));
    const jn_node *tv = nd->a;
    for (size_t i = 0; i < it.a->n; i++) {
        val cur = it.a->v[i];
        if (tv->kind == JN_TUPLE && (cur.t != V_ARRAY || cur.a->tuple))
            return fail(c, PERI_E_FORMAT, "cannot unpack a %s into loop variables", type_name(cur));
    }
    // The inline filter (for x in xs if test) runs first, over all items, as the reference does.
    const val *items = it.a->v;
    size_t n = it.a->n;
    if (test) {
        val *sel = jn_alloc(c, (n ? n : 1) * sizeof *sel);
        if (!sel) return oom(c);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            env *ls = env_new(c, scope);
            if (!ls) return oom(c);
            TRY(assign(c, tv, items[i], ls));
            val t;
            TRY(eval(c, test, ls, &t));
            if (truthy(t)) sel[k++] = items[i];
        }
        items = sel;
        n = k;
    }
    bool none_done = true;
    jobj *lo = NULL;
    uint64_t lo_mutations = 0;
    for (size_t i = 0; i < n; i++) {
        c->cur_pos = nd->pos;
        if (++c->iterations > PERI_CHAT_MAX_ITERATIONS)
            return fail(c, PERI_E_NOMEM, "more than %d loop iterations (range() items included); the template loops too much",
                        PERI_CHAT_MAX_ITERATIONS);
        // A new loop object only when the last one may have been stored somewhere (a set or macro ran).
        if (!lo || lo->kind != O_LOOP || c->mutations != lo_mutations) {
            if (!(lo = obj_new(c, O_LOOP))) return oom(c);
            lo_mutations = c->mutations;
        }
        lo->loop_i = i;
        lo->loop_n = n;
        lo->loop_items = items;
        TRY(obj_set(c, &scope->vars, "loop", 4, (val){.t = V_OBJ, .o = lo}));
        TRY(assign(c, tv, items[i], scope));
        size_t mark = out->n;
        int r = exec_block(c, nd->list, nd->nlist, scope, out);
        if (r < 0) return r;
        if (r > 0) {   // the reference drops the partial output of an iteration that breaks or continues
            out->n = mark;
            if (out->p) out->p[mark] = 0;
            if (r == FLOW_BREAK) break;
            continue;
        }
        none_done = false;
    }
    if (none_done) return exec_block(c, nd->list2, nd->nlist2, scope, out);
    return 0;
}

static int exec_stmt(jn_ctx *c, const jn_node *nd, env *e, sbuf *out) {
    c->cur_pos = nd->pos;
    TRY(cost(c, 1));
    switch (nd->kind) {
    case JN_STR: return sb_put(c, out, nd->s, nd->n);
    case JN_OUTPUT: {
        amark m = arena_mark(c);
        val v;
        TRY(eval(c, nd->a, e, &v));
        if (v.t != V_UNDEF && v.t != V_NONE) TRY(rv_print(c, out, v));
        arena_release(c, m);
        return 0;
    }
    case JN_IF: {
        amark m = arena_mark(c);
        val t;
        TRY(eval(c, nd->a, e, &t));
        bool yes = truthy(t);
        arena_release(c, m);
        return yes ? exec_block(c, nd->list, nd->nlist, e, out) : exec_block(c, nd->list2, nd->nlist2, e, out);
    }
    case JN_FOR: return exec_for(c, nd, e, out);
    case JN_SET: {
        val v;
        if (nd->flag) {
            sbuf b = {0};
            int r = exec_block(c, nd->list, nd->nlist, e, &b);
            if (r) {
                free(b.p);
                return r;
            }
            TRY(sb_take(c, &b, &v));
        } else {
            TRY(eval(c, nd->b, e, &v));
        }
        c->cur_pos = nd->pos;
        c->mutations++;
        return assign(c, nd->a, v, e);
    }
    case JN_MACRO: {
        jfn *f = fn_new(c, F_MACRO, 0, UNDEF, nd);
        if (!f) return oom(c);
        return obj_set(c, &e->vars, nd->s, nd->n, (val){.t = V_FUNC, .fn = f});
    }
    case JN_BREAK: return FLOW_BREAK;
    case JN_CONTINUE: return FLOW_CONTINUE;
    default: return fail(c, PERI_E_FORMAT, "unexpected statement");
    }
}

static int exec_block(jn_ctx *c, jn_node *const *list, size_t n, env *e, sbuf *out) {
    if (++c->depth > 4 * PERI_CHAT_MAX_NESTING) {
        c->depth--;
        return fail(c, PERI_E_NOMEM, "statements nested too deeply (more than %d levels)", 4 * PERI_CHAT_MAX_NESTING);
    }
    int r = 0;
    for (size_t i = 0; i < n && !r; i++) r = exec_stmt(c, list[i], e, out);
    c->depth--;
    return r;
}

// ---- entry point ------------------------------------------------------------------------------------------

static int set_global_fn(jn_ctx *c, env *g, const char *name, int kind) {
    jfn *f = fn_new(c, kind, 0, UNDEF, NULL);
    if (!f) return oom(c);
    return obj_setz(c, &g->vars, name, (val){.t = V_FUNC, .fn = f});
}

static int render(jn_ctx *c, const char *tmpl, size_t len, const peri_chat_msg *msgs, int n_msgs, bool add_gen,
                  const char *bos, const char *eos, sbuf *out) {
    jn_node **body;
    size_t n_body;
    TRY(jn_parse(c, tmpl, len, &body, &n_body));
    env *g = env_new(c, NULL);
    if (!g) return oom(c);
    TRY(obj_setz(c, &g->vars, "false", mk_bool(false)));
    TRY(obj_setz(c, &g->vars, "true", mk_bool(true)));
    TRY(obj_setz(c, &g->vars, "none", NONE));
    TRY(set_global_fn(c, g, "raise_exception", F_RAISE));
    TRY(set_global_fn(c, g, "range", F_RANGE));
    TRY(set_global_fn(c, g, "strftime_now", F_STRFTIME));
    TRY(obj_setz(c, &g->vars, "True", mk_bool(true)));
    TRY(obj_setz(c, &g->vars, "False", mk_bool(false)));
    TRY(obj_setz(c, &g->vars, "None", NONE));
    jarr *ma;
    TRY(new_array(c, (size_t)n_msgs, &ma));
    for (int i = 0; i < n_msgs; i++) {
        jobj *m = obj_new(c, O_DICT);
        if (!m) return oom(c);
        const char *role = msgs[i].role, *content = msgs[i].content;
        TRY(obj_setz(c, m, "role", role ? mk_str(role, strlen(role)) : NONE));
        TRY(obj_setz(c, m, "content", content ? mk_str(content, strlen(content)) : NONE));
        ma->v[i] = (val){.t = V_OBJ, .o = m};
    }
    TRY(obj_setz(c, &g->vars, "messages", (val){.t = V_ARRAY, .a = ma}));
    TRY(obj_setz(c, &g->vars, "add_generation_prompt", mk_bool(add_gen)));
    if (bos) TRY(obj_setz(c, &g->vars, "bos_token", mk_str(bos, strlen(bos))));
    if (eos) TRY(obj_setz(c, &g->vars, "eos_token", mk_str(eos, strlen(eos))));
    int r = exec_block(c, body, n_body, g, out);
    if (r > 0) return fail(c, PERI_E_FORMAT, "{%% break %%} or {%% continue %%} outside a loop");
    return r;
}

int peri_chat_render(const char *tmpl, const peri_chat_msg *msgs, int n_msgs, bool add_generation_prompt,
                     const char *bos_token, const char *eos_token, char **out) {
    if (!out) return peri_fail(PERI_E_ARG, "peri_chat_render: out is NULL");
    *out = NULL;
    if (!tmpl) return peri_fail(PERI_E_ARG, "peri_chat_render: the template is NULL (the model ships no chat template?)");
    if (n_msgs < 0 || (n_msgs > 0 && !msgs))
        return peri_fail(PERI_E_ARG, "peri_chat_render: bad message list (%d messages)", n_msgs);
    size_t len = strnlen(tmpl, (size_t)PERI_CHAT_MAX_TEMPLATE + 1);
    if (len > PERI_CHAT_MAX_TEMPLATE)
        return peri_fail(PERI_E_NOMEM, "chat template longer than %u bytes", PERI_CHAT_MAX_TEMPLATE);
    size_t msg_bytes = 0;
    for (int i = 0; i < n_msgs; i++) {
        msg_bytes += msgs[i].content ? strlen(msgs[i].content) : 0;
        msg_bytes += msgs[i].role ? strlen(msgs[i].role) : 0;
    }
    jn_ctx c = {.tmpl = tmpl, .tmpl_len = len};
    c.mem_limit = PERI_CHAT_MAX_MEMORY + (msg_bytes < SIZE_MAX / 8 ? 4 * msg_bytes : SIZE_MAX / 2);
    sbuf b = {0};
    int r = render(&c, tmpl, len, msgs, n_msgs, add_generation_prompt, bos_token, eos_token, &b);
    while (c.blocks) {
        jn_block *nx = c.blocks->next;
        free(c.blocks);
        c.blocks = nx;
    }
    if (r) {
        free(b.p);
        return r;
    }
    if (!b.p && sb_put(&c, &b, "", 0)) return c.status;
    *out = b.p;
    return PERI_OK;
}
