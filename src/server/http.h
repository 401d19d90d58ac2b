// HTTP/1.1 request parsing for `peri serve`: a strict, bounded parser of the request head (request line and
// headers) that never allocates, so hostile bytes can only produce a 4xx status.
#ifndef PERI_SERVER_HTTP_H
#define PERI_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 64

typedef struct http_span { const char *p; size_t n; } http_span;

typedef struct http_request {
    http_span method, target, path, query;   // path/query split the target at '?'
    int version_minor;                       // HTTP/1.<minor>
    http_span header_names[HTTP_MAX_HEADERS], header_values[HTTP_MAX_HEADERS];
    int n_headers;
    int64_t content_length;                  // -1 when absent
    bool keep_alive;                         // after this request
    bool expect_continue;
    http_span authorization;                 // raw Authorization value (n = 0 if absent)
} http_request;

// Parses the head in buf[0..len). Returns the head's length (through the blank line) when complete, 0 when
// more bytes are needed (and len <= max_head), or minus an HTTP status for an invalid request:
// -400 malformed, -431 head larger than max_head, -501 unsupported Transfer-Encoding, -505 not HTTP/1.x,
// -413 a Content-Length above max_body. Spans point into buf.
int64_t http_parse_request(const char *buf, size_t len, size_t max_head, int64_t max_body, http_request *req);

// Case-insensitive header lookup; returns false if absent.
bool http_header(const http_request *req, const char *name, http_span *value);
bool http_span_eq(http_span s, const char *lit);     // exact match
const char *http_status_text(int status);

#endif
