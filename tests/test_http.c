// Unit tests of the server's HTTP/1.1 request parser and response buffers (src/server/http.c, jsonw.c):
// complete and partial heads, keep-alive rules, and the limits and malformations that must give a 4xx.
#include "test.h"

#include "server/http.h"
#include "server/jsonw.h"

static int64_t parse(const char *s, http_request *r) { return http_parse_request(s, strlen(s), 16384, 1 << 20, r); }

int main(void) {
    http_request r;
    const char *get = "GET /v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n\r\n";
    CHECK(parse(get, &r) == (int64_t)strlen(get));
    CHECK(http_span_eq(r.method, "GET") && http_span_eq(r.path, "/v1/models") && http_span_eq(r.query, "x=1"));
    CHECK(r.keep_alive && r.content_length == -1 && r.n_headers == 2 && http_span_eq(r.authorization, "Bearer k"));
    http_span v;
    CHECK(http_header(&r, "host", &v) && http_span_eq(v, "127.0.0.1"));
    CHECK(!http_header(&r, "content-type", &v));

    // Every proper prefix of a complete head needs more bytes.
    int partial_ok = 1;
    for (size_t n = 0; n < strlen(get); n++)
        if (http_parse_request(get, n, 16384, 1 << 20, &r) != 0) partial_ok = 0;
    CHECK(partial_ok);

    // A body: the head length excludes it; bare LF line ends are accepted.
    const char *post = "POST /v1/completions HTTP/1.1\nContent-Length: 2\nConnection: close\n\n{}";
    CHECK(parse(post, &r) == (int64_t)strlen(post) - 2);
    CHECK(r.content_length == 2 && !r.keep_alive);
    CHECK(parse("GET / HTTP/1.0\r\n\r\n", &r) > 0 && !r.keep_alive);
    CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r) > 0 && r.keep_alive);
    CHECK(parse("\r\nGET / HTTP/1.1\r\n\r\n", &r) > 0);   // a stray CRLF before the request line
    CHECK(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", &r) > 0 && r.expect_continue);

    // Malformed requests and limits.
    CHECK(parse("GET  / HTTP/1.1\r\n\r\n", &r) == -400);
    CHECK(parse("GET / HTTP/2.0\r\n\r\n", &r) == -505);
    CHECK(parse("GET / FOO/1.1\r\n\r\n", &r) == -400);
    CHECK(parse("G(T / HTTP/1.1\r\n\r\n", &r) == -400);
    CHECK(parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", &r) == -400);
    CHECK(parse("GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", &r) == -400);
    CHECK(parse("GET / HTTP/1.1\r\nX: a\x01" "b\r\n\r\n", &r) == -400);
    CHECK(parse("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", &r) == -400);
    CHECK(parse("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &r) == -400);
    CHECK(parse("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", &r) > 0);
    CHECK(parse("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", &r) == -413);
    CHECK(parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", &r) == -413);
    CHECK(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &r) == -501);
    CHECK(parse("GET / HTTP/1.1\r\nExpect: something\r\n\r\n", &r) == -400);
    // Too many headers, and a head over the limit with no end in sight.
    char big[20000];
    size_t n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < HTTP_MAX_HEADERS + 1; i++) n += (size_t)snprintf(big + n, sizeof big - n, "X%d: y\r\n", i);
    snprintf(big + n, sizeof big - n, "\r\n");
    CHECK(parse(big, &r) == -431);
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    CHECK(http_parse_request(big, sizeof big, 16384, 1 << 20, &r) == -431);
    CHECK(http_parse_request(big, 100, 16384, 1 << 20, &r) == 0);

    // Response buffers: JSON strings, numbers without infinities, growth.
    sbuf b = {0};
    sb_json_str(&b, "a\"b\n\xff", 5);
    CHECKF(!strcmp(b.p, "\"a\\\"b\\n\\ufffd\""), "%s", b.p);
    sb_clear(&b);
    sb_json_num(&b, -INFINITY);
    sb_puts(&b, " ");
    sb_json_num(&b, 0.5);
    sb_puts(&b, " ");
    sb_json_num(&b, NAN);
    CHECKF(!strcmp(b.p, "-9999 0.5 null"), "%s", b.p);
    sb_clear(&b);
    for (int i = 0; i < 1000; i++) sb_printf(&b, "%d,", i);
    CHECK(b.n == 3890 && !b.oom && b.p[b.n] == 0);
    sb_free(&b);
    CHECK(!strcmp(http_status_text(431), "Request Header Fields Too Large"));
    return TEST_END();
}
