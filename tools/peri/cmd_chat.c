// `peri chat` (and `peri run -cnv`): a conversation through the model's own chat template, the cache kept
// across turns.
//
// Each turn renders the whole conversation with the template, checks that the text already in the cache is a
// prefix of it, and feeds only the rest (special tokens parsed as tokens). A reply ends at an end-of-generation
// token (<|im_end|>, <|endoftext|>, the model's eos), after -n tokens, or when the context is full. A turn that
// would not fit drops the oldest exchanges (the system prompt stays) and re-prefills what remains.
#include "cli.h"

#include "tokenizers/chat_template.h"
#include "tokenizers/tokenizer.h"
#include "tokenizers/tokenizer_meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peri chat -m MODEL [-p FIRST_MESSAGE] [-sys SYSTEM] [-n N] [options]\n"
            "       peri run -m MODEL -cnv [...]   (the same)\n"
            "Reads your turns from stdin, one line each (a terminal or a pipe); /exit or end of input stops.\n"
            "  -m MODEL        a Hugging Face folder or a .gguf file with a chat template\n"
            "  -p TEXT         the first user message (then the chat continues from stdin)\n"
            "  -sys TEXT       system prompt (default: the template's own, if it has one)\n"
            "  -n N            most tokens per reply (default: until the end of the turn or a full context)\n"
            "  --ctx N         context length (default: the model's, at most 4096)\n"
            "  --temp T --top-k K --top-p P --min-p P --repeat-penalty R --seed S   sampling, as `peri run`\n"
            "  --chat-template FILE  use this Jinja template instead of the model's\n"
            "  --kv-f16 / --kv-f32 / --kv-full   PLM cache type and layout, as `peri run`\n"
            "  --verbose-prompt  print each turn's prompt ids (the part fed to the model) to stderr\n"
            CLI_MODEL_HELP
            "  -t N            threads (default: physical cores)\n"
            "When the conversation no longer fits in the context, the oldest exchanges are dropped (the system\n"
            "prompt stays) and the rest is processed again.\n");
}

struct chat {
    const char *cmd;
    peri_model *model;
    const peri_tokenizer *tok;
    peri_context *ctx;
    peri_sampler *smp;
    peri_chat_info ci;
    peri_chat_msg *msgs;          // role/content strings owned here
    int n_msgs, cap_msgs;
    char *cached;                 // the text whose tokens are in the cache (NULL: empty cache)
    int n_ctx;
    long n_predict;
    bool verbose;
    int turn;
};

static char *dup_s(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) { memcpy(d, s, n); d[n] = 0; }
    return d;
}

static int push_msg(struct chat *c, const char *role, const char *content, size_t len) {
    if (c->n_msgs == c->cap_msgs) {
        int cap = c->cap_msgs ? c->cap_msgs * 2 : 16;
        peri_chat_msg *m = realloc(c->msgs, sizeof *m * (size_t)cap);
        if (!m) return cli_error(c->cmd, "out of memory");
        c->msgs = m;
        c->cap_msgs = cap;
    }
    char *r = dup_s(role, strlen(role)), *t = dup_s(content, len);
    if (!r || !t) { free(r); free(t); return cli_error(c->cmd, "out of memory"); }
    c->msgs[c->n_msgs++] = (peri_chat_msg){.role = r, .content = t};
    return 0;
}

static void drop_msg(struct chat *c, int i) {
    free((char *)c->msgs[i].role);
    free((char *)c->msgs[i].content);
    memmove(c->msgs + i, c->msgs + i + 1, sizeof *c->msgs * (size_t)(c->n_msgs - i - 1));
    c->n_msgs--;
}

static int render(struct chat *c, bool gen, char **out) {
    if (peri_chat_render(c->ci.tmpl, c->msgs, c->n_msgs, gen, c->ci.bos, c->ci.eos, out) != PERI_OK)
        return cli_lib_error(c->cmd, "the chat template failed");
    return 0;
}

// Tokens of text (special tokens parsed), malloc'd; returns the count or -1 after a message.
static int tokenize(struct chat *c, const char *text, peri_token **out) {
    size_t len = strlen(text);
    int64_t need = peri_tokenize(c->tok, text, len, NULL, 0, true);
    if (need < 0) need = -need;
    *out = malloc(sizeof(peri_token) * (size_t)(need + 1));
    if (!*out) return cli_error(c->cmd, "out of memory"), -1;
    int64_t got = peri_tokenize(c->tok, text, len, *out, (size_t)need + 1, true);
    if (got < 0) { free(*out); *out = NULL; return cli_lib_error(c->cmd, "cannot tokenize the prompt"), -1; }
    return (int)got;
}

static int feed(struct chat *c, const peri_token *ids, int n) {
    struct peri_batch b = {.n_seq = 1, .n_tokens = n, .tokens = ids};   // n_batch is n_ctx: one call
    if (peri_decode(c->ctx, &b) != PERI_OK) return cli_lib_error(c->cmd, "the model failed");
    for (int i = 0; i < n; i++) peri_sampler_accept(c->smp, ids[i]);
    return 0;
}

// Tokens a reply may need: -n, or a quarter of the context, whichever is less (and at least 1).
static int reply_room(const struct chat *c) {
    long r = c->n_ctx / 4;
    if (c->n_predict > 0 && c->n_predict < r) r = c->n_predict;
    return r > 0 ? (int)r : 1;
}

// Feeds the new part of the conversation (ending in the generation prompt). 1: this message cannot fit.
static int prepare_turn(struct chat *c, char **prompt_out) {
    char *full = NULL;
    peri_token *ids = NULL;
    int rc = render(c, true, &full);
    if (rc) return rc;
    size_t pl = c->cached ? strlen(c->cached) : 0;
    bool reuse = c->cached && !strncmp(full, c->cached, pl);
    int n = tokenize(c, reuse ? full + pl : full, &ids);
    if (n < 0) { free(full); return 1; }
    int have = reuse ? peri_seq_len(c->ctx, 0) : 0;
    if (have + n + reply_room(c) > c->n_ctx) {
        // Documented truncation: drop the oldest exchanges (the system prompt stays), then re-prefill all.
        int first = c->n_msgs > 0 && !strcmp(c->msgs[0].role, "system") ? 1 : 0, dropped = 0;
        for (;;) {
            free(ids);
            ids = NULL;
            free(full);
            full = NULL;
            if ((rc = render(c, true, &full))) return rc;
            if ((n = tokenize(c, full, &ids)) < 0) { free(full); return 1; }
            if (n + reply_room(c) <= c->n_ctx || c->n_msgs - first <= 1) break;
            drop_msg(c, first);
            if (c->n_msgs - first > 1 && strcmp(c->msgs[first].role, "user")) drop_msg(c, first);
            dropped++;
        }
        reuse = false;
        if (n + 1 > c->n_ctx) {
            fprintf(stderr, "peri %s: this message makes a prompt of %d tokens, more than the context of %d; it was "
                    "not sent (raise --ctx or write less)\n", c->cmd, n, c->n_ctx);
            drop_msg(c, c->n_msgs - 1);
            free(ids);
            free(full);
            return 2;
        }
        if (dropped)
            fprintf(stderr, "[context full: the oldest %d exchange%s dropped; the conversation is processed again]\n",
                    dropped, dropped == 1 ? " was" : "s were");
    }
    if (!reuse) {
        peri_seq_clear(c->ctx, 0);
        peri_sampler_reset(c->smp);
        free(c->cached);
        c->cached = NULL;
    }
    if (c->verbose) {
        fprintf(stderr, "turn %d prompt ids (%d new, %d cached):", c->turn, n, peri_seq_len(c->ctx, 0));
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    rc = n > 0 ? feed(c, ids, n) : 0;
    free(ids);
    if (rc) { free(full); return rc; }
    *prompt_out = full;
    return 0;
}

// Samples a reply, streaming its text to stdout; appends it as the assistant message.
static int reply(struct chat *c, char *prompt) {
    size_t cap = 256, n = 0;
    peri_token *out = malloc(sizeof(peri_token) * cap);
    peri_buf shown = {0};
    peri_detok_stream st;
    memset(&st, 0, sizeof st);
    int rc = out ? 0 : cli_error(c->cmd, "out of memory");
    bool full_ctx = false;
    if (peri_seq_len(c->ctx, 0) == 0) rc = cli_error(c->cmd, "empty prompt");
    while (!rc) {
        if (c->n_predict >= 0 && (long)n >= c->n_predict) break;
        peri_token t = peri_sampler_sample(c->smp, peri_get_logits(c->ctx));
        if (peri_chat_info_is_eog(&c->ci, t)) break;
        peri_sampler_accept(c->smp, t);
        if (n == cap) {
            peri_token *o = realloc(out, sizeof(peri_token) * (cap *= 2));
            if (!o) { rc = cli_error(c->cmd, "out of memory"); break; }
            out = o;
        }
        out[n++] = t;
        shown.n = 0;
        if (peri_detok_push(c->tok, &st, t, true, &shown) == PERI_OK && shown.n) {
            fwrite(shown.p, 1, shown.n, stdout);
            fflush(stdout);
        }
        if (peri_seq_len(c->ctx, 0) >= c->n_ctx) { full_ctx = true; break; }
        struct peri_batch b = {.n_seq = 1, .n_tokens = 1, .tokens = &out[n - 1]};
        if (peri_decode(c->ctx, &b) != PERI_OK) rc = cli_lib_error(c->cmd, "the model failed");
    }
    shown.n = 0;
    if (peri_detok_flush(c->tok, &st, &shown) == PERI_OK && shown.n) fwrite(shown.p, 1, shown.n, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(shown.p);
    if (full_ctx) fprintf(stderr, "[the context is full: the reply was cut; the next turn drops the oldest exchanges]\n");
    // The reply joins the conversation as generated (special tokens kept), so that the cached text stays a
    // prefix of the next rendering.
    char *text = NULL;
    if (!rc) {
        int64_t need = -peri_detokenize(c->tok, out, n, NULL, 0, false);
        text = malloc((size_t)(need > 0 ? need : 0) + 1);
        int64_t got = text ? peri_detokenize(c->tok, out, n, text, (size_t)(need > 0 ? need : 0) + 1, false) : -1;
        if (got < 0) rc = cli_error(c->cmd, "cannot decode the reply");
        else text[got] = 0;
    }
    if (!rc) rc = push_msg(c, "assistant", text, strlen(text));
    if (!rc) {
        size_t pl = strlen(prompt), tl = strlen(text);
        char *cached = realloc(prompt, pl + tl + 1);
        if (!cached) rc = cli_error(c->cmd, "out of memory");
        else {
            memcpy(cached + pl, text, tl + 1);
            free(c->cached);
            c->cached = cached;
            prompt = NULL;
        }
    }
    free(prompt);
    free(text);
    free(out);
    return rc;
}

static int one_turn(struct chat *c, const char *line, size_t len) {
    c->turn++;
    if (push_msg(c, "user", line, len)) return 1;
    char *prompt = NULL;
    int rc = prepare_turn(c, &prompt);
    if (rc == 2) return 0;   // the message did not fit; the chat goes on
    if (rc) return rc;
    return reply(c, prompt);
}

int peri_cmd_chat(int argc, char **argv) {
    const char *cmd = "chat", *model_path = NULL, *first = NULL, *sys = NULL, *tmpl_path = NULL;
    long n_predict = -1, threads = 0, n_ctx = 0;
    struct peri_sampler_params sp = peri_sampler_default_params();
    struct peri_model_params mp = peri_model_default_params();
    int so, mo;
    bool verbose = false, kv_full = false;
    int kv_type = PERI_KV_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-cnv") || !strcmp(a, "--conversation")) continue;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!(first = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-sys") || !strcmp(a, "--system-prompt")) { if (!(sys = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--chat-template")) { if (!(tmpl_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, -1, 1 << 20, &n_predict)) return 1; }
        else if ((so = cli_sampling_option(cmd, argc, argv, &i, &sp)) != 0) { if (so < 0) return 1; }
        else if ((mo = cli_model_option(cmd, argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 16, 1 << 20, &n_ctx)) return 1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 256, &threads)) return 1; }
        else if (!strcmp(a, "--kv-f16")) kv_type = PERI_KV_F16;
        else if (!strcmp(a, "--kv-f32")) kv_type = PERI_KV_F32;
        else if (!strcmp(a, "--kv-full")) kv_full = true;
        else if (!strcmp(a, "--verbose-prompt")) verbose = true;
        else { usage(stderr); return cli_error(cmd, "unknown option '%s'", a); }
    }
    if (!model_path) { usage(stderr); return cli_error(cmd, "no model: give -m MODEL"); }

    struct chat c = {.cmd = cmd, .n_predict = n_predict, .verbose = verbose};
    int rc = 1;
    char *line = NULL;
    mp.n_threads = (int32_t)threads;
    if (peri_model_load(model_path, mp, &c.model) != PERI_OK) {
        cli_lib_error(cmd, "cannot load the model");
        goto done;
    }
    const bool plm = !strcmp(peri_model_arch(c.model), "plm");
    if ((kv_type == PERI_KV_F16 || kv_full) && !plm) {
        cli_error(cmd, "--kv-f16 and --kv-full are PLM cache options; %s caches in float32", peri_model_arch(c.model));
        goto done;
    }
    if (!(c.tok = peri_model_tokenizer(c.model))) {
        cli_error(cmd, "'%s' has no tokenizer (tokenizer.json / GGUF tokenizer keys), so it cannot chat", model_path);
        goto done;
    }
    if (peri_chat_info_load(model_path, c.tok, peri_model_eos(c.model), &c.ci) != PERI_OK) {
        cli_lib_error(cmd, "cannot read the chat metadata");
        goto done;
    }
    if (tmpl_path) {
        size_t len;
        free(c.ci.tmpl);
        c.ci.tmpl = NULL;
        FILE *f = fopen(tmpl_path, "rb");
        if (!f) { cli_error(cmd, "cannot open the chat template '%s'", tmpl_path); goto done; }
        c.ci.tmpl = malloc(PERI_CHAT_MAX_TEMPLATE + 1);
        len = c.ci.tmpl ? fread(c.ci.tmpl, 1, PERI_CHAT_MAX_TEMPLATE + 1, f) : 0;
        fclose(f);
        if (!c.ci.tmpl || len > PERI_CHAT_MAX_TEMPLATE) { cli_error(cmd, "'%s' is too large for a template", tmpl_path); goto done; }
        c.ci.tmpl[len] = 0;
    }
    if (!c.ci.tmpl) {
        if (!strcmp(peri_model_arch(c.model), "pldrllm"))
            cli_error(cmd, "'%s' is a PLDR-LLM base model: it has no chat template and was not trained to chat; use "
                      "`peri run -m MODEL -p TEXT` to continue a text", model_path);
        else
            cli_error(cmd, "'%s' has no chat template (tokenizer_config.json chat_template, chat_template.jinja, or GGUF "
                      "tokenizer.chat_template); give one with --chat-template FILE, or use `peri run -p`", model_path);
        goto done;
    }
    if (verbose) {
        fprintf(stderr, "end-of-generation ids:");
        for (int i = 0; i < c.ci.n_eog; i++) fprintf(stderr, " %d", c.ci.eog[i]);
        fprintf(stderr, "\n");
    }
    if (!c.ci.n_eog) fprintf(stderr, "peri chat: warning: the model names no end-of-turn token; replies end at -n or a full context\n");
    const int max_ctx = peri_model_n_ctx_train(c.model);
    if (!n_ctx) n_ctx = max_ctx < 4096 ? max_ctx : 4096;
    if (n_ctx > max_ctx) { cli_error(cmd, "--ctx %ld is more than the model's %d", n_ctx, max_ctx); goto done; }
    c.n_ctx = (int)n_ctx;
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_threads = (int32_t)threads;
    cp.kv_type = kv_type;
    cp.kv_full = kv_full;
    if (peri_context_init(c.model, cp, &c.ctx) != PERI_OK) { cli_lib_error(cmd, "cannot create the context"); goto done; }
    if (peri_sampler_init(sp, peri_model_n_vocab(c.model), &c.smp) != PERI_OK) { cli_lib_error(cmd, "bad sampling options"); goto done; }
    if (sys && push_msg(&c, "system", sys, strlen(sys))) goto done;

    const bool tty = isatty(STDIN_FILENO);
    if (tty) fprintf(stderr, "peri chat: type a message and press Enter; /exit or Ctrl-D ends.\n");
    if (first && *first && one_turn(&c, first, strlen(first))) goto done;
    size_t line_cap = 0;
    for (;;) {
        if (tty) { fputs("> ", stdout); fflush(stdout); }
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break;   // end of input ends the chat
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (got == 0) continue;
        if (one_turn(&c, line, (size_t)got)) goto done;
    }
    rc = 0;
done:
    free(line);
    for (int i = 0; i < c.n_msgs; i++) { free((char *)c.msgs[i].role); free((char *)c.msgs[i].content); }
    free(c.msgs);
    free(c.cached);
    peri_chat_info_free(&c.ci);
    peri_sampler_free(c.smp);
    peri_context_free(c.ctx);
    peri_model_free(c.model);
    return rc;
}
