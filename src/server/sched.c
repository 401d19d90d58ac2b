// Continuous batching for `peri serve`: one thread owns the peri_context. Each iteration it drops
// cancelled tasks, admits at most one queued task into a free slot (its prompt is prefilled alone, as
// PLDR-LLM computes G at prefill), then runs one decode step for every generating slot as one rectangular
// batch (one token per row, seq_ids = slots) and samples each row with the slot's own sampler. A
// classification task is only its prefill: the pooled row is copied out and the slot is free again.
#include "server/server.h"

#include "core/error.h"
#include "tokenizers/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct slot {
    srv_task *task;
    peri_sampler *smp;
    peri_detok_stream ds;
    sbuf raw;                 // all generated text, before stop-string trimming
    size_t committed;         // bytes of raw handed to the task
    peri_token pending;       // sampled, not yet fed to the model
    int n_gen;
    bool prefilled;
} slot;

struct srv_sched {
    peri_model *model;
    peri_context *ctx;
    const peri_tokenizer *tok;
    struct srv_sched_params p;
    int n_vocab;              // width of a logits row: the vocabulary, or a task head's outputs
    peri_token eos;
    slot *slots;
    // queue (under mu)
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_task **queue;
    int q_head, q_len;
    bool stop;
    srv_metrics m;            // under mu
    pthread_t th;
    bool started;
    // batch scratch
    int32_t *b_seq, *b_tok;
    int *b_slot;
    float *lsm;               // log-softmax scratch [n_vocab]
};

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void srv_lp_free(srv_lp *l) {
    free(l->ids);
    free(l->lp);
    free(l->top_ids);
    free(l->top_lp);
    memset(l, 0, sizeof *l);
}

// Appends the log-probability of token id under logits row (and its k best alternatives) to l.
static bool lp_add(srv_lp *l, const float *row, int V, int32_t id, int k) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        int32_t *ids = realloc(l->ids, cap * sizeof *ids);
        if (ids) l->ids = ids;
        float *lp = realloc(l->lp, cap * sizeof *lp);
        if (lp) l->lp = lp;
        int32_t *ti = realloc(l->top_ids, cap * (size_t)(k ? k : 1) * sizeof *ti);
        if (ti) l->top_ids = ti;
        float *tl = realloc(l->top_lp, cap * (size_t)(k ? k : 1) * sizeof *tl);
        if (tl) l->top_lp = tl;
        if (!ids || !lp || !ti || !tl) return false;
        l->cap = cap;
    }
    l->k = k;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) if (row[i] > mx) mx = row[i];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)row[i] - mx);
    const double lse = mx + log(sum);
    l->ids[l->n] = id;
    l->lp[l->n] = (float)(row[id] - lse);
    // k best by selection: k <= SRV_MAX_TOP_LOGPROBS, so O(V k) is cheap next to a decode step.
    int32_t *ti = l->top_ids + l->n * (size_t)k;
    float *tl = l->top_lp + l->n * (size_t)k;
    int got = 0;
    for (int i = 0; i < V && k > 0; i++) {
        float v = row[i];
        if (got == k && v <= tl[k - 1]) continue;
        int j = got < k ? got++ : k - 1;
        while (j > 0 && tl[j - 1] < v) { tl[j] = tl[j - 1]; ti[j] = ti[j - 1]; j--; }
        tl[j] = v;
        ti[j] = i;
    }
    for (int j = 0; j < got; j++) tl[j] = (float)(tl[j] - lse);
    l->n++;
    return true;
}

static void task_finish(srv_sched *s, srv_task *t, const char *reason, int err_status, const char *err) {
    srv_request *r = t->req;
    pthread_mutex_lock(&r->mu);
    t->finish_reason = reason;
    if (err) {
        t->error_status = err_status;
        snprintf(t->error, sizeof t->error, "%s", err);
    }
    t->done = true;
    t->t_done = srv_now();
    r->n_done++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&s->mu);
    if (err) s->m.requests_failed++;
    else if (!reason) s->m.requests_cancelled++;
    else s->m.requests_completed++;
    pthread_mutex_unlock(&s->mu);
}

static void slot_release(srv_sched *s, int i) {
    slot *sl = &s->slots[i];
    peri_sampler_free(sl->smp);
    sb_free(&sl->raw);
    memset(sl, 0, sizeof *sl);
    peri_seq_clear(s->ctx, i);
    pthread_mutex_lock(&s->mu);
    s->m.slots_busy--;
    pthread_mutex_unlock(&s->mu);
}

static void slot_end(srv_sched *s, int i, const char *reason, int err_status, const char *err) {
    srv_task *t = s->slots[i].task;
    slot_release(s, i);
    task_finish(s, t, reason, err_status, err);
}

// Longest suffix of text[0..n) that is a proper prefix of a stop string (text held back from streaming).
static size_t stop_holdback(const srv_task *t, const char *text, size_t n) {
    size_t best = 0;
    for (int k = 0; k < t->n_stop; k++) {
        size_t L = strlen(t->stop[k]);
        for (size_t h = L - 1 < n ? L - 1 : n; h > best; h--)
            if (memcmp(text + n - h, t->stop[k], h) == 0) { best = h; break; }
    }
    return best;
}

// Moves final text of the slot into the task; returns true when a stop string ended generation.
static bool slot_commit(srv_sched *s, slot *sl, bool final) {
    srv_task *t = sl->task;
    size_t upto = sl->raw.n;
    bool stopped = false;
    if (t->n_stop && sl->raw.n) {
        size_t from = sl->committed > SRV_MAX_STOP_LEN ? sl->committed - SRV_MAX_STOP_LEN : 0;
        size_t best = SIZE_MAX;
        for (int k = 0; k < t->n_stop; k++) {
            const char *hit = memmem(sl->raw.p + from, sl->raw.n - from, t->stop[k], strlen(t->stop[k]));
            if (hit && (size_t)(hit - sl->raw.p) < best) best = (size_t)(hit - sl->raw.p);
        }
        if (best != SIZE_MAX) { upto = best; stopped = true; }
        else if (!final) upto = sl->raw.n - stop_holdback(t, sl->raw.p, sl->raw.n);
    }
    if (upto > sl->committed) {
        pthread_mutex_lock(&t->req->mu);
        sb_put(&t->text, sl->raw.p + sl->committed, upto - sl->committed);
        pthread_cond_broadcast(&t->req->cv);
        pthread_mutex_unlock(&t->req->mu);
        sl->committed = upto;
    }
    return stopped;
}

static bool is_stop_token(const srv_sched *s, const srv_task *t, peri_token id) {
    if (t->ignore_eos) return false;
    if (id == s->eos) return true;
    for (int i = 0; i < s->p.n_stop_ids; i++) if (s->p.stop_ids[i] == id) return true;
    if (t->chat)
        for (int i = 0; i < s->p.n_chat_stop_ids; i++) if (s->p.chat_stop_ids[i] == id) return true;
    return false;
}

// Streaming detokenizer into the slot's sbuf (peri_buf has the same first fields but keeps no NUL).
static int detok(srv_sched *s, slot *sl, const peri_token *id) {
    peri_buf pb = {sl->raw.p, sl->raw.n, sl->raw.cap};
    int rc = id ? peri_detok_push(s->tok, &sl->ds, *id, true, &pb) : peri_detok_flush(s->tok, &sl->ds, &pb);
    sl->raw.p = pb.p;
    sl->raw.n = pb.n;
    sl->raw.cap = pb.cap;
    sb_put(&sl->raw, "", 0);
    return rc;
}

// Samples the next token of slot i from its logits row and delivers it. Ends the slot when done.
static void slot_step(srv_sched *s, int i, const float *row) {
    slot *sl = &s->slots[i];
    srv_task *t = sl->task;
    peri_token id = peri_sampler_sample(sl->smp, row);
    peri_sampler_accept(sl->smp, id);
    sl->n_gen++;
    bool eog = is_stop_token(s, t, id);
    pthread_mutex_lock(&t->req->mu);
    bool ok = true;
    if (t->n_out == t->cap_out) {
        size_t cap = t->cap_out ? t->cap_out * 2 : 64;
        int32_t *p = realloc(t->out_ids, cap * sizeof *p);
        if (p) { t->out_ids = p; t->cap_out = cap; } else ok = false;
    }
    if (ok) t->out_ids[t->n_out++] = id;
    if (ok && t->logprobs >= 0 && !eog) ok = lp_add(&t->lp, row, s->n_vocab, id, t->logprobs);
    if (sl->n_gen == 1) t->t_first_token = srv_now();
    pthread_cond_broadcast(&t->req->cv);
    pthread_mutex_unlock(&t->req->mu);
    pthread_mutex_lock(&s->mu);
    s->m.generated_tokens++;
    if (sl->n_gen == 1) { s->m.ttft_sum += t->t_first_token - t->t_submit; s->m.ttft_count++; }
    pthread_mutex_unlock(&s->mu);
    if (!ok) { slot_end(s, i, NULL, 500, "out of memory"); return; }
    if (eog) {
        if (s->tok) {
            detok(s, sl, NULL);
            slot_commit(s, sl, true);
        }
        slot_end(s, i, "stop", 0, NULL);
        return;
    }
    if (s->tok) {
        int rc = detok(s, sl, &id);
        if (!rc && sl->n_gen >= t->max_tokens) rc = detok(s, sl, NULL);
        if (rc || sl->raw.oom) { slot_end(s, i, NULL, 500, "detokenization failed"); return; }
        if (slot_commit(s, sl, sl->n_gen >= t->max_tokens)) { slot_end(s, i, "stop", 0, NULL); return; }
    }
    if (sl->n_gen >= t->max_tokens || peri_seq_len(s->ctx, i) + 1 > s->p.n_ctx) {
        if (s->tok) {
            detok(s, sl, NULL);
            slot_commit(s, sl, true);
        }
        slot_end(s, i, "length", 0, NULL);
        return;
    }
    sl->pending = id;
}

// Prefills slot i's prompt alone (positions from 0) and samples its first token.
static void slot_prefill(srv_sched *s, int i) {
    slot *sl = &s->slots[i];
    srv_task *t = sl->task;
    sl->prefilled = true;
    // Generated text continues the prompt's: SentencePiece keeps the leading space of the first new piece.
    sl->ds.started = true;
    peri_seq_clear(s->ctx, i);
    int32_t seq = i;
    struct peri_batch b = {.n_seq = 1, .n_tokens = t->n_prompt, .seq_ids = &seq, .tokens = t->prompt,
                           .logits_all = t->prompt_logprobs};
    double t0 = srv_now();
    if (peri_decode(s->ctx, &b) != PERI_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "prefill failed: %s", peri_last_error());
        slot_end(s, i, NULL, 500, msg);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->m.prefill_seconds += srv_now() - t0;
    s->m.prompt_tokens += (uint64_t)t->n_prompt;
    pthread_mutex_unlock(&s->mu);
    const float *logits = peri_get_logits(s->ctx);
    const int V = s->n_vocab;
    if (t->prompt_logprobs) {
        pthread_mutex_lock(&t->req->mu);
        bool ok = true;
        for (int k = 1; k < t->n_prompt && ok; k++)
            ok = lp_add(&t->prompt_lp, logits + (size_t)(k - 1) * V, V, t->prompt[k], t->logprobs);
        pthread_mutex_unlock(&t->req->mu);
        if (!ok) { slot_end(s, i, NULL, 500, "out of memory"); return; }
    }
    if (t->max_tokens == 0) { slot_end(s, i, "length", 0, NULL); return; }
    const float *last = logits + (t->prompt_logprobs ? (size_t)(t->n_prompt - 1) * V : 0);
    slot_step(s, i, last);
}

// Prefills slot i's input alone and hands the pooled row of logits to the task. The pooled token is the
// last one unless the ids end in padding; then every row is needed (the handler has checked that the
// context allows it), as the whole input still goes through the model (PLDR-LLM's G depends on all of it).
static void slot_classify(srv_sched *s, int i) {
    srv_task *t = s->slots[i].task;
    peri_seq_clear(s->ctx, i);
    int32_t seq = i;
    const bool all = t->pool != t->n_prompt - 1;
    struct peri_batch b = {.n_seq = 1, .n_tokens = t->n_prompt, .seq_ids = &seq, .tokens = t->prompt, .logits_all = all};
    double t0 = srv_now();
    if (peri_decode(s->ctx, &b) != PERI_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "classification failed: %s", peri_last_error());
        slot_end(s, i, NULL, 500, msg);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->m.prefill_seconds += srv_now() - t0;
    s->m.prompt_tokens += (uint64_t)t->n_prompt;
    pthread_mutex_unlock(&s->mu);
    const float *row = peri_get_logits(s->ctx) + (all ? (size_t)t->pool * (size_t)s->n_vocab : 0);
    pthread_mutex_lock(&t->req->mu);
    memcpy(t->cls_logits, row, sizeof(float) * (size_t)s->n_vocab);
    pthread_mutex_unlock(&t->req->mu);
    slot_end(s, i, "stop", 0, NULL);
}

static void *sched_main(void *arg) {
    srv_sched *s = arg;
    const int N = s->p.n_slots;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        for (;;) {
            bool active = false;
            for (int i = 0; i < N; i++) active |= s->slots[i].task != NULL;
            if (s->stop || active || s->q_len) break;
            pthread_cond_wait(&s->cv, &s->mu);
        }
        if (s->stop) { pthread_mutex_unlock(&s->mu); break; }
        // Cancelled queued tasks leave the queue at once; the first live one takes a free slot.
        srv_task *cancelled[64];
        int n_cancelled = 0;
        int w = 0, L = s->q_len;
        for (int k = 0; k < L; k++) {
            srv_task *t = s->queue[(s->q_head + k) % s->p.max_queue];
            if (atomic_load(&t->req->cancelled) && n_cancelled < 64) cancelled[n_cancelled++] = t;
            else s->queue[(s->q_head + w++) % s->p.max_queue] = t;
        }
        s->q_len = w;
        int admitted = -1;
        for (int i = 0; i < N && s->q_len; i++) {
            if (s->slots[i].task) continue;
            srv_task *t = s->queue[s->q_head];
            s->q_head = (s->q_head + 1) % s->p.max_queue;
            s->q_len--;
            s->slots[i].task = t;
            s->m.slots_busy++;
            admitted = i;
            break;
        }
        s->m.queued = s->q_len;
        pthread_mutex_unlock(&s->mu);
        for (int k = 0; k < n_cancelled; k++) task_finish(s, cancelled[k], NULL, 0, NULL);

        for (int i = 0; i < N; i++) {
            slot *sl = &s->slots[i];
            if (sl->task && atomic_load(&sl->task->req->cancelled)) slot_end(s, i, NULL, 0, NULL);
        }
        if (admitted >= 0 && s->slots[admitted].task) {
            slot *sl = &s->slots[admitted];
            if (sl->task->classify) {
                slot_classify(s, admitted);
            } else if (peri_sampler_init(sl->task->sp, s->n_vocab, &sl->smp) != PERI_OK) {
                char msg[256];
                snprintf(msg, sizeof msg, "bad sampling parameters: %s", peri_last_error());
                slot_end(s, admitted, NULL, 400, msg);
            } else {
                slot_prefill(s, admitted);
            }
        }
        // One decode step for every slot that has a token to feed (the just-prefilled one included).
        int n = 0;
        for (int i = 0; i < N; i++) {
            slot *sl = &s->slots[i];
            if (!sl->task || !sl->prefilled) continue;
            s->b_seq[n] = i;
            s->b_tok[n] = sl->pending;
            n++;
        }
        if (!n) continue;
        struct peri_batch b = {.n_seq = n, .n_tokens = 1, .seq_ids = s->b_seq, .tokens = s->b_tok};
        double t0 = srv_now();
        if (peri_decode(s->ctx, &b) != PERI_OK) {
            char msg[256];
            snprintf(msg, sizeof msg, "decode failed: %s", peri_last_error());
            for (int r = 0; r < n; r++) slot_end(s, s->b_seq[r], NULL, 500, msg);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        s->m.decode_seconds += srv_now() - t0;
        s->m.decode_tokens += (uint64_t)n;
        pthread_mutex_unlock(&s->mu);
        const float *logits = peri_get_logits(s->ctx);
        for (int r = 0; r < n; r++) slot_step(s, s->b_seq[r], logits + (size_t)r * s->n_vocab);
    }
    // Shutdown: everything still queued or running ends with an error.
    for (int i = 0; i < N; i++)
        if (s->slots[i].task) slot_end(s, i, NULL, 503, "the server is shutting down");
    pthread_mutex_lock(&s->mu);
    while (s->q_len) {
        srv_task *t = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->p.max_queue;
        s->q_len--;
        pthread_mutex_unlock(&s->mu);
        task_finish(s, t, NULL, 503, "the server is shutting down");
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int srv_sched_new(peri_model *model, const struct srv_sched_params *p, srv_sched **out) {
    *out = NULL;
    srv_sched *s = calloc(1, sizeof *s);
    if (!s) return peri_fail(PERI_E_NOMEM, "out of memory");
    s->model = model;
    s->p = *p;
    if (s->p.max_queue <= 0) s->p.max_queue = 256;
    s->tok = peri_model_tokenizer(model);
    s->n_vocab = peri_model_n_outputs(model);
    s->eos = peri_model_eos(model);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = p->n_ctx;
    cp.n_seq_max = p->n_slots;
    cp.n_batch = p->n_ctx;     // a whole prompt in one call (PLDR-LLM computes G at prefill)
    cp.n_threads = p->n_threads;
    cp.logits_all = p->prompt_logprobs;
    int rc = peri_context_init(model, cp, &s->ctx);
    if (rc) { srv_sched_free(s); return rc; }
    s->p.n_ctx = peri_context_n_ctx(s->ctx);
    s->slots = calloc((size_t)p->n_slots, sizeof *s->slots);
    s->queue = calloc((size_t)s->p.max_queue, sizeof *s->queue);
    s->b_seq = calloc((size_t)p->n_slots, sizeof *s->b_seq);
    s->b_tok = calloc((size_t)p->n_slots, sizeof *s->b_tok);
    if (!s->slots || !s->queue || !s->b_seq || !s->b_tok) {
        srv_sched_free(s);
        return peri_fail(PERI_E_NOMEM, "out of memory");
    }
    if (pthread_create(&s->th, NULL, sched_main, s) != 0) {
        srv_sched_free(s);
        return peri_fail(PERI_E_NOMEM, "cannot start the scheduler thread");
    }
    s->started = true;
    *out = s;
    return PERI_OK;
}

void srv_sched_free(srv_sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
    }
    peri_context_free(s->ctx);
    free(s->slots);
    free(s->queue);
    free(s->b_seq);
    free(s->b_tok);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

int srv_sched_submit(srv_sched *s, srv_request *req) {
    pthread_mutex_lock(&s->mu);
    if (s->stop || s->q_len + req->n_tasks > s->p.max_queue) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    double now = srv_now();
    for (int k = 0; k < req->n_tasks; k++) {
        req->tasks[k].t_submit = now;
        s->queue[(s->q_head + s->q_len++) % s->p.max_queue] = &req->tasks[k];
    }
    s->m.queued = s->q_len;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void srv_sched_metrics(srv_sched *s, srv_metrics *m) {
    pthread_mutex_lock(&s->mu);
    *m = s->m;
    pthread_mutex_unlock(&s->mu);
}

int srv_sched_n_ctx(const srv_sched *s) { return s->p.n_ctx; }
int srv_sched_n_slots(const srv_sched *s) { return s->p.n_slots; }
bool srv_sched_prompt_logprobs(const srv_sched *s) { return s->p.prompt_logprobs; }
