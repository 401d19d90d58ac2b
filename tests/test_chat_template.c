// Chat template renderer: byte-exact against vectors rendered by @huggingface/jinja
// (tests/data/chat/vectors.jsonl, from tools/gen_chat_vectors.mjs), plus errors and hostile templates.
#include "formats/json.h"
#include "test.h"
#include "tokenizers/chat_template.h"

#include "peri.h"

#include <time.h>

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

static const char *str_or_null(const json_value *v) { return v && v->type == JSON_STRING ? v->str : NULL; }

static void show_diff(const char *name, const char *got, const char *want) {
    size_t i = 0;
    while (got[i] && got[i] == want[i]) i++;
    fprintf(stderr, "  %s: differs at byte %zu\n  got:  \"%.80s\"\n  want: \"%.80s\"\n", name, i, got + i, want + i);
}

static int n_vectors, n_error_vectors;
static const char *plm_template_in_vectors;

static void run_vectors(void) {
    char path[1024];
    const char *data = getenv("PERI_TEST_DATA");
    snprintf(path, sizeof path, "%s/chat/vectors.jsonl", data ? data : PERI_TEST_DATA);
    size_t len;
    char *text = read_file(path, &len);
    CHECKF(text != NULL, "cannot read %s", path);
    if (!text) return;
    static char plm_tmpl[8192];
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t n = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        if (n == 0) continue;
        json_value *v = json_parse(line, n, "vectors.jsonl");
        CHECKF(v != NULL, "bad vector line: %s", peri_last_error());
        if (!v) continue;
        const char *name = str_or_null(json_get(v, "template_name"));
        const char *tmpl = str_or_null(json_get(v, "template"));
        const json_value *msgs = json_get(v, "messages");
        const json_value *expected = json_get(v, "expected");
        bool add_gen = false;
        json_get_bool(v, "add_generation_prompt", false, &add_gen);
        const char *bos = str_or_null(json_get(v, "bos_token")), *eos = str_or_null(json_get(v, "eos_token"));
        if (!name || !tmpl || !msgs || msgs->type != JSON_ARRAY || !expected) {
            CHECKF(false, "vector without template_name/template/messages/expected");
            json_free(v);
            continue;
        }
        if (!strncmp(name, "plm_chatml/", 11) && !plm_template_in_vectors && strlen(tmpl) < sizeof plm_tmpl) {
            strcpy(plm_tmpl, tmpl);
            plm_template_in_vectors = plm_tmpl;
        }
        peri_chat_msg *m = calloc(msgs->len ? msgs->len : 1, sizeof *m);
        for (size_t i = 0; i < msgs->len; i++) {
            m[i].role = str_or_null(json_get(&msgs->items[i], "role"));
            m[i].content = str_or_null(json_get(&msgs->items[i], "content"));
        }
        char *out = NULL;
        int r = peri_chat_render(tmpl, m, (int)msgs->len, add_gen, bos, eos, &out);
        n_vectors++;
        if (expected->type == JSON_STRING) {
            CHECKF(r == PERI_OK, "%s (add_generation_prompt=%d): %s", name, add_gen, peri_last_error());
            if (r == PERI_OK) {
                bool same = strlen(out) == expected->len && !memcmp(out, expected->str, expected->len);
                CHECKF(same, "%s (add_generation_prompt=%d): output differs", name, add_gen);
                if (!same) show_diff(name, out, expected->str);
            }
        } else {
            n_error_vectors++;
            CHECKF(r != PERI_OK, "%s: the reference fails (%s) but this rendered \"%.100s\"", name,
                   str_or_null(json_get(v, "error")), out ? out : "");
            CHECKF(r == PERI_OK || out == NULL, "%s: *out must be NULL on failure", name);
        }
        free(out);
        free(m);
        json_free(v);
    }
    free(text);
    CHECKF(n_vectors >= 200, "only %d vectors", n_vectors);
}

// PLM-Instruct's template as shipped must be the one the vectors were made from, and render byte-exactly.
static void check_plm_template(void) {
    const char *shared = test_shared_dir();
    if (!shared) return;
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/qwen2/tokenizer_config.json", shared);
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return;
    json_value *cfg = json_parse(text, len, path);
    const char *tmpl = str_or_null(json_get(cfg, "chat_template"));
    CHECKF(tmpl != NULL, "no chat_template in %s", path);
    CHECKF(tmpl && plm_template_in_vectors && !strcmp(tmpl, plm_template_in_vectors),
           "the vectors' plm_chatml template differs from %s: regenerate them", path);
    json_free(cfg);
    free(text);
}

static int render1(const char *tmpl, char **out) {
    peri_chat_msg msgs[] = {{"user", "hi"}};
    return peri_chat_render(tmpl, msgs, 1, true, "<s>", "</s>", out);
}

static void expect_error(const char *tmpl, int status, const char *needle) {
    char *out = (char *)1;
    int r = render1(tmpl, &out);
    CHECKF(r == status, "\"%.60s\": status %d (%s), expected %d", tmpl, r, peri_last_error(), status);
    CHECKF(out == NULL, "\"%.60s\": *out not NULL on failure", tmpl);
    if (needle) CHECKF(strstr(peri_last_error(), needle) != NULL, "\"%.60s\": message \"%s\" lacks \"%s\"", tmpl,
                       peri_last_error(), needle);
}

static void check_errors(void) {
    expect_error("{% if true %}never closed", PERI_E_FORMAT, "line 1, column 1");
    expect_error("ok\n  {{ 'x' | no_such_filter }}", PERI_E_FORMAT, "no_such_filter");
    expect_error("ok\n  {{ 'x' | no_such_filter }}", PERI_E_FORMAT, "line 2, column 10");
    expect_error("{{ raise_exception('Conversation roles must alternate') }}", PERI_E_ARG,
                 "Conversation roles must alternate");
    expect_error("{{ x ", PERI_E_FORMAT, "line 1");
    expect_error("{% for %}{% endfor %}", PERI_E_FORMAT, "line 1, column 8");
    expect_error("{% include 'x' %}", PERI_E_UNSUPPORTED, "include");
    expect_error("{% frobnicate %}", PERI_E_FORMAT, "frobnicate");
    expect_error("{{ 'abc }}", PERI_E_FORMAT, "unterminated");
    expect_error("{{ '\\q' }}", PERI_E_FORMAT, "escape");
    expect_error("{# open comment", PERI_E_FORMAT, "comment");
    expect_error("{% break %}", PERI_E_FORMAT, "outside a loop");
    expect_error("{{ messages[0].content + none }}", PERI_E_FORMAT, "none");
    expect_error("{{ 9007199254740992 * 4 }}", PERI_E_FORMAT, "overflow");

    char *out = NULL;
    CHECK(peri_chat_render(NULL, NULL, 0, false, NULL, NULL, &out) == PERI_E_ARG);
    CHECK(peri_chat_render("x", NULL, -1, false, NULL, NULL, &out) == PERI_E_ARG);
    CHECK(peri_chat_render("x", NULL, 0, false, NULL, NULL, NULL) == PERI_E_ARG);
    CHECK(peri_chat_render("", NULL, 0, false, NULL, NULL, &out) == PERI_OK && out && !*out);
    free(out);
    // undefined bos_token renders as nothing, as in the reference
    CHECK(peri_chat_render("[{{ bos_token }}]", NULL, 0, false, NULL, NULL, &out) == PERI_OK && !strcmp(out, "[]"));
    free(out);
}

// Hostile templates stop at a limit, quickly, with a message naming it.
static void check_limits(void) {
    clock_t t0 = clock();
    expect_error("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
                 "{% endfor %}{% endfor %}{% endfor %}", PERI_E_NOMEM, "loop iterations");
    expect_error("{% for i in range(100000000000) %}x{% endfor %}", PERI_E_NOMEM, "range()");
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", PERI_E_NOMEM, "macro calls");
    expect_error("{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(0) }}", PERI_E_NOMEM, NULL);
    expect_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}"
                 "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", PERI_E_NOMEM, "MiB");
    expect_error("{% set ns = namespace(a=[1]) %}{% for i in range(60) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}"
                 "{{ ns.a }}", PERI_E_NOMEM, NULL);
    expect_error("{% for i in range(400000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}"
                 "{% endfor %}", PERI_E_NOMEM, "MiB");
    // deep nesting in the source
    char deep[4096];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
    for (int i = 0; i < 1000; i++) deep[k++] = '(';
    deep[k] = 0;
    expect_error(deep, PERI_E_NOMEM, "nesting");
    // a long flat chain parses without recursion but must not evaluate into a stack overflow
    static char chain[200000];
    k = (size_t)snprintf(chain, sizeof chain, "{{ 1");
    for (int i = 0; i < 30000; i++) k += (size_t)snprintf(chain + k, sizeof chain - k, "+1");
    snprintf(chain + k, sizeof chain - k, " }}");
    expect_error(chain, PERI_E_NOMEM, "nested too deeply");
    // a set that captures itself in a namespace cannot recurse forever when printed
    expect_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", PERI_E_FORMAT, "deeply");
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECKF(secs < 60, "hostile templates took %.1f s", secs);
}

static void check_long_chat(void) {
    // 20000 messages of PLM's template: a long conversation renders within the limits.
    enum { N = 20000 };
    peri_chat_msg *m = calloc(N, sizeof *m);
    for (int i = 0; i < N; i++) {
        m[i].role = i % 2 ? "assistant" : "user";
        m[i].content = "some message content that is not very long but not short either.";
    }
    const char *tmpl =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
        "You are a helpful assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
        "'<|im_start|>assistant\n' }}{% endif %}";
    char *out = NULL;
    int r = peri_chat_render(tmpl, m, N, true, NULL, NULL, &out);
    CHECKF(r == PERI_OK, "long chat: %s", peri_last_error());
    CHECK(out && strlen(out) > (size_t)N * 60);
    free(out);
    free(m);
}

int main(void) {
    run_vectors();
    check_plm_template();
    check_errors();
    check_limits();
    check_long_chat();
    printf("%d vectors (%d expected errors)\n", n_vectors, n_error_vectors);
    return TEST_END();
}
