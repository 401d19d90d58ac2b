// `peri serve` internals: an OpenAI-compatible HTTP server. One scheduler thread owns the peri_context and
// batches the decode steps of all running requests, and runs classification prefills (sched.c); each connection has its own thread (server.c)
// that parses requests (http.c) and runs the handlers (routes.c), which submit tasks and stream results.
#ifndef PERI_SERVER_SERVER_H
#define PERI_SERVER_SERVER_H

#include "peri.h"
#include "server/http.h"
#include "server/jsonw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define SRV_MAX_TOP_LOGPROBS 20
#define SRV_MAX_STOP 8
#define SRV_MAX_STOP_LEN 256
#define SRV_MAX_PROMPTS 64          // prompts in one /v1/completions request (a list of prompts)

// ---------------------------------------------------------------------------------------------------------
// Tasks: one prompt to complete. Inputs are set by the handler before submission; outputs are written by the
// scheduler under the owning request's mutex.

typedef struct srv_lp {             // log-probabilities of a list of tokens
    int32_t *ids;
    float *lp;
    int32_t *top_ids;               // k per token
    float *top_lp;
    int k;
    size_t n, cap;
} srv_lp;

typedef struct srv_request srv_request;

typedef struct srv_task {
    srv_request *req;
    int index;                      // choice index
    // inputs
    peri_token *prompt;
    int n_prompt;
    int max_tokens;
    struct peri_sampler_params sp;
    char *stop[SRV_MAX_STOP];
    int n_stop;
    int logprobs;                   // -1: none; else top-k count of alternatives
    bool prompt_logprobs;           // echo + logprobs: log-probabilities of the prompt tokens
    bool chat;                      // also stop at end-of-turn tokens
    bool ignore_eos;
    bool classify;                  // sequence classification: one prefill, row `pool` captured, no sampling
    int pool;                       // the pooled token (rightmost non-pad), 0..n_prompt-1
    // outputs (under req->mu)
    float *cls_logits;              // classify: [peri_model_n_outputs()], allocated by the handler
    sbuf text;                      // generated text that is final (stop strings removed)
    int32_t *out_ids;               // generated tokens
    size_t n_out, cap_out;
    srv_lp lp, prompt_lp;
    const char *finish_reason;      // NULL while running: "stop", "length", or NULL + error
    char error[256];
    int error_status;
    bool done;
    double t_submit, t_first_token, t_done;
} srv_task;

struct srv_request {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_task *tasks;
    int n_tasks, n_done;
    atomic_bool cancelled;          // the client went away: the scheduler drops its tasks at once
};

void srv_lp_free(srv_lp *l);

// ---------------------------------------------------------------------------------------------------------
// Scheduler

typedef struct srv_metrics {
    uint64_t requests_completed, requests_cancelled, requests_failed;
    uint64_t prompt_tokens, generated_tokens;
    double ttft_sum;                // seconds, over ttft_count first tokens
    uint64_t ttft_count;
    double decode_seconds;          // wall time of batched decode steps
    uint64_t decode_tokens;         // tokens produced by those steps
    double prefill_seconds;
    int slots_busy, queued;
} srv_metrics;

typedef struct srv_sched srv_sched;

struct srv_sched_params {
    int n_slots, n_ctx, n_threads, max_queue;
    bool prompt_logprobs;           // create the context with logits_all (needed for echo + logprobs, and to
                                    // classify token ids that end in padding)
    peri_token stop_ids[16];        // end-of-generation tokens besides the model's EOS
    int n_stop_ids;
    peri_token chat_stop_ids[16];   // end-of-turn tokens (chat only)
    int n_chat_stop_ids;
};

int srv_sched_new(peri_model *model, const struct srv_sched_params *p, srv_sched **out);
void srv_sched_free(srv_sched *s);  // stops the thread; queued and running tasks end with an error
// Queues every task of req. Returns 0, or -1 when the queue is full (the caller answers 503).
int srv_sched_submit(srv_sched *s, srv_request *req);
void srv_sched_metrics(srv_sched *s, srv_metrics *m);
int srv_sched_n_ctx(const srv_sched *s);
int srv_sched_n_slots(const srv_sched *s);
bool srv_sched_prompt_logprobs(const srv_sched *s);

// ---------------------------------------------------------------------------------------------------------
// Server

typedef void (*srv_log_fn)(const char *line, void *user);

struct srv_config {
    const char *host;               // default "127.0.0.1"
    int port;                       // 0: any free port
    const char *api_key;            // NULL: no authentication
    const char *model_name;         // id reported by /v1/models
    int max_conns;                  // concurrent connections (more get 503)
    size_t max_head;                // request head bytes
    int64_t max_body;               // request body bytes
    int timeout_s;                  // reading a request, or a stalled write
    int idle_timeout_s;             // keep-alive connections between requests
    int max_tokens_limit;           // cap on max_tokens (and its default)
    int max_queue;
    const char *chat_template;      // Jinja source or NULL
    const char *bos_token, *eos_token;   // template variables (NULL = undefined)
    srv_log_fn log;
    void *log_user;
    void (*on_listen)(const char *host, int port, void *user);
};

typedef struct srv_app srv_app;

typedef struct srv_conn {
    int fd;
    srv_app *app;
    bool keep_alive;
    bool failed;                    // a write failed: the client is gone
    char peer[64];
} srv_conn;

struct srv_app {
    struct srv_config cfg;
    peri_model *model;
    const peri_tokenizer *tok;
    srv_sched *sched;
    atomic_int n_conns;
    atomic_bool stopping;
    atomic_ullong http_requests, http_errors;
    double t_start;
};

// Runs until *stop becomes true (e.g. set by a signal handler). Returns 0 or a negative status.
int srv_run(srv_app *app, volatile atomic_bool *stop);

// Writers (server.c). Each returns 0, or -1 when the client is gone (conn->failed is then set).
int srv_send(srv_conn *c, int status, const char *content_type, const char *body, size_t len,
             const char *extra_headers);
int srv_send_error(srv_conn *c, int status, const char *type, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
int srv_write(srv_conn *c, const char *data, size_t len);   // raw bytes
int srv_sse_begin(srv_conn *c);
int srv_sse_data(srv_conn *c, const char *data, size_t len);
// True when the peer has closed its side (checked without blocking).
bool srv_peer_closed(srv_conn *c);
double srv_now(void);
void srv_logf(srv_app *app, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Handlers (routes.c).
void srv_route(srv_conn *c, const http_request *req, const char *body, size_t body_len);

// The chat page (generated from web/chat.html at build time).
extern const char peri_chat_html[];
extern const unsigned long peri_chat_html_len;

#endif
