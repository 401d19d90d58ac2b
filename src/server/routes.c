// Request handlers of `peri serve`: the OpenAI endpoints (/v1/models, /v1/completions,
// /v1/chat/completions, with or without streaming), /v1/classify, /tokenize, /detokenize, /health, /metrics and the chat
// page. Each handler validates the JSON body into tasks, submits them to the scheduler and writes the
// results as they arrive, cancelling the tasks if the client goes away.
#include "server/server.h"

#include "core/error.h"
#include "formats/json.h"
#include "tokenizers/chat_template.h"
#include "tokenizers/tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_ullong g_req_counter;

// ---------------------------------------------------------------------------------------------------------
// Small helpers

typedef struct err { int status; const char *type; char msg[512]; } err;

static bool fail(err *e, int status, const char *fmt, ...) PERI_PRINTF(3, 4);
static bool fail(err *e, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    e->type = status == 401 ? "authentication_error" : (status >= 500 && status != 501) ? "server_error" : "invalid_request_error";
    return false;
}

static bool is_num(const json_value *v) { return v && v->type == JSON_NUMBER; }
static bool absent(const json_value *v) { return !v || v->type == JSON_NULL; }

static bool get_num(const json_value *o, const char *key, double def, double lo, double hi, double *out, err *e) {
    const json_value *v = json_get(o, key);
    if (absent(v)) { *out = def; return true; }
    if (!is_num(v)) return fail(e, 400, "'%s' must be a number", key);
    if (!(v->number >= lo && v->number <= hi)) return fail(e, 400, "'%s' is %g; it must be between %g and %g", key, v->number, lo, hi);
    *out = v->number;
    return true;
}

static bool get_int(const json_value *o, const char *key, int64_t def, int64_t lo, int64_t hi, int64_t *out, err *e) {
    const json_value *v = json_get(o, key);
    if (absent(v)) { *out = def; return true; }
    if (!is_num(v) || !v->is_integer) return fail(e, 400, "'%s' must be an integer", key);
    if (v->integer < lo || v->integer > hi)
        return fail(e, 400, "'%s' is %lld; it must be between %lld and %lld", key, (long long)v->integer, (long long)lo, (long long)hi);
    *out = v->integer;
    return true;
}

static bool get_bool(const json_value *o, const char *key, bool def, bool *out, err *e) {
    const json_value *v = json_get(o, key);
    if (absent(v)) { *out = def; return true; }
    if (v->type != JSON_BOOL) return fail(e, 400, "'%s' must be true or false", key);
    *out = v->boolean;
    return true;
}

static int64_t tokenize_alloc(const peri_tokenizer *tok, const char *s, size_t n, bool special, peri_token **out) {
    *out = NULL;
    int64_t need = peri_tokenize(tok, s, n, NULL, 0, special);
    if (need < 0) need = -need;
    peri_token *ids = malloc(sizeof *ids * (size_t)(need + 1));
    if (!ids) return -1;
    int64_t got = peri_tokenize(tok, s, n, ids, (size_t)need + 1, special);
    if (got < 0) { free(ids); return -1; }
    *out = ids;
    return got;
}

// The text of one token as the logprobs fields show it (leading spaces kept, specials shown).
static void token_text(const peri_tokenizer *tok, peri_token id, sbuf *out) {
    if (!tok) { sb_printf(out, "[%d]", id); return; }
    peri_detok_stream st = {.started = true};
    peri_buf pb = {0};
    peri_detok_push(tok, &st, id, false, &pb);
    peri_detok_flush(tok, &st, &pb);
    sb_put(out, pb.p, pb.n);
    free(pb.p);
}

static void write_request_free(srv_request *r) {
    for (int i = 0; i < r->n_tasks; i++) {
        srv_task *t = &r->tasks[i];
        free(t->prompt);
        for (int k = 0; k < t->n_stop; k++) free(t->stop[k]);
        sb_free(&t->text);
        free(t->out_ids);
        srv_lp_free(&t->lp);
        srv_lp_free(&t->prompt_lp);
        free(t->cls_logits);
    }
    free(r->tasks);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

// ---------------------------------------------------------------------------------------------------------
// Request parsing into tasks

typedef struct gen_opts {
    bool stream, include_usage, echo, chat;
    int logprobs;                 // -1 none
    char *echo_text[SRV_MAX_PROMPTS];
} gen_opts;

// Parses the sampling and stopping fields shared by both endpoints into a template task.
static bool parse_common(srv_app *app, const json_value *body, bool chat, srv_task *t, gen_opts *o, err *e) {
    int64_t n;
    if (!get_int(body, "n", 1, 1, 1, &n, e)) return fail(e, 400, "'n' must be 1: this server returns one choice per prompt");
    const int limit = app->cfg.max_tokens_limit;
    int64_t mt = 0;
    const char *mt_key = chat && !absent(json_get(body, "max_completion_tokens")) ? "max_completion_tokens" : "max_tokens";
    if (!get_int(body, mt_key, chat ? limit : (16 < limit ? 16 : limit), 0, limit, &mt, e)) {
        const json_value *v = json_get(body, mt_key);
        if (is_num(v) && v->is_integer && v->integer > limit)
            return fail(e, 400, "'%s' is %lld, above this server's limit of %d (--max-tokens)", mt_key, (long long)v->integer, limit);
        return false;
    }
    t->max_tokens = (int)mt;
    double temp = 0, top_p = 0, min_p = 0, pp = 0, fp = 0, rp = 0;
    int64_t top_k = 0, seed = 0;
    if (!get_num(body, "temperature", 1.0, 0, 2, &temp, e) || !get_num(body, "top_p", 1.0, 0, 1, &top_p, e) ||
        !get_num(body, "min_p", 0.0, 0, 1, &min_p, e) || !get_num(body, "presence_penalty", 0, -2, 2, &pp, e) ||
        !get_num(body, "frequency_penalty", 0, -2, 2, &fp, e) || !get_num(body, "repetition_penalty", 1, 0.01, 100, &rp, e) ||
        !get_int(body, "top_k", 0, 0, 1 << 30, &top_k, e) || !get_int(body, "seed", -1, INT64_MIN, INT64_MAX, &seed, e))
        return false;
    if (top_p <= 0) return fail(e, 400, "'top_p' must be above 0");
    t->sp = peri_sampler_default_params();
    t->sp.temperature = (float)temp;
    t->sp.top_p = (float)top_p;
    t->sp.top_k = (int32_t)top_k;
    t->sp.min_p = (float)min_p;
    t->sp.presence_penalty = (float)pp;
    t->sp.frequency_penalty = (float)fp;
    t->sp.repeat_penalty = (float)rp;
    t->sp.seed = seed >= 0 ? (uint64_t)seed
                           : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull + atomic_fetch_add(&g_req_counter, 1);
    const json_value *stop = json_get(body, "stop");
    if (!absent(stop)) {
        const json_value *list = stop->type == JSON_ARRAY ? stop->items : stop;
        size_t ns = stop->type == JSON_ARRAY ? stop->len : 1;
        if (ns > SRV_MAX_STOP) return fail(e, 400, "'stop' has %zu strings; at most %d are allowed", ns, SRV_MAX_STOP);
        for (size_t k = 0; k < ns; k++) {
            const json_value *s = &list[k];
            if (s->type != JSON_STRING) return fail(e, 400, "'stop' must be a string or a list of strings");
            if (s->len == 0 || s->len > SRV_MAX_STOP_LEN || strlen(s->str) != s->len)
                return fail(e, 400, "each 'stop' string must have 1 to %d bytes (and no NUL)", SRV_MAX_STOP_LEN);
            if (!app->tok) return fail(e, 400, "'stop' strings need a tokenizer, and this model has none");
            t->stop[t->n_stop] = strdup(s->str);
            if (!t->stop[t->n_stop]) return fail(e, 500, "out of memory");
            t->n_stop++;
        }
    }
    if (!get_bool(body, "stream", false, &o->stream, e) || !get_bool(body, "ignore_eos", false, &t->ignore_eos, e))
        return false;
    const json_value *so = json_get(body, "stream_options");
    if (!absent(so) && !get_bool(so, "include_usage", false, &o->include_usage, e)) return false;
    o->logprobs = -1;
    if (chat) {
        bool lp;
        int64_t top;
        if (!get_bool(body, "logprobs", false, &lp, e) || !get_int(body, "top_logprobs", 0, 0, SRV_MAX_TOP_LOGPROBS, &top, e))
            return false;
        if (!lp && !absent(json_get(body, "top_logprobs"))) return fail(e, 400, "'top_logprobs' needs 'logprobs': true");
        o->logprobs = lp ? (int)top : -1;
    } else {
        int64_t lp;
        if (!get_int(body, "logprobs", -1, 0, SRV_MAX_TOP_LOGPROBS, &lp, e)) return false;
        o->logprobs = (int)lp;
        if (!get_bool(body, "echo", false, &o->echo, e)) return false;
    }
    t->logprobs = o->logprobs;
    t->chat = o->chat = chat;
    t->prompt_logprobs = o->echo && o->logprobs >= 0;
    if (t->prompt_logprobs && !srv_sched_prompt_logprobs(app->sched))
        return fail(e, 501, "'echo' with 'logprobs' needs the prompt's logits, which this server was started without "
                    "(restart without --no-prompt-logprobs, or with a smaller --ctx / -np)");
    if (t->prompt_logprobs && o->stream) return fail(e, 400, "'echo' with 'logprobs' is not supported with 'stream'");
    return true;
}

// key names the request field ("prompt" or "input") in the messages.
static bool check_prompt(srv_app *app, const char *key, const peri_token *ids, int64_t n, int idx, err *e) {
    const int V = peri_model_n_vocab(app->model), C = srv_sched_n_ctx(app->sched);
    if (n <= 0) {
        if (!strcmp(key, "input")) return fail(e, 400, "input %d has no tokens: give at least one", idx);
        return fail(e, 400, "prompt %d has no tokens: these models add no BOS token, so generation needs at least one", idx);
    }
    if (n > C) return fail(e, 400, "%s %d has %lld tokens, more than the context of %d tokens (--ctx)", key, idx, (long long)n, C);
    for (int64_t k = 0; k < n; k++)
        if (ids[k] < 0 || ids[k] >= V) return fail(e, 400, "%s %d: token id %d at position %lld is outside the vocabulary (0..%d)", key, idx, ids[k], (long long)k, V - 1);
    return true;
}

// Prompt forms of /v1/completions ('prompt') and /v1/classify ('input'): "text", ["text", ...], [id, ...],
// [[id, ...], ...].
static bool parse_prompts(srv_app *app, const json_value *p, const char *key, peri_token **ids, int *n_ids, char **texts,
                          int *n, err *e) {
    *n = 0;
    if (absent(p)) return fail(e, 400, "'%s' is required", key);
    const json_value *one = p;
    size_t count = 1;
    bool list_of = false;
    if (p->type == JSON_ARRAY) {
        if (p->len == 0) return fail(e, 400, "'%s' is an empty list", key);
        if (p->items[0].type == JSON_STRING || p->items[0].type == JSON_ARRAY) { list_of = true; count = p->len; one = p->items; }
    }
    if (count > SRV_MAX_PROMPTS) return fail(e, 400, "'%s' has %zu %ss; at most %d are allowed in one request", key, count, key, SRV_MAX_PROMPTS);
    for (size_t i = 0; i < count; i++) {
        const json_value *q = list_of ? &one[i] : one;
        if (q->type == JSON_STRING) {
            if (!app->tok) return fail(e, 400, "this model has no tokenizer: send the %s as token ids ([1, 2, 3])", key);
            int64_t got = tokenize_alloc(app->tok, q->str, q->len, false, &ids[i]);
            if (got < 0) return fail(e, 400, "cannot tokenize %s %zu: %s", key, i, peri_last_error());
            texts[i] = malloc(q->len + 1);
            if (!texts[i]) return fail(e, 500, "out of memory");
            memcpy(texts[i], q->str, q->len + 1);
            n_ids[i] = (int)got;
        } else if (q->type == JSON_ARRAY) {
            ids[i] = malloc(sizeof(peri_token) * (q->len + 1));
            if (!ids[i]) return fail(e, 500, "out of memory");
            for (size_t k = 0; k < q->len; k++) {
                const json_value *v = &q->items[k];
                if (v->type != JSON_NUMBER || !v->is_integer || v->integer < INT32_MIN || v->integer > INT32_MAX)
                    return fail(e, 400, "'%s': a list of token ids must hold integers only", key);
                ids[i][k] = (peri_token)v->integer;
            }
            n_ids[i] = (int)q->len;
        } else {
            return fail(e, 400, "'%s' must be a string, a list of strings, a list of token ids or a list of such lists", key);
        }
        *n = (int)i + 1;
        if (!check_prompt(app, key, ids[i], n_ids[i], (int)i, e)) return false;
    }
    return true;
}

// Renders the messages with the model's chat template.
static bool render_chat(srv_app *app, const json_value *msgs, char **out, err *e) {
    *out = NULL;
    if (!app->tok) return fail(e, 501, "this model has no tokenizer, so chat is not available; use /v1/completions with token ids");
    if (!app->cfg.chat_template)
        return fail(e, 501, "this model has no chat template (tokenizer_config.json chat_template or GGUF "
                    "tokenizer.chat_template); start the server with --chat-template FILE, or use /v1/completions");
    if (!msgs || msgs->type != JSON_ARRAY || msgs->len == 0) return fail(e, 400, "'messages' must be a non-empty list");
    if (msgs->len > 4096) return fail(e, 400, "'messages' has %zu messages; at most 4096 are allowed", msgs->len);
    peri_chat_msg *m = calloc(msgs->len, sizeof *m);
    sbuf *parts = calloc(msgs->len, sizeof *parts);
    bool ok = m && parts;
    if (!ok) fail(e, 500, "out of memory");
    for (size_t i = 0; ok && i < msgs->len; i++) {
        const json_value *msg = &msgs->items[i];
        const json_value *role = json_get(msg, "role"), *content = json_get(msg, "content");
        if (msg->type != JSON_OBJECT || !role || role->type != JSON_STRING) { ok = fail(e, 400, "messages[%zu] needs a 'role' string", i); break; }
        m[i].role = role->str;
        if (absent(content)) { m[i].content = NULL; continue; }
        if (content->type == JSON_STRING) { m[i].content = content->str; continue; }
        if (content->type != JSON_ARRAY) { ok = fail(e, 400, "messages[%zu].content must be a string or a list of text parts", i); break; }
        // Content parts: only text parts can be used by these text-only models.
        for (size_t k = 0; k < content->len; k++) {
            const json_value *part = &content->items[k], *type = json_get(part, "type"), *text = json_get(part, "text");
            if (!type || type->type != JSON_STRING || strcmp(type->str, "text") != 0 || !text || text->type != JSON_STRING) {
                ok = fail(e, 400, "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} parts are supported", i, k);
                break;
            }
            sb_put(&parts[i], text->str, text->len);
        }
        sb_put(&parts[i], "", 0);
        m[i].content = parts[i].p ? parts[i].p : "";
    }
    if (ok) {
        int rc = peri_chat_render(app->cfg.chat_template, m, (int)msgs->len, true, app->cfg.bos_token, app->cfg.eos_token, out);
        if (rc) ok = fail(e, 400, "the chat template failed on these messages: %s", peri_last_error());
    }
    for (size_t i = 0; parts && i < msgs->len; i++) sb_free(&parts[i]);
    free(parts);
    free(m);
    return ok;
}

// ---------------------------------------------------------------------------------------------------------
// Response writing

typedef struct resp_ctx {
    srv_app *app;
    const gen_opts *o;
    char id[48];
    long long created;
    const char *object;
} resp_ctx;

static void write_head(sbuf *b, const resp_ctx *rc) {
    sb_puts(b, "{\"id\":\"");
    sb_puts(b, rc->id);
    sb_printf(b, "\",\"object\":\"%s\",\"created\":%lld,\"model\":", rc->object, rc->created);
    const char *name = rc->app->cfg.model_name;
    sb_json_str(b, name, strlen(name));
    sb_puts(b, ",\"system_fingerprint\":\"peri\"");
}

// Completions logprobs object over the prompt tokens (if echo) and generated tokens [g0, g1).
static void write_cmpl_logprobs(sbuf *b, const peri_tokenizer *tok, const srv_task *t, size_t g0, size_t g1, bool with_prompt,
                                size_t text_offset) {
    // Entries: prompt tokens (the first has no log-probability), then generated tokens.
    size_t np = with_prompt ? (size_t)t->n_prompt : 0, ng = g1 - g0;
    sbuf s = {0};
    size_t *offs = malloc(sizeof *offs * (np + ng + 1));
    sb_puts(b, "{\"tokens\":[");
    size_t off = text_offset;
    for (size_t i = 0; i < np + ng; i++) {
        int32_t id = i < np ? t->prompt[i] : t->lp.ids[g0 + i - np];
        sb_clear(&s);
        token_text(tok, id, &s);
        if (offs) offs[i] = off;
        off += s.n;
        if (i) sb_puts(b, ",");
        sb_json_str(b, s.p ? s.p : "", s.n);
    }
    sb_puts(b, "],\"token_logprobs\":[");
    for (size_t i = 0; i < np + ng; i++) {
        if (i) sb_puts(b, ",");
        if (i < np) { if (i == 0) sb_puts(b, "null"); else sb_json_num(b, t->prompt_lp.lp[i - 1]); }
        else sb_json_num(b, t->lp.lp[g0 + i - np]);
    }
    sb_puts(b, "],\"top_logprobs\":[");
    for (size_t i = 0; i < np + ng; i++) {
        if (i) sb_puts(b, ",");
        if (i == 0 && np) { sb_puts(b, "null"); continue; }
        const srv_lp *l = i < np ? &t->prompt_lp : &t->lp;
        size_t j = i < np ? i - 1 : g0 + i - np;
        sb_puts(b, "{");
        for (int k = 0; k < l->k; k++) {
            sb_clear(&s);
            token_text(tok, l->top_ids[j * (size_t)l->k + k], &s);
            if (k) sb_puts(b, ",");
            sb_json_str(b, s.p ? s.p : "", s.n);
            sb_puts(b, ":");
            sb_json_num(b, l->top_lp[j * (size_t)l->k + k]);
        }
        sb_puts(b, "}");
    }
    sb_puts(b, "],\"text_offset\":[");
    for (size_t i = 0; i < np + ng; i++) sb_printf(b, "%s%zu", i ? "," : "", offs ? offs[i] : 0);
    sb_puts(b, "]}");
    free(offs);
    sb_free(&s);
}

static void write_bytes(sbuf *b, const sbuf *s) {
    sb_puts(b, "[");
    for (size_t i = 0; i < s->n; i++) sb_printf(b, "%s%u", i ? "," : "", (unsigned char)s->p[i]);
    sb_puts(b, "]");
}

// Chat logprobs object over generated tokens [g0, g1).
static void write_chat_logprobs(sbuf *b, const peri_tokenizer *tok, const srv_task *t, size_t g0, size_t g1) {
    sbuf s = {0};
    sb_puts(b, "{\"content\":[");
    for (size_t i = g0; i < g1; i++) {
        sb_clear(&s);
        token_text(tok, t->lp.ids[i], &s);
        sb_printf(b, "%s{\"token\":", i > g0 ? "," : "");
        sb_json_str(b, s.p ? s.p : "", s.n);
        sb_puts(b, ",\"logprob\":");
        sb_json_num(b, t->lp.lp[i]);
        sb_puts(b, ",\"bytes\":");
        write_bytes(b, &s);
        sb_puts(b, ",\"top_logprobs\":[");
        for (int k = 0; k < t->lp.k; k++) {
            sb_clear(&s);
            token_text(tok, t->lp.top_ids[i * (size_t)t->lp.k + k], &s);
            sb_printf(b, "%s{\"token\":", k ? "," : "");
            sb_json_str(b, s.p ? s.p : "", s.n);
            sb_puts(b, ",\"logprob\":");
            sb_json_num(b, t->lp.top_lp[i * (size_t)t->lp.k + k]);
            sb_puts(b, ",\"bytes\":");
            write_bytes(b, &s);
            sb_puts(b, "}");
        }
        sb_puts(b, "]}");
    }
    sb_puts(b, "]}");
    sb_free(&s);
}

static void write_usage(sbuf *b, const srv_request *r) {
    long long p = 0, c = 0;
    for (int i = 0; i < r->n_tasks; i++) { p += r->tasks[i].n_prompt; c += (long long)r->tasks[i].n_out; }
    sb_printf(b, "\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld}", p, c, p + c);
}

static void write_token_ids(sbuf *b, const srv_task *t) {
    sb_puts(b, ",\"token_ids\":[");
    for (size_t i = 0; i < t->n_out; i++) sb_printf(b, "%s%d", i ? "," : "", t->out_ids[i]);
    sb_puts(b, "]");
}

static void write_final(sbuf *b, const resp_ctx *rc, const srv_request *r) {
    const gen_opts *o = rc->o;
    const peri_tokenizer *tok = rc->app->tok;
    write_head(b, rc);
    sb_puts(b, ",\"choices\":[");
    for (int i = 0; i < r->n_tasks; i++) {
        const srv_task *t = &r->tasks[i];
        const char *fr = t->finish_reason ? t->finish_reason : "stop";
        sb_printf(b, "%s{\"index\":%d,", i ? "," : "", i);
        if (o->chat) {
            sb_puts(b, "\"message\":{\"role\":\"assistant\",\"content\":");
            sb_json_str(b, t->text.p ? t->text.p : "", t->text.n);
            sb_puts(b, "},\"logprobs\":");
            if (o->logprobs >= 0) write_chat_logprobs(b, tok, t, 0, t->lp.n);
            else sb_puts(b, "null");
        } else {
            sb_puts(b, "\"text\":");
            sbuf txt = {0};
            if (o->echo) {
                if (o->echo_text[i]) sb_puts(&txt, o->echo_text[i]);
                else if (tok) {
                    int64_t need = -peri_detokenize(tok, t->prompt, (size_t)t->n_prompt, NULL, 0, false);
                    char *p = need > 0 ? malloc((size_t)need) : NULL;
                    int64_t got = p ? peri_detokenize(tok, t->prompt, (size_t)t->n_prompt, p, (size_t)need, false) : 0;
                    if (got > 0) sb_put(&txt, p, (size_t)got);
                    free(p);
                }
            }
            size_t echo_len = txt.n;
            if (t->text.n) sb_put(&txt, t->text.p, t->text.n);
            sb_json_str(b, txt.p ? txt.p : "", txt.n);
            sb_free(&txt);
            sb_puts(b, ",\"logprobs\":");
            (void)echo_len;
            if (o->logprobs >= 0) write_cmpl_logprobs(b, tok, t, 0, t->lp.n, t->prompt_logprobs, 0);
            else sb_puts(b, "null");
        }
        if (!tok) write_token_ids(b, t);
        sb_printf(b, ",\"finish_reason\":\"%s\"}", fr);
    }
    sb_puts(b, "],");
    write_usage(b, r);
    sb_puts(b, "}");
}

// One streaming chunk for task t: text delta [t0, t1) of t->text, logprobs [g0, g1), finish reason.
static void write_chunk(sbuf *b, const resp_ctx *rc, const srv_task *t, size_t t0, size_t t1, size_t g0, size_t g1,
                        size_t i0, size_t i1, const char *finish, bool first) {
    const gen_opts *o = rc->o;
    write_head(b, rc);
    sb_printf(b, ",\"choices\":[{\"index\":%d,", t->index);
    if (o->chat) {
        sb_puts(b, "\"delta\":{");
        if (first) sb_puts(b, "\"role\":\"assistant\",");
        if (!finish || t1 > t0) {
            sb_puts(b, "\"content\":");
            sb_json_str(b, t->text.p ? t->text.p + t0 : "", t1 - t0);
        } else if (first) {
            sb_puts(b, "\"content\":\"\"");
        }
        if (b->n && b->p[b->n - 1] == ',') b->p[--b->n] = 0;
        sb_puts(b, "},\"logprobs\":");
        if (o->logprobs >= 0 && g1 > g0) write_chat_logprobs(b, rc->app->tok, t, g0, g1);
        else sb_puts(b, "null");
    } else {
        sb_puts(b, "\"text\":");
        sb_json_str(b, t->text.p ? t->text.p + t0 : "", t1 - t0);
        sb_puts(b, ",\"logprobs\":");
        if (o->logprobs >= 0 && g1 > g0) write_cmpl_logprobs(b, rc->app->tok, t, g0, g1, false, t0);
        else sb_puts(b, "null");
    }
    if (!rc->app->tok) {
        // Without a tokenizer the ids are the output: each chunk carries the new ones.
        sb_puts(b, ",\"token_ids\":[");
        for (size_t i = i0; i < i1; i++) sb_printf(b, "%s%d", i > i0 ? "," : "", t->out_ids[i]);
        sb_puts(b, "]");
    }
    if (finish) sb_printf(b, ",\"finish_reason\":\"%s\"}]", finish);
    else sb_puts(b, ",\"finish_reason\":null}]");
    if (o->include_usage) sb_puts(b, ",\"usage\":null");
    sb_puts(b, "}");
}

// Submits the tasks and writes the answer (whole or streamed). Owns nothing of r; r is complete on return.
static void run_request(srv_conn *c, srv_request *r, const gen_opts *o) {
    srv_app *app = c->app;
    resp_ctx rc = {.app = app, .o = o, .created = (long long)time(NULL), .object = o->chat ? (o->stream ? "chat.completion.chunk" : "chat.completion") : "text_completion"};
    snprintf(rc.id, sizeof rc.id, "%s-%llx%llx", o->chat ? "chatcmpl" : "cmpl", (unsigned long long)time(NULL),
             (unsigned long long)atomic_fetch_add(&g_req_counter, 1));
    if (srv_sched_submit(app->sched, r) != 0) {
        srv_send_error(c, 503, "server_busy", "the request queue is full (%d waiting); retry later", app->cfg.max_queue);
        return;
    }
    size_t sent_text[SRV_MAX_PROMPTS] = {0}, sent_lp[SRV_MAX_PROMPTS] = {0}, sent_ids[SRV_MAX_PROMPTS] = {0};
    bool finished[SRV_MAX_PROMPTS] = {0};
    bool streaming = o->stream, gone = false;
    if (streaming && srv_sse_begin(c)) gone = true;
    if (streaming && !gone && o->chat) {
        // The role comes first so that clients can show the turn before its first token.
        for (int i = 0; i < r->n_tasks && !gone; i++) {
            sbuf b = {0};
            write_chunk(&b, &rc, &r->tasks[i], 0, 0, 0, 0, 0, 0, NULL, true);
            if (srv_sse_data(c, b.p, b.n)) gone = true;
            sb_free(&b);
        }
    }
    if (streaming && !gone && o->echo) {
        for (int i = 0; i < r->n_tasks && !gone; i++) {
            sbuf b = {0};
            write_head(&b, &rc);
            sb_printf(&b, ",\"choices\":[{\"index\":%d,\"text\":", i);
            const char *et = o->echo_text[i] ? o->echo_text[i] : "";
            sb_json_str(&b, et, strlen(et));
            sb_puts(&b, ",\"logprobs\":null,\"finish_reason\":null}]}");
            if (srv_sse_data(c, b.p, b.n)) gone = true;
            sb_free(&b);
        }
    }
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (streaming && !gone) {
            sbuf out = {0};
            for (int i = 0; i < r->n_tasks; i++) {
                srv_task *t = &r->tasks[i];
                if (finished[i]) continue;
                size_t tn = t->text.n, gn = t->lp.n, in = app->tok ? 0 : t->n_out;
                bool fin = t->done;
                if (fin && !t->finish_reason) continue;   // an error: reported after the loop
                if (tn == sent_text[i] && gn == sent_lp[i] && in == sent_ids[i] && !fin) continue;
                sbuf b = {0};
                write_chunk(&b, &rc, t, sent_text[i], tn, sent_lp[i], gn, sent_ids[i], in, fin ? t->finish_reason : NULL, false);
                sent_ids[i] = in;
                sb_puts(&out, "data: ");
                sb_put(&out, b.p, b.n);
                sb_puts(&out, "\n\n");
                sb_free(&b);
                sent_text[i] = tn;
                sent_lp[i] = gn;
                finished[i] = fin;
            }
            if (out.n) {
                pthread_mutex_unlock(&r->mu);
                // Chunks are already framed as SSE events: one write for all tasks that moved.
                if (out.oom || srv_write(c, out.p, out.n)) gone = true;
                pthread_mutex_lock(&r->mu);
            }
            sb_free(&out);
        }
        if (r->n_done == r->n_tasks) {
            // Done, but tokens may have arrived while the last chunk was being written (the lock is released
            // then): loop once more to flush them and the final chunk before [DONE].
            bool flushed = true;
            for (int i = 0; streaming && !gone && i < r->n_tasks; i++)
                if (!finished[i] && r->tasks[i].finish_reason) flushed = false;
            if (flushed) break;
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        if (r->n_done == r->n_tasks) continue;
        pthread_mutex_unlock(&r->mu);
        if (!gone && (srv_peer_closed(c) || atomic_load(&app->stopping))) gone = true;
        if (gone) atomic_store(&r->cancelled, true);
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    if (gone) { c->failed = true; return; }
    // Errors of any task.
    for (int i = 0; i < r->n_tasks; i++) {
        srv_task *t = &r->tasks[i];
        if (t->finish_reason) continue;
        int st = t->error_status ? t->error_status : 500;
        if (streaming) {
            sbuf b = {0};
            sb_puts(&b, "{\"error\":{\"message\":");
            sb_json_str(&b, t->error, strlen(t->error));
            sb_printf(&b, ",\"type\":\"server_error\",\"param\":null,\"code\":%d}}", st);
            srv_sse_data(c, b.p, b.n);
            sb_free(&b);
            srv_sse_data(c, "[DONE]", 6);
        } else {
            srv_send_error(c, st, st < 500 ? "invalid_request_error" : "server_error", "%s", t->error);
        }
        return;
    }
    sbuf b = {0};
    if (streaming) {
        if (o->include_usage) {
            write_head(&b, &rc);
            sb_puts(&b, ",\"choices\":[],");
            write_usage(&b, r);
            sb_puts(&b, "}");
            srv_sse_data(c, b.p, b.n);
        }
        srv_sse_data(c, "[DONE]", 6);
    } else {
        write_final(&b, &rc, r);
        if (b.oom) srv_send_error(c, 500, "server_error", "out of memory");
        else srv_send(c, 200, "application/json", b.p, b.n, NULL);
    }
    sb_free(&b);
}

// ---------------------------------------------------------------------------------------------------------
// Handlers

static const char *head_name(int32_t head) {
    switch (head) {
    case PERI_HEAD_SEQ_CLS: return "sequence_classification";
    case PERI_HEAD_TOKEN_CLS: return "token_classification";
    case PERI_HEAD_QA: return "question_answering";
    default: return "lm";
    }
}

static void handle_generate(srv_conn *c, const json_value *body, bool chat) {
    srv_app *app = c->app;
    const int32_t head = peri_model_head(app->model);
    if (head != PERI_HEAD_LM) {
        // Its logits rows are labels, not tokens: sampling them would produce label ids as text.
        srv_send_error(c, 400, "invalid_request_error", "this model has a %s head, not a language-model head, so it "
                       "cannot generate text%s", head_name(head), head == PERI_HEAD_SEQ_CLS ? "; use POST /v1/classify" : "");
        return;
    }
    err e = {0};
    gen_opts o = {0};
    srv_request r = {0};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    srv_task tmpl = {0};
    peri_token *ids[SRV_MAX_PROMPTS] = {0};
    int n_ids[SRV_MAX_PROMPTS] = {0}, n = 0;
    char *chat_text = NULL;
    bool ok = parse_common(app, body, chat, &tmpl, &o, &e);
    if (ok && chat) {
        ok = render_chat(app, json_get(body, "messages"), &chat_text, &e);
        if (ok) {
            int64_t got = tokenize_alloc(app->tok, chat_text, strlen(chat_text), true, &ids[0]);
            if (got < 0) ok = fail(&e, 400, "cannot tokenize the rendered chat: %s", peri_last_error());
            else { n_ids[0] = (int)got; n = 1; ok = check_prompt(app, "prompt", ids[0], got, 0, &e); }
        }
    } else if (ok) {
        ok = parse_prompts(app, json_get(body, "prompt"), "prompt", ids, n_ids, o.echo_text, &n, &e);
    }
    if (ok) {
        r.tasks = calloc((size_t)n, sizeof *r.tasks);
        if (!r.tasks) ok = fail(&e, 500, "out of memory");
    }
    if (ok) {
        r.n_tasks = n;
        for (int i = 0; i < n; i++) {
            srv_task *t = &r.tasks[i];
            *t = tmpl;
            t->req = &r;
            t->index = i;
            t->prompt = ids[i];
            t->n_prompt = n_ids[i];
            ids[i] = NULL;
            for (int k = 0; k < tmpl.n_stop; k++) {
                t->stop[k] = strdup(tmpl.stop[k]);
                if (!t->stop[k]) { t->n_stop = k; ok = fail(&e, 500, "out of memory"); break; }
            }
            if (!ok) { r.n_tasks = i + 1; break; }
        }
    }
    if (ok) run_request(c, &r, &o);
    else srv_send_error(c, e.status, e.type, "%s", e.msg);
    for (int k = 0; k < tmpl.n_stop; k++) free(tmpl.stop[k]);
    for (int i = 0; i < SRV_MAX_PROMPTS; i++) { free(ids[i]); free(o.echo_text[i]); }
    free(chat_text);
    write_request_free(&r);
}

// Probabilities as the Hugging Face text-classification pipeline (and `peri classify`): softmax for single-label
// models, sigmoid for multi_label_classification, the raw value for regression.
static void cls_scores(int32_t problem, const float *lg, int K, double *p) {
    if (problem == PERI_PROBLEM_MULTI_LABEL) {
        for (int i = 0; i < K; i++) p[i] = 1.0 / (1.0 + exp(-(double)lg[i]));
    } else if (problem == PERI_PROBLEM_REGRESSION) {
        for (int i = 0; i < K; i++) p[i] = lg[i];
    } else {
        double mx = lg[0], sum = 0;
        for (int i = 1; i < K; i++) mx = lg[i] > mx ? lg[i] : mx;
        for (int i = 0; i < K; i++) sum += (p[i] = exp(lg[i] - mx));
        for (int i = 0; i < K; i++) p[i] /= sum;
    }
}

static void write_label(sbuf *b, const peri_model *m, int i) {
    const char *l = peri_model_label(m, i);
    if (l) sb_json_str(b, l, strlen(l));
    else sb_printf(b, "\"LABEL_%d\"", i);   // the name HF gives labels without id2label
}

// POST /v1/classify: {"input": "text" | ["text", ...] | [id, ...] | [[id, ...], ...]}. Each input is one
// scheduler task (a prefill of its own slot); the answer lists the label, probabilities and raw logits of each.
static void handle_classify(srv_conn *c, const json_value *body) {
    srv_app *app = c->app;
    const peri_model *m = app->model;
    const int32_t head = peri_model_head(m);
    if (head != PERI_HEAD_SEQ_CLS) {
        srv_send_error(c, 400, "invalid_request_error", "the model has no classification head: /v1/classify needs a "
                       "…ForSequenceClassification checkpoint (config.json architectures), and this model has a %s head",
                       head_name(head));
        return;
    }
    const int K = peri_model_n_outputs(m);
    err e = {0};
    srv_request r = {0};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    peri_token *ids[SRV_MAX_PROMPTS] = {0};
    char *texts[SRV_MAX_PROMPTS] = {0};
    int n_ids[SRV_MAX_PROMPTS] = {0}, n = 0;
    bool ok = parse_prompts(app, json_get(body, "input"), "input", ids, n_ids, texts, &n, &e);
    if (ok) {
        r.tasks = calloc((size_t)n, sizeof *r.tasks);
        if (!r.tasks) ok = fail(&e, 500, "out of memory");
    }
    for (int i = 0; ok && i < n; i++) {
        srv_task *t = &r.tasks[i];
        r.n_tasks = i + 1;
        t->req = &r;
        t->index = i;
        t->classify = true;
        t->prompt = ids[i];
        t->n_prompt = n_ids[i];
        ids[i] = NULL;
        t->pool = peri_seq_cls_pool_index(m, t->prompt, t->n_prompt);
        t->cls_logits = malloc(sizeof(float) * (size_t)K);
        if (!t->cls_logits) ok = fail(&e, 500, "out of memory");
        else if (t->pool != t->n_prompt - 1 && !srv_sched_prompt_logprobs(app->sched))
            ok = fail(&e, 501, "input %d ends in padding (pad id %d), so its pooled token is not the last one; that needs "
                      "every row's logits, which this server was started without (restart without --no-prompt-logprobs, "
                      "or with a smaller --ctx / -np), or send the input without the trailing padding", i, peri_model_pad(m));
    }
    if (ok && srv_sched_submit(app->sched, &r) != 0)
        ok = fail(&e, 503, "the request queue is full (%d waiting); retry later", app->cfg.max_queue);
    if (!ok) {
        srv_send_error(c, e.status, e.status == 503 ? "server_busy" : e.type, "%s", e.msg);
        goto done;
    }
    // Wait for every task; the scheduler holds pointers into r until then, even after the client is gone.
    bool gone = false;
    pthread_mutex_lock(&r.mu);
    while (r.n_done < r.n_tasks) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&r.cv, &r.mu, &ts);
        if (r.n_done == r.n_tasks || gone) continue;
        pthread_mutex_unlock(&r.mu);
        if (srv_peer_closed(c) || atomic_load(&app->stopping)) {
            gone = true;
            atomic_store(&r.cancelled, true);
        }
        pthread_mutex_lock(&r.mu);
    }
    pthread_mutex_unlock(&r.mu);
    if (gone) { c->failed = true; goto done; }
    for (int i = 0; i < r.n_tasks; i++) {
        const srv_task *t = &r.tasks[i];
        if (t->finish_reason) continue;
        int st = t->error_status ? t->error_status : 500;
        srv_send_error(c, st, st < 500 ? "invalid_request_error" : "server_error", "%s", t->error);
        goto done;
    }
    double *p = malloc(sizeof(double) * (size_t)K);
    if (!p) { srv_send_error(c, 500, "server_error", "out of memory"); goto done; }
    const int32_t problem = peri_model_problem_type(m);
    sbuf b = {0};
    long long n_tok = 0;
    sb_puts(&b, "{\"object\":\"list\",\"model\":");
    sb_json_str(&b, app->cfg.model_name, strlen(app->cfg.model_name));
    sb_puts(&b, ",\"data\":[");
    for (int i = 0; i < r.n_tasks; i++) {
        const srv_task *t = &r.tasks[i];
        n_tok += t->n_prompt;
        cls_scores(problem, t->cls_logits, K, p);
        int best = 0;
        for (int k = 1; k < K; k++) if (p[k] > p[best]) best = k;
        sb_printf(&b, "%s{\"object\":\"classification\",\"index\":%d,\"label\":", i ? "," : "", i);
        write_label(&b, m, best);
        sb_puts(&b, ",\"score\":");
        sb_json_num(&b, p[best]);
        sb_puts(&b, ",\"scores\":{");
        for (int k = 0; k < K; k++) {
            if (k) sb_puts(&b, ",");
            write_label(&b, m, k);
            sb_puts(&b, ":");
            sb_json_num(&b, p[k]);
        }
        sb_puts(&b, "},\"logits\":[");
        for (int k = 0; k < K; k++) {
            if (k) sb_puts(&b, ",");
            sb_json_num(&b, t->cls_logits[k]);
        }
        sb_printf(&b, "],\"n_tokens\":%d}", t->n_prompt);
    }
    sb_printf(&b, "],\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}", n_tok, n_tok);
    if (b.oom) srv_send_error(c, 500, "server_error", "out of memory");
    else srv_send(c, 200, "application/json", b.p, b.n, NULL);
    sb_free(&b);
    free(p);
done:
    for (int i = 0; i < SRV_MAX_PROMPTS; i++) { free(ids[i]); free(texts[i]); }
    write_request_free(&r);
}

static void handle_tokenize(srv_conn *c, const json_value *body) {
    srv_app *app = c->app;
    if (!app->tok) { srv_send_error(c, 501, "invalid_request_error", "this model has no tokenizer"); return; }
    const json_value *v = json_get(body, "content");
    if (!v) v = json_get(body, "prompt");
    if (!v || v->type != JSON_STRING) { srv_send_error(c, 400, "invalid_request_error", "'content' must be a string"); return; }
    err e = {0};
    bool special = false, pieces = false;
    if (!get_bool(body, "parse_special", true, &special, &e) ||
        !get_bool(body, "with_pieces", false, &pieces, &e)) {
        srv_send_error(c, e.status, e.type, "%s", e.msg);
        return;
    }
    peri_token *ids;
    int64_t n = tokenize_alloc(app->tok, v->str, v->len, special, &ids);
    if (n < 0) { srv_send_error(c, 400, "invalid_request_error", "cannot tokenize: %s", peri_last_error()); return; }
    sbuf b = {0}, s = {0};
    sb_puts(&b, "{\"tokens\":[");
    for (int64_t i = 0; i < n; i++) {
        if (!pieces) { sb_printf(&b, "%s%d", i ? "," : "", ids[i]); continue; }
        sb_clear(&s);
        token_text(app->tok, ids[i], &s);
        sb_printf(&b, "%s{\"id\":%d,\"piece\":", i ? "," : "", ids[i]);
        sb_json_str(&b, s.p ? s.p : "", s.n);
        sb_puts(&b, "}");
    }
    sb_puts(&b, "]}");
    if (b.oom) srv_send_error(c, 500, "server_error", "out of memory");
    else srv_send(c, 200, "application/json", b.p, b.n, NULL);
    sb_free(&b);
    sb_free(&s);
    free(ids);
}

static void handle_detokenize(srv_conn *c, const json_value *body) {
    srv_app *app = c->app;
    if (!app->tok) { srv_send_error(c, 501, "invalid_request_error", "this model has no tokenizer"); return; }
    const json_value *v = json_get(body, "tokens");
    if (!v || v->type != JSON_ARRAY) { srv_send_error(c, 400, "invalid_request_error", "'tokens' must be a list of token ids"); return; }
    const int V = peri_tokenizer_n_vocab(app->tok);
    peri_token *ids = malloc(sizeof *ids * (v->len + 1));
    if (!ids) { srv_send_error(c, 500, "server_error", "out of memory"); return; }
    for (size_t i = 0; i < v->len; i++) {
        const json_value *x = &v->items[i];
        if (x->type != JSON_NUMBER || !x->is_integer || x->integer < 0 || x->integer >= V) {
            free(ids);
            srv_send_error(c, 400, "invalid_request_error", "tokens[%zu] is not a token id (0..%d)", i, V - 1);
            return;
        }
        ids[i] = (peri_token)x->integer;
    }
    int64_t need = -peri_detokenize(app->tok, ids, v->len, NULL, 0, false);
    char *text = malloc(need > 0 ? (size_t)need : 1);
    int64_t got = text ? peri_detokenize(app->tok, ids, v->len, text, need > 0 ? (size_t)need : 1, false) : -1;
    sbuf b = {0};
    if (got >= 0) {
        sb_puts(&b, "{\"content\":");
        sb_json_str(&b, text, (size_t)got);
        sb_puts(&b, "}");
    }
    if (got < 0 || b.oom) srv_send_error(c, 500, "server_error", "cannot detokenize: %s", peri_last_error());
    else srv_send(c, 200, "application/json", b.p, b.n, NULL);
    sb_free(&b);
    free(text);
    free(ids);
}

static void handle_models(srv_conn *c) {
    srv_app *app = c->app;
    sbuf b = {0};
    const char *name = app->cfg.model_name;
    sb_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    sb_json_str(&b, name, strlen(name));
    sb_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"peri\",\"meta\":{\"arch\":\"%s\",\"n_vocab\":%d,"
              "\"n_ctx\":%d,\"n_ctx_train\":%d,\"slots\":%d,\"chat_template\":%s,\"tokenizer\":%s,\"head\":\"%s\","
              "\"n_outputs\":%d}}]}",
              (long long)time(NULL), peri_model_arch(app->model), peri_model_n_vocab(app->model),
              srv_sched_n_ctx(app->sched), peri_model_n_ctx_train(app->model), srv_sched_n_slots(app->sched),
              app->cfg.chat_template ? "true" : "false", app->tok ? "true" : "false",
              head_name(peri_model_head(app->model)), peri_model_n_outputs(app->model));
    srv_send(c, 200, "application/json", b.p, b.n, NULL);
    sb_free(&b);
}

static void handle_health(srv_conn *c) {
    srv_metrics m;
    srv_sched_metrics(c->app->sched, &m);
    char body[256];
    int n = snprintf(body, sizeof body, "{\"status\":\"ok\",\"slots_idle\":%d,\"slots_busy\":%d,\"queued\":%d}",
                     srv_sched_n_slots(c->app->sched) - m.slots_busy, m.slots_busy, m.queued);
    srv_send(c, 200, "application/json", body, (size_t)n, NULL);
}

static void handle_metrics(srv_conn *c) {
    srv_app *app = c->app;
    srv_metrics m;
    srv_sched_metrics(app->sched, &m);
    sbuf b = {0};
#define METRIC(name, type, help, fmt, val) \
    sb_printf(&b, "# HELP peri_" name " " help "\n# TYPE peri_" name " " type "\nperi_" name " " fmt "\n", val)
    METRIC("http_requests_total", "counter", "HTTP requests received.", "%llu", (unsigned long long)atomic_load(&app->http_requests));
    METRIC("http_errors_total", "counter", "HTTP responses with a 4xx or 5xx status.", "%llu", (unsigned long long)atomic_load(&app->http_errors));
    METRIC("requests_completed_total", "counter", "Generation tasks that finished (stop or length).", "%llu", (unsigned long long)m.requests_completed);
    METRIC("requests_cancelled_total", "counter", "Generation tasks dropped because the client went away.", "%llu", (unsigned long long)m.requests_cancelled);
    METRIC("requests_failed_total", "counter", "Generation tasks that ended with an error.", "%llu", (unsigned long long)m.requests_failed);
    METRIC("prompt_tokens_total", "counter", "Prompt tokens prefilled.", "%llu", (unsigned long long)m.prompt_tokens);
    METRIC("generated_tokens_total", "counter", "Tokens generated.", "%llu", (unsigned long long)m.generated_tokens);
    sb_printf(&b, "# HELP peri_time_to_first_token_seconds Time from queueing to the first generated token.\n"
                  "# TYPE peri_time_to_first_token_seconds summary\nperi_time_to_first_token_seconds_sum %.6f\n"
                  "peri_time_to_first_token_seconds_count %llu\n", m.ttft_sum, (unsigned long long)m.ttft_count);
    METRIC("prefill_seconds_total", "counter", "Time spent in prompt prefill.", "%.6f", m.prefill_seconds);
    METRIC("decode_seconds_total", "counter", "Time spent in batched decode steps.", "%.6f", m.decode_seconds);
    METRIC("decode_tokens_per_second", "gauge", "Tokens per second of batched decode steps since start.", "%.3f",
           m.decode_seconds > 0 ? (double)m.decode_tokens / m.decode_seconds : 0.0);
    METRIC("slots_busy", "gauge", "Slots running a request.", "%d", m.slots_busy);
    METRIC("slots_total", "gauge", "Slots (-np).", "%d", srv_sched_n_slots(app->sched));
    METRIC("requests_queued", "gauge", "Requests waiting for a slot.", "%d", m.queued);
    METRIC("connections", "gauge", "Open HTTP connections.", "%d", atomic_load(&app->n_conns));
#undef METRIC
    srv_send(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.n, NULL);
    sb_free(&b);
}

// Constant-time comparison of the bearer token against the key.
static bool authorized(const srv_app *app, const http_request *req) {
    const char *key = app->cfg.api_key;
    if (!key) return true;
    http_span a = req->authorization;
    if (a.n < 7 || strncasecmp(a.p, "Bearer ", 7) != 0) return false;
    const char *tok = a.p + 7;
    size_t n = a.n - 7, kn = strlen(key);
    unsigned diff = (unsigned)(n ^ kn);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)tok[i] ^ (unsigned char)key[i % (kn ? kn : 1)];
    return diff == 0;
}

void srv_route(srv_conn *c, const http_request *req, const char *body, size_t body_len) {
    srv_app *app = c->app;
    http_span path = req->path;
    // The /v1 prefix is optional, as many clients are configured with a base URL either way.
    if (path.n >= 4 && memcmp(path.p, "/v1/", 4) == 0) { path.p += 3; path.n -= 3; }
    const bool get = http_span_eq(req->method, "GET");
    const bool post = http_span_eq(req->method, "POST");
    if (http_span_eq(path, "/") || http_span_eq(path, "/index.html")) {
        if (!get) { srv_send_error(c, 405, "invalid_request_error", "use GET for the chat page"); return; }
        srv_send(c, 200, "text/html; charset=utf-8", peri_chat_html, (size_t)peri_chat_html_len,
                 "Content-Security-Policy: default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\r\n");
        return;
    }
    if (http_span_eq(path, "/health")) {
        if (!get) { srv_send_error(c, 405, "invalid_request_error", "use GET /health"); return; }
        handle_health(c);
        return;
    }
    if (!authorized(app, req)) {
        srv_send_error(c, 401, "authentication_error", "missing or wrong API key: send the header 'Authorization: Bearer KEY'");
        return;
    }
    static const char *const gets[] = {"/models", "/metrics"};
    static const char *const posts[] = {"/completions", "/chat/completions", "/tokenize", "/detokenize", "/classify"};
    int gi = -1, pi = -1;
    for (int i = 0; i < 2; i++) if (http_span_eq(path, gets[i])) gi = i;
    for (int i = 0; i < 5; i++) if (http_span_eq(path, posts[i])) pi = i;
    if (gi < 0 && pi < 0) {
        srv_send_error(c, 404, "invalid_request_error", "no endpoint %.*s; see /v1/models, /v1/completions, /v1/chat/completions, "
                       "/v1/classify, /tokenize, /detokenize, /health, /metrics", (int)(req->path.n > 200 ? 200 : req->path.n), req->path.p);
        return;
    }
    if (gi >= 0) {
        if (!get) { srv_send_error(c, 405, "invalid_request_error", "use GET %s", gets[gi]); return; }
        if (gi == 0) handle_models(c);
        else handle_metrics(c);
        return;
    }
    if (!post) { srv_send_error(c, 405, "invalid_request_error", "use POST %s", posts[pi]); return; }
    json_value *j = json_parse(body, body_len, "request body");
    if (!j) { srv_send_error(c, 400, "invalid_request_error", "%s", peri_last_error()); return; }
    if (j->type != JSON_OBJECT) srv_send_error(c, 400, "invalid_request_error", "the request body must be a JSON object");
    else if (pi == 0) handle_generate(c, j, false);
    else if (pi == 1) handle_generate(c, j, true);
    else if (pi == 2) handle_tokenize(c, j);
    else if (pi == 4) handle_classify(c, j);
    else handle_detokenize(c, j);
    json_free(j);
}
