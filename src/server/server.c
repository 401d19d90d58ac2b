// Connections of `peri serve`: a listening socket polled by the main thread, one detached thread per
// connection (at most cfg.max_conns; more are answered 503 and closed), keep-alive, bounded reads with
// timeouts, and writers for plain responses and server-sent events.
#include "server/server.h"

#include "core/error.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void srv_logf(srv_app *app, const char *fmt, ...) {
    if (!app->cfg.log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    app->cfg.log(line, app->cfg.log_user);
}

// Writes all of buf, waiting at most timeout_s for the socket to accept more (a client that stops reading
// cannot hold a connection thread forever).
static int write_all(srv_conn *c, const char *buf, size_t len) {
    if (c->failed) return -1;
    while (len) {
        ssize_t w = send(c->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) { buf += w; len -= (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
            int pr = poll(&pf, 1, c->app->cfg.timeout_s * 1000);
            if (pr > 0 && !(pf.revents & (POLLERR | POLLHUP | POLLNVAL))) continue;
            if (pr < 0 && errno == EINTR) continue;
        }
        c->failed = true;
        return -1;
    }
    return 0;
}

int srv_send(srv_conn *c, int status, const char *content_type, const char *body, size_t len,
             const char *extra_headers) {
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: %s\r\n"
                     "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n%s\r\n",
                     status, http_status_text(status), content_type, len, c->keep_alive ? "keep-alive" : "close",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof head) return -1;
    if (status >= 400) atomic_fetch_add(&c->app->http_errors, 1);
    if (write_all(c, head, (size_t)n)) return -1;
    return write_all(c, body, len);
}

int srv_send_error(srv_conn *c, int status, const char *type, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sbuf b = {0};
    sb_puts(&b, "{\"error\":{\"message\":");
    sb_json_str(&b, msg, strlen(msg));
    sb_puts(&b, ",\"type\":");
    sb_json_str(&b, type, strlen(type));
    sb_printf(&b, ",\"param\":null,\"code\":%d}}", status);
    const char *extra = status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL;
    int rc = b.oom ? -1 : srv_send(c, status, "application/json", b.p, b.n, extra);
    sb_free(&b);
    return rc;
}

int srv_write(srv_conn *c, const char *data, size_t len) { return write_all(c, data, len); }

int srv_sse_begin(srv_conn *c) {
    // Streams end by closing the connection: no chunked framing to get wrong, and a disconnect is final.
    c->keep_alive = false;
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                               "Connection: close\r\nX-Accel-Buffering: no\r\n\r\n";
    return write_all(c, head, sizeof head - 1);
}

int srv_sse_data(srv_conn *c, const char *data, size_t len) {
    if (write_all(c, "data: ", 6)) return -1;
    if (write_all(c, data, len)) return -1;
    return write_all(c, "\n\n", 2);
}

bool srv_peer_closed(srv_conn *c) {
    if (c->failed) return true;
    struct pollfd pf = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&pf, 1, 0) <= 0) return false;
    if (pf.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return true;
    char ch;
    ssize_t r = recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// Reads into buf[*len..cap) until deadline; returns bytes read, 0 on EOF, -1 on error, -2 on timeout.
static ssize_t read_some(srv_conn *c, char *buf, size_t cap, double deadline, volatile atomic_bool *stop) {
    for (;;) {
        double left = deadline - srv_now();
        if (left <= 0 || atomic_load(stop)) return -2;
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        int ms = left > 0.25 ? 250 : (int)(left * 1000) + 1;
        int pr = poll(&pf, 1, ms);
        if (pr < 0 && errno != EINTR) return -1;
        if (pr <= 0) continue;
        ssize_t r = recv(c->fd, buf, cap, MSG_DONTWAIT);
        if (r >= 0) return r;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    }
}

struct conn_arg {
    srv_app *app;
    int fd;
    volatile atomic_bool *stop;
    char peer[64];
};

static void *conn_main(void *arg) {
    struct conn_arg *ca = arg;
    srv_app *app = ca->app;
    srv_conn c = {.fd = ca->fd, .app = app, .keep_alive = true};
    snprintf(c.peer, sizeof c.peer, "%s", ca->peer);
    volatile atomic_bool *stop = ca->stop;
    free(ca);
    const size_t max_head = app->cfg.max_head;
    size_t cap = max_head + 1;
    char *buf = malloc(cap);
    size_t len = 0;
    if (!buf) goto out;
    while (!atomic_load(stop)) {
        // Head: wait idle_timeout for the first byte of a request, then timeout_s for the rest.
        double deadline = srv_now() + (len ? app->cfg.timeout_s : app->cfg.idle_timeout_s);
        bool started = len > 0;
        http_request req;
        int64_t hl;
        while ((hl = http_parse_request(buf, len, max_head, app->cfg.max_body, &req)) == 0) {
            if (len >= cap) { hl = -431; break; }
            ssize_t r = read_some(&c, buf + len, cap - len, deadline, stop);
            if (r == -2 && started) { c.keep_alive = false; srv_send_error(&c, 408, "timeout_error", "the request head did not arrive within %d s", app->cfg.timeout_s); }
            if (r <= 0) goto out;
            if (!started) { started = true; deadline = srv_now() + app->cfg.timeout_s; }
            len += (size_t)r;
        }
        atomic_fetch_add(&app->http_requests, 1);
        if (hl < 0) {
            int st = (int)-hl;
            c.keep_alive = false;
            srv_send_error(&c, st, "invalid_request_error", "%s",
                           st == 431 ? "the request head is too large" :
                           st == 413 ? "the request body is too large" :
                           st == 501 ? "Transfer-Encoding is not supported: send the body with Content-Length" :
                           st == 505 ? "only HTTP/1.0 and HTTP/1.1 are supported" : "malformed HTTP request");
            goto out;
        }
        c.keep_alive = req.keep_alive;
        int64_t blen = req.content_length < 0 ? 0 : req.content_length;
        // The body goes to its own buffer; bytes after it (a pipelined request) stay in buf.
        char *body = malloc((size_t)blen + 1);
        if (!body) { c.keep_alive = false; srv_send_error(&c, 500, "server_error", "out of memory"); goto out; }
        size_t have = len - (size_t)hl;
        size_t take = have < (size_t)blen ? have : (size_t)blen;
        memcpy(body, buf + hl, take);
        // The parsed spans point into buf: copy the head aside before buf is reused.
        char *head = malloc((size_t)hl + 1);
        if (!head) { free(body); goto out; }
        memcpy(head, buf, (size_t)hl);
        http_parse_request(head, (size_t)hl, max_head, app->cfg.max_body, &req);
        memmove(buf, buf + hl + take, len - (size_t)hl - take);
        len -= (size_t)hl + take;
        if (req.expect_continue && take < (size_t)blen) write_all(&c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        deadline = srv_now() + app->cfg.timeout_s;
        while (take < (size_t)blen) {
            ssize_t r = read_some(&c, body + take, (size_t)blen - take, deadline, stop);
            if (r <= 0) {
                if (r == -2) { c.keep_alive = false; srv_send_error(&c, 408, "timeout_error", "the request body did not arrive within %d s", app->cfg.timeout_s); }
                free(body);
                free(head);
                goto out;
            }
            take += (size_t)r;
        }
        body[blen] = 0;
        double t0 = srv_now();
        srv_route(&c, &req, body, (size_t)blen);
        srv_logf(app, "%s %.*s %.*s %.3fs%s", c.peer, (int)req.method.n, req.method.p, (int)req.target.n > 200 ? 200 : (int)req.target.n,
                 req.target.p, srv_now() - t0, c.failed ? " (client gone)" : "");
        free(body);
        free(head);
        if (!c.keep_alive || c.failed) break;
    }
out:
    free(buf);
    shutdown(c.fd, SHUT_WR);
    close(c.fd);
    atomic_fetch_sub(&app->n_conns, 1);
    return NULL;
}

int srv_run(srv_app *app, volatile atomic_bool *stop) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", app->cfg.port);
    int gai = getaddrinfo(app->cfg.host, port_s, &hints, &ai);
    if (gai) return peri_fail(PERI_E_ARG, "cannot resolve host '%s': %s", app->cfg.host, gai_strerror(gai));
    int lfd = -1;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        lfd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (lfd < 0) continue;
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(lfd, a->ai_addr, a->ai_addrlen) == 0 && listen(lfd, 128) == 0) break;
        close(lfd);
        lfd = -1;
    }
    freeaddrinfo(ai);
    if (lfd < 0)
        return peri_fail(PERI_E_IO, "cannot listen on %s:%d: %s (is the port in use? --port 0 picks a free one)",
                         app->cfg.host, app->cfg.port, strerror(errno));
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    int port = sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&sa)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&sa)->sin_port);
    if (app->cfg.on_listen) app->cfg.on_listen(app->cfg.host, port, app->cfg.log_user);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 << 10);
    while (!atomic_load(stop)) {
        struct pollfd pf = {.fd = lfd, .events = POLLIN};
        if (poll(&pf, 1, 200) <= 0) continue;
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char host[INET6_ADDRSTRLEN] = "?";
        if (peer.ss_family == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, host, sizeof host);
        else if (peer.ss_family == AF_INET6) inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, host, sizeof host);
        if (atomic_fetch_add(&app->n_conns, 1) >= app->cfg.max_conns) {
            atomic_fetch_sub(&app->n_conns, 1);
            srv_conn c = {.fd = fd, .app = app, .keep_alive = false};
            srv_send_error(&c, 503, "server_busy", "too many connections (limit %d); retry later", app->cfg.max_conns);
            close(fd);
            continue;
        }
        struct conn_arg *ca = malloc(sizeof *ca);
        pthread_t th;
        if (ca) {
            *ca = (struct conn_arg){.app = app, .fd = fd, .stop = stop};
            snprintf(ca->peer, sizeof ca->peer, "%s", host);
        }
        if (!ca || pthread_create(&th, &attr, conn_main, ca) != 0) {
            free(ca);
            close(fd);
            atomic_fetch_sub(&app->n_conns, 1);
        }
    }
    pthread_attr_destroy(&attr);
    close(lfd);
    // Connection threads notice `stop` within 250 ms (reads) or when their task ends with an error.
    for (int i = 0; i < 100 && atomic_load(&app->n_conns) > 0; i++) usleep(50000);
    return PERI_OK;
}
