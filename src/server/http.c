// HTTP/1.1 request head parser (RFC 9112 subset): request line, header fields, Content-Length and
// Connection semantics. Strict about syntax, lenient only about bare LF line ends.
#include "server/http.h"

#include <string.h>

static bool is_tchar(unsigned char c) {
    if (c >= '0' && c <= '9') return true;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static bool span_ieq(http_span s, const char *lit) {
    size_t n = strlen(lit);
    if (s.n != n) return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != lower((unsigned char)lit[i])) return false;
    return true;
}

bool http_span_eq(http_span s, const char *lit) {
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

bool http_header(const http_request *req, const char *name, http_span *value) {
    for (int i = 0; i < req->n_headers; i++)
        if (span_ieq(req->header_names[i], name)) {
            if (value) *value = req->header_values[i];
            return true;
        }
    return false;
}

// Does the comma-separated list in v contain token tok (case-insensitive)?
static bool list_has(http_span v, const char *tok) {
    size_t i = 0;
    while (i < v.n) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ',')) i++;
        size_t s = i;
        while (i < v.n && v.p[i] != ',') i++;
        size_t e = i;
        while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t')) e--;
        if (e > s && span_ieq((http_span){v.p + s, e - s}, tok)) return true;
    }
    return false;
}

// Finds the end of the line starting at i: returns the index of its LF, or -1 if none before len.
static int64_t line_end(const char *buf, size_t i, size_t len) {
    const char *lf = memchr(buf + i, '\n', len - i);
    return lf ? (int64_t)(lf - buf) : -1;
}

int64_t http_parse_request(const char *buf, size_t len, size_t max_head, int64_t max_body, http_request *req) {
    memset(req, 0, sizeof *req);
    req->content_length = -1;
    size_t i = 0;
    // RFC 9112 2.2: ignore a few empty lines before the request line (some clients send CRLF after a body).
    for (int k = 0; k < 4 && i < len && (buf[i] == '\r' || buf[i] == '\n'); k++) {
        if (buf[i] == '\r') {
            if (i + 1 >= len) return len > max_head ? -431 : 0;
            if (buf[i + 1] != '\n') return -400;
            i++;
        }
        i++;
    }
    size_t scan = len < max_head ? len : max_head;
    int64_t le = line_end(buf, i, scan);
    if (le < 0) return len >= max_head ? -431 : 0;
    // Request line: method SP target SP HTTP/1.x
    size_t e = (size_t)le;
    if (e > i && buf[e - 1] == '\r') e--;
    size_t p = i;
    while (p < e && is_tchar((unsigned char)buf[p])) p++;
    if (p == i || p - i > 16 || p >= e || buf[p] != ' ') return -400;
    req->method = (http_span){buf + i, p - i};
    size_t t = ++p;
    while (p < e && (unsigned char)buf[p] > 0x20 && (unsigned char)buf[p] < 0x7f) p++;
    if (p == t || p >= e || buf[p] != ' ') return -400;
    req->target = (http_span){buf + t, p - t};
    p++;
    if (e - p != 8 || memcmp(buf + p, "HTTP/", 5) != 0) return -400;
    if (buf[p + 5] != '1' || buf[p + 6] != '.') return (buf[p + 5] >= '0' && buf[p + 5] <= '9') ? -505 : -400;
    if (buf[p + 7] < '0' || buf[p + 7] > '9') return -400;
    req->version_minor = buf[p + 7] - '0';
    const char *q = memchr(req->target.p, '?', req->target.n);
    if (q) {
        req->path = (http_span){req->target.p, (size_t)(q - req->target.p)};
        req->query = (http_span){q + 1, req->target.n - req->path.n - 1};
    } else {
        req->path = req->target;
    }
    // Header fields until an empty line.
    bool close = false, ka = false;
    i = (size_t)le + 1;
    for (;;) {
        le = line_end(buf, i, scan);
        if (le < 0) return len >= max_head ? -431 : 0;
        e = (size_t)le;
        if (e > i && buf[e - 1] == '\r') e--;
        if (e == i) { i = (size_t)le + 1; break; }
        if (buf[i] == ' ' || buf[i] == '\t') return -400;   // obsolete line folding
        p = i;
        while (p < e && is_tchar((unsigned char)buf[p])) p++;
        if (p == i || p >= e || buf[p] != ':') return -400;
        http_span name = {buf + i, p - i};
        p++;
        while (p < e && (buf[p] == ' ' || buf[p] == '\t')) p++;
        size_t ve = e;
        while (ve > p && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t')) ve--;
        for (size_t k = p; k < ve; k++) {
            unsigned char c = (unsigned char)buf[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f) return -400;
        }
        http_span val = {buf + p, ve - p};
        if (req->n_headers >= HTTP_MAX_HEADERS) return -431;
        req->header_names[req->n_headers] = name;
        req->header_values[req->n_headers++] = val;
        if (span_ieq(name, "content-length")) {
            if (val.n == 0 || val.n > 18) return val.n > 18 ? -413 : -400;
            int64_t n = 0;
            for (size_t k = 0; k < val.n; k++) {
                if (val.p[k] < '0' || val.p[k] > '9') return -400;
                n = n * 10 + (val.p[k] - '0');
            }
            if (req->content_length >= 0 && req->content_length != n) return -400;   // smuggling guard
            req->content_length = n;
        } else if (span_ieq(name, "transfer-encoding")) {
            return -501;
        } else if (span_ieq(name, "connection")) {
            if (list_has(val, "close")) close = true;
            if (list_has(val, "keep-alive")) ka = true;
        } else if (span_ieq(name, "expect")) {
            if (!span_ieq(val, "100-continue")) return -400;   // 417 would be exact; 400 is enough
            req->expect_continue = true;
        } else if (span_ieq(name, "authorization")) {
            req->authorization = val;
        }
        i = (size_t)le + 1;
    }
    // HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive unless asked to close.
    req->keep_alive = !close && (req->version_minor > 0 || ka);
    if (req->content_length > max_body) return -413;
    return (int64_t)i;
}

const char *http_status_text(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
