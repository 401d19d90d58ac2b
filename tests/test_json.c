// Tests of the JSON parser: RFC 8259 conformance, malformed inputs with line:column errors, lookups on big
// objects, escaping, and the real tokenizer files from ../shared.
#include "core/error.h"
#include "core/mapfile.h"
#include "formats/json.h"
#include "test.h"

#include <stdint.h>
#include <time.h>

static json_value *parse(const char *s) { return json_parse(s, strlen(s), "t"); }

static bool fails(const char *s) {
    json_value *v = parse(s);
    if (v) {
        json_free(v);
        return false;
    }
    return strstr(peri_last_error(), "line ") != NULL;
}

static void test_valid(void) {
    json_value *v = parse(" {\"a\": [1, -2, 3.5, 1e3, true, false, null, \"x\"], \"b\": {\"c\": {}}, \"d\": []} ");
    CHECK(v && v->type == JSON_OBJECT && v->len == 3);
    const json_value *a = json_get(v, "a");
    CHECK(a && a->type == JSON_ARRAY && a->len == 8);
    if (a && a->len == 8) {
        CHECK(a->items[0].is_integer && a->items[0].integer == 1 && a->items[0].number == 1.0);
        CHECK(a->items[1].is_integer && a->items[1].integer == -2);
        CHECK(!a->items[2].is_integer && a->items[2].number == 3.5);
        CHECK(!a->items[3].is_integer && a->items[3].number == 1000.0);
        CHECK(a->items[4].type == JSON_BOOL && a->items[4].boolean);
        CHECK(a->items[5].type == JSON_BOOL && !a->items[5].boolean);
        CHECK(a->items[6].type == JSON_NULL);
        CHECK(a->items[7].type == JSON_STRING && strcmp(a->items[7].str, "x") == 0 && a->items[7].len == 1);
    }
    const json_value *b = json_get(v, "b");
    CHECK(b && json_get(b, "c") && json_get(b, "c")->type == JSON_OBJECT && json_get(b, "c")->len == 0);
    CHECK(json_get(v, "d") && json_get(v, "d")->type == JSON_ARRAY && json_get(v, "d")->len == 0);
    CHECK(json_get(v, "zz") == NULL);
    CHECK(json_get(NULL, "a") == NULL);
    CHECK(json_get(a, "a") == NULL);
    json_free(v);

    // Scalars at top level (RFC 8259 allows any value) and a UTF-8 BOM.
    v = parse("42");
    CHECK(v && v->type == JSON_NUMBER && v->integer == 42);
    json_free(v);
    v = parse("\xEF\xBB\xBF\"s\"");
    CHECK(v && v->type == JSON_STRING && strcmp(v->str, "s") == 0);
    json_free(v);

    // Integer limits: INT64_MIN/MAX are integers; one beyond is only a double.
    v = parse("[9223372036854775807, -9223372036854775808, 9223372036854775808, -0, 0.0, 1E+2, 1e-2, "
              "123456789012345678901234567890]");
    CHECK(v && v->len == 8);
    if (v && v->len == 8) {
        CHECK(v->items[0].is_integer && v->items[0].integer == INT64_MAX);
        CHECK(v->items[1].is_integer && v->items[1].integer == INT64_MIN);
        CHECK(!v->items[2].is_integer && v->items[2].number == 9223372036854775808.0);
        CHECK(v->items[3].is_integer && v->items[3].integer == 0);
        CHECK(!v->items[4].is_integer && v->items[4].number == 0.0);
        CHECK(!v->items[5].is_integer && v->items[5].number == 100.0);
        CHECK(v->items[6].number == 0.01);
        CHECK(!v->items[7].is_integer && fabs(v->items[7].number / 1.2345678901234568e29 - 1) < 1e-15);
    }
    json_free(v);
}

static void test_strings(void) {
    json_value *v = parse("[\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\", \"\\u00e9\\u20AC\", \"\\ud83d\\ude00\", \"a\\u0000b\", "
                          "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\", \"\"]");
    CHECK(v && v->len == 6);
    if (v && v->len == 6) {
        CHECK(strcmp(v->items[0].str, "\" \\ / \b \f \n \r \t") == 0);
        CHECK(strcmp(v->items[1].str, "\xC3\xA9\xE2\x82\xAC") == 0 && v->items[1].len == 5);
        CHECK(strcmp(v->items[2].str, "\xF0\x9F\x98\x80") == 0 && v->items[2].len == 4);
        CHECK(v->items[3].len == 3 && memcmp(v->items[3].str, "a\0b", 4) == 0);
        CHECK(strcmp(v->items[4].str, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80") == 0);
        CHECK(v->items[5].len == 0 && v->items[5].str[0] == 0);
    }
    json_free(v);

    // Keys with embedded NULs do not match their prefix.
    v = parse("{\"a\\u0000b\": 1, \"a\": 2}");
    CHECK(v && json_get(v, "a") && json_get(v, "a")->integer == 2);
    json_free(v);
    v = parse("{\"a\\u0000b\": 1}");
    CHECK(v && json_get(v, "a") == NULL);
    json_free(v);
}

static void test_malformed(void) {
    static const char *bad[] = {
        "", " ", "{", "[", "}", "]", "[1,]", "{\"a\":1,}", "{,}", "[,1]", "{\"a\" 1}", "{\"a\":}", "{a:1}",
        "{'a':1}", "['a']", "01", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "NaN", "Infinity", "-Infinity",
        "tru", "nul", "falsey", "[1 2]", "1 2", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\ud800\"",
        "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"a\tb\"", "\"a\nb\"", "\"\x01\"",
        "\"\xC0\x80\"", "\"\xC1\xBF\"", "\"\xE0\x80\x80\"", "\"\xED\xA0\x80\"", "\"\xF4\x90\x80\x80\"", "\"\xF5\x80\x80\x80\"",
        "\"\x80\"", "\"\xC3\"", "\"\xE2\x82\"", "\"\xFF\"", "/* c */ 1", "[1] // c", "[1]]", "{\"a\":1}}", "\"\\\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECKF(fails(bad[i]), "input %zu: %s", i, bad[i]);

    // NUL inside the buffer is not whitespace.
    CHECK(json_parse("1\0", 2, "t") == NULL);

    // Line and column of the error (columns count characters).
    CHECK(parse("{\n  \"a\": tru\n}") == NULL);
    CHECKF(strstr(peri_last_error(), "line 2, column 8") != NULL, "%s", peri_last_error());
    CHECKF(strncmp(peri_last_error(), "t: ", 3) == 0, "%s", peri_last_error());
    CHECK(parse("[\"\xC3\xA9\xC3\xA9\", x]") == NULL);
    CHECKF(strstr(peri_last_error(), "line 1, column 8") != NULL, "%s", peri_last_error());
}

static void test_depth(void) {
    char buf[2 * 600 + 1];
    for (int depth = 511; depth <= 513; depth++) {
        for (int i = 0; i < depth; i++) buf[i] = '[';
        for (int i = 0; i < depth; i++) buf[depth + i] = ']';
        json_value *v = json_parse(buf, 2 * (size_t)depth, "t");
        if (depth <= 512) CHECKF(v != NULL, "depth %d: %s", depth, peri_last_error());
        else CHECKF(v == NULL && strstr(peri_last_error(), "nesting"), "depth %d", depth);
        json_free(v);
    }
    // Deep objects too, and a very deep input fails fast without blowing the stack.
    size_t n = 100000;
    char *deep = malloc(n);
    memset(deep, '[', n);
    CHECK(json_parse(deep, n, "t") == NULL);
    for (size_t i = 0; i + 5 <= n; i += 5) memcpy(deep + i, "{\"a\":", 5);
    CHECK(json_parse(deep, n, "t") == NULL);
    free(deep);
}

static void test_big_object(void) {
    // 5000 members plus duplicates: the hashed lookup must find each and let the last duplicate win.
    size_t cap = 1 << 20, n = 0;
    char *s = malloc(cap);
    n += (size_t)snprintf(s + n, cap - n, "{");
    for (int i = 0; i < 5000; i++) n += (size_t)snprintf(s + n, cap - n, "%s\"k%d\":%d", i ? "," : "", i, i);
    n += (size_t)snprintf(s + n, cap - n, ",\"k17\":-1,\"k4999\":-2}");
    json_value *v = json_parse(s, n, "t");
    CHECK(v && v->len == 5002 && v->index != NULL);
    int bad = 0;
    char key[32];
    for (int i = 0; v && i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        const json_value *m = json_get(v, key);
        int64_t want = i == 17 ? -1 : i == 4999 ? -2 : i;
        if (!m || m->integer != want) bad++;
    }
    CHECK(bad == 0);
    CHECK(json_get(v, "k5000") == NULL && json_get(v, "") == NULL && json_get(v, "k") == NULL);
    json_free(v);

    // Small objects: duplicates, last wins too.
    v = parse("{\"a\":1,\"b\":2,\"a\":3}");
    CHECK(v && v->index == NULL && json_get(v, "a")->integer == 3);
    json_free(v);
    free(s);
}

static void test_getters(void) {
    json_value *v = parse("{\"i\": 7, \"f\": 2.0, \"x\": 2.5, \"b\": true, \"s\": \"str\", \"n\": null, \"big\": 1e300}");
    int64_t i;
    double d;
    bool b;
    const char *s;
    CHECK(json_get_int(v, "i", 0, &i) && i == 7);
    CHECK(json_get_int(v, "f", 0, &i) && i == 2);
    CHECK(!json_get_int(v, "x", 0, &i) && strstr(peri_last_error(), "\"x\""));
    CHECK(!json_get_int(v, "big", 0, &i));
    CHECK(!json_get_int(v, "s", 0, &i) && strstr(peri_last_error(), "\"s\"") && strstr(peri_last_error(), "string"));
    CHECK(json_get_int(v, "missing", -5, &i) && i == -5);
    CHECK(json_get_int(v, "n", -6, &i) && i == -6);
    CHECK(json_get_num(v, "x", 0, &d) && d == 2.5);
    CHECK(json_get_num(v, "i", 0, &d) && d == 7);
    CHECK(!json_get_num(v, "b", 0, &d));
    CHECK(json_get_bool(v, "b", false, &b) && b);
    CHECK(json_get_bool(v, "missing", true, &b) && b);
    CHECK(!json_get_bool(v, "i", false, &b));
    CHECK(json_get_str(v, "s", NULL, &s) && strcmp(s, "str") == 0);
    CHECK(json_get_str(v, "missing", NULL, &s) && s == NULL);
    CHECK(json_get_str(v, "n", "dflt", &s) && strcmp(s, "dflt") == 0);
    CHECK(!json_get_str(v, "i", NULL, &s));
    json_free(v);
}

static void test_escape(void) {
    // Every byte 1..127 plus valid multi-byte UTF-8 survives escape -> parse.
    char src[200];
    size_t n = 0;
    for (int c = 1; c < 128; c++) src[n++] = (char)c;
    memcpy(src + n, "\xC3\xA9\xF0\x9F\x98\x80", 6);
    n += 6;
    size_t need = json_escape(NULL, 0, src, n);
    char *buf = malloc(need + 1);
    CHECK(json_escape(buf, need + 1, src, n) == need && strlen(buf) == need);
    json_value *v = json_parse(buf, need, "t");
    CHECK(v && v->type == JSON_STRING && v->len == n && memcmp(v->str, src, n) == 0);
    json_free(v);
    // An embedded NUL is escaped, not cut.
    CHECK(json_escape(buf, need + 1, "a\0b", 3) == 10 && strcmp(buf, "\"a\\u0000b\"") == 0);
    // Truncation: snprintf-style, always NUL-terminated.
    char small[4];
    CHECK(json_escape(small, sizeof small, "abcdef", 6) == 8 && strcmp(small, "\"ab") == 0);
    // Invalid UTF-8 becomes U+FFFD, so the output still parses.
    size_t k = json_escape(buf, need + 1, "x\xFFy\xC3", 4);
    v = json_parse(buf, k, "t");
    CHECK(v && strcmp(v->str, "x\xEF\xBF\xBDy\xEF\xBF\xBD") == 0);
    json_free(v);
    free(buf);
}

// Random byte edits of a valid document: the parser must return a tree or an error, never crash or leak.
static void test_mutations(void) {
    const char *base = "{\"model\": {\"vocab\": {\"a\": 0, \"\\u00e9\": 1}, \"merges\": [\"a b\", [\"c\", \"d\"]]}, "
                       "\"x\": [1.5e3, -0, true, null, \"\\ud83d\\ude00\"]}";
    size_t n = strlen(base);
    char *buf = malloc(n + 1);
    uint64_t seed = 12345;
    int parsed = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, base, n);
        int edits = 1 + (int)(seed % 3);
        for (int e = 0; e < edits; e++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (seed >> 33) % n;
            buf[pos] = (char)(seed >> 13);
        }
        size_t len = n - (size_t)((seed >> 20) % 4 == 0 ? (seed >> 40) % n : 0);
        json_value *v = json_parse(buf, len, "t");
        if (v) parsed++;
        json_free(v);
    }
    CHECK(parsed > 0 && parsed < 20000);
    free(buf);
}

static char *read_all(const char *path, size_t *len) {
    char *s;
    if (peri_read_file(path, 64u << 20, &s, len) != PERI_OK) return NULL;
    return s;
}

// The real 11 MB Qwen2 tokenizer.json: fast to parse, and its model.vocab equals vocab.json member by member.
static void test_tokenizer_files(const char *shared) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/qwen2/tokenizer.json", shared);
    size_t len;
    char *text = read_all(path, &len);
    if (!text) {
        printf("skip: %s absent\n", path);
        return;
    }
    clock_t t0 = clock();
    json_value *tok = json_parse(text, len, path);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    printf("parsed %s (%zu bytes) in %.3f s\n", path, len, secs);
    CHECKF(tok != NULL, "%s", peri_last_error());
    const json_value *vocab = json_get(json_get(tok, "model"), "vocab");
    CHECK(vocab && vocab->type == JSON_OBJECT && vocab->len > 100000);

    snprintf(path, sizeof path, "%s/tokenizers/qwen2/vocab.json", shared);
    size_t vlen;
    char *vtext = read_all(path, &vlen);
    json_value *v2 = vtext ? json_parse(vtext, vlen, path) : NULL;
    CHECK(v2 && vocab && v2->len == vocab->len);
    if (v2 && vocab) {
        t0 = clock();
        size_t mismatches = 0;
        for (size_t i = 0; i < v2->len; i++) {
            const json_value *m = json_get(vocab, v2->keys[i]);
            if (!m || !m->is_integer || m->integer != v2->items[i].integer) mismatches++;
        }
        secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
        printf("%zu lookups in %.3f s\n", v2->len, secs);
        CHECKF(mismatches == 0, "%zu vocab entries differ between tokenizer.json and vocab.json", mismatches);
    }
    json_free(v2);
    free(vtext);
    json_free(tok);
    free(text);

    // Every line of the tokenizer test vectors is one JSON document.
    snprintf(path, sizeof path, "%s/tokenizers/tests/qwen2.jsonl", shared);
    text = read_all(path, &len);
    if (text) {
        int lines = 0, bad = 0;
        for (char *p = text; *p;) {
            char *nl = strchr(p, '\n');
            size_t l = nl ? (size_t)(nl - p) : strlen(p);
            if (l) {
                json_value *v = json_parse(p, l, path);
                lines++;
                if (!v || v->type != JSON_OBJECT) bad++;
                json_free(v);
            }
            p += l + (nl ? 1 : 0);
        }
        CHECKF(lines > 0 && bad == 0, "%d of %d lines failed", bad, lines);
        free(text);
    }
}

int main(void) {
    test_valid();
    test_strings();
    test_malformed();
    test_depth();
    test_big_object();
    test_getters();
    test_escape();
    test_mutations();
    const char *shared = test_shared_dir();
    if (shared) test_tokenizer_files(shared);
    return TEST_END();
}
