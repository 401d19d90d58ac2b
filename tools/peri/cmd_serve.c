// `peri serve`: an OpenAI-compatible HTTP server for one model (see docs/server.md). This file reads the
// options, loads the model, its chat template and end-of-turn tokens, and runs src/server until SIGINT/SIGTERM.
#include "cli.h"

#include "tokenizers/tokenizer_meta.h"

#include "formats/gguf.h"
#include "formats/json.h"
#include "server/server.h"
#include "tokenizers/tokenizer.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(void) {
    fprintf(stderr,
            "usage: peri serve -m MODEL [options]\n"
            "  -m MODEL        a Hugging Face folder or a .gguf file\n"
            "  --host H        address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server)\n"
            "  --port P        TCP port (default 8080; 0 picks a free port, printed at start)\n"
            "  -np N           parallel slots: requests decoded together as one batch (default 4)\n"
            "  --ctx N         context tokens per slot (default: the model's training context)\n"
            "  -t N            threads (default: physical cores)\n"
            CLI_MODEL_HELP
            "  --api-key KEY   require 'Authorization: Bearer KEY' (default: env PERI_API_KEY, or none)\n"
            "  --chat-template F  Jinja chat template file (default: the model's own)\n"
            "  --model-name NAME  id shown by /v1/models (default: the model folder's name)\n"
            "  --max-tokens N  largest max_tokens a request may ask for, and the chat default (default 2048)\n"
            "  --max-body BYTES  largest request body (default 8388608)\n"
            "  --max-conns N   concurrent connections (default 64; more get 503)\n"
            "  --max-queue N   requests waiting for a slot (default 256; more get 503)\n"
            "  --timeout S     seconds to receive a request or to unblock a stalled write (default 30)\n"
            "  --no-prompt-logprobs  do not keep prompt logits (saves np x ctx x vocab floats; disables echo+logprobs)\n"
            "  -q, --quiet     no request log on stderr\n");
}

static volatile atomic_bool g_stop;
static void on_signal(int sig) { (void)sig; atomic_store(&g_stop, true); }

static void log_line(const char *line, void *user) {
    if (*(bool *)user) return;
    fprintf(stderr, "peri serve: %s\n", line);
}

static void on_listen(const char *host, int port, void *user) {
    (void)user;
    fprintf(stderr, "peri serve: listening on http://%s%s%s:%d\n", strchr(host, ':') ? "[" : "", host,
            strchr(host, ':') ? "]" : "", port);
    fflush(stderr);
}

static char *read_text(const char *path, size_t max) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) { free(buf); return NULL; }
    buf[n] = 0;
    return buf;
}

static void add_id(peri_token *arr, int *n, peri_token id) {
    if (id < 0 || *n >= 16) return;
    for (int i = 0; i < *n; i++) if (arr[i] == id) return;
    arr[(*n)++] = id;
}

static const char *base_name(const char *path, char *buf, size_t size) {
    snprintf(buf, size, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    const char *s = strrchr(buf, '/');
    return s ? s + 1 : buf;
}

int peri_cmd_serve(int argc, char **argv) {
    const char *cmd = "serve", *model_path = NULL, *host = "127.0.0.1", *api_key = getenv("PERI_API_KEY");
    const char *tmpl_path = NULL, *model_name = NULL;
    long port = 8080, np = 4, n_ctx = 0, threads = 0, max_tokens = 2048, max_body = 8 << 20, max_conns = 64;
    long max_queue = 256, timeout = 30;
    bool quiet = false, prompt_lp = true;
    struct peri_model_params mp = peri_model_default_params();
    int mo;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define INT_OPT(lo, hi, dst) if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, lo, hi, &dst)) return 1
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--host")) { if (!(host = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--port")) { INT_OPT(0, 65535, port); }
        else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) { INT_OPT(1, 256, np); }
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) { INT_OPT(1, 1 << 20, n_ctx); }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { INT_OPT(1, 256, threads); }
        else if (!strcmp(a, "--api-key")) { if (!(api_key = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--chat-template")) { if (!(tmpl_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--model-name")) { if (!(model_name = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--max-tokens")) { INT_OPT(1, 1 << 20, max_tokens); }
        else if (!strcmp(a, "--max-body")) { INT_OPT(1024, 1L << 30, max_body); }
        else if (!strcmp(a, "--max-conns")) { INT_OPT(1, 4096, max_conns); }
        else if (!strcmp(a, "--max-queue")) { INT_OPT(1, 65536, max_queue); }
        else if (!strcmp(a, "--timeout")) { INT_OPT(1, 3600, timeout); }
        else if (!strcmp(a, "--no-prompt-logprobs")) prompt_lp = false;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = true;
        else if ((mo = cli_model_option(cmd, argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else { usage(); return cli_error(cmd, "unknown option '%s'", a); }
#undef INT_OPT
    }
    if (!model_path) { usage(); return cli_error(cmd, "no model: give -m MODEL"); }
    if (api_key && !*api_key) api_key = NULL;

    int rc = 1;
    peri_model *model = NULL;
    peri_chat_info ci = {0};
    srv_app *app = NULL;
    mp.n_threads = (int32_t)threads;
    if (peri_model_load(model_path, mp, &model) != PERI_OK)
        return cli_lib_error(cmd, "cannot load the model");
    const peri_tokenizer *tok = peri_model_tokenizer(model);
    if (peri_chat_info_load(model_path, tok, peri_model_eos(model), &ci) != PERI_OK) {
        cli_lib_error(cmd, "cannot read the chat metadata");
        goto done;
    }
    if (tmpl_path) {
        free(ci.tmpl);
        if (!(ci.tmpl = read_text(tmpl_path, 1u << 20))) { cli_error(cmd, "cannot read the chat template '%s'", tmpl_path); goto done; }
    }
    struct srv_sched_params sp = {.n_slots = (int)np, .n_threads = (int)threads, .max_queue = (int)max_queue};
    const int ctx_train = peri_model_n_ctx_train(model);
    sp.n_ctx = n_ctx ? (int)n_ctx : ctx_train;
    if (sp.n_ctx > ctx_train) { cli_error(cmd, "--ctx %d is more than the model's %d", sp.n_ctx, ctx_train); goto done; }
    // Prompt log-probabilities (echo + logprobs) need every prompt row's logits: np x ctx x vocab floats.
    double lp_bytes = 4.0 * (double)np * sp.n_ctx * peri_model_n_outputs(model);
    sp.prompt_logprobs = prompt_lp && lp_bytes <= (double)(1u << 30);
    if (prompt_lp && !sp.prompt_logprobs)
        fprintf(stderr, "peri serve: prompt logprobs (echo + logprobs) are off: they would need %.0f MiB of logits; "
                "lower -np or --ctx to enable them\n", lp_bytes / (1 << 20));
    if (tok) {
        add_id(sp.stop_ids, &sp.n_stop_ids, tok->eos_id);
        if (ci.eos) add_id(sp.stop_ids, &sp.n_stop_ids, peri_tok_lookup(tok, ci.eos, strlen(ci.eos)));
        // End-of-generation ids (eos, eot, <|im_end|>, ...) end a chat reply even when they are not the EOS token.
        for (int k = 0; k < ci.n_eog; k++) add_id(sp.chat_stop_ids, &sp.n_chat_stop_ids, ci.eog[k]);
    }
    if (max_tokens > sp.n_ctx) max_tokens = sp.n_ctx;
    char name_buf[4096];
    app = calloc(1, sizeof *app);
    if (!app) { cli_error(cmd, "out of memory"); goto done; }
    app->model = model;
    app->tok = tok;
    app->cfg = (struct srv_config){
        .host = host, .port = (int)port, .api_key = api_key,
        .model_name = model_name ? model_name : base_name(model_path, name_buf, sizeof name_buf),
        .max_conns = (int)max_conns, .max_head = 16384, .max_body = max_body, .timeout_s = (int)timeout,
        .idle_timeout_s = 15, .max_tokens_limit = (int)max_tokens, .max_queue = (int)max_queue,
        .chat_template = ci.tmpl, .bos_token = ci.bos, .eos_token = ci.eos,
        .log = log_line, .log_user = &quiet, .on_listen = on_listen,
    };
    if (srv_sched_new(model, &sp, &app->sched) != PERI_OK) { cli_lib_error(cmd, "cannot create the context"); goto done; }
    fprintf(stderr, "peri serve: %s (%s), %ld slots x %d tokens, chat template: %s, tokenizer: %s, api key: %s\n",
            app->cfg.model_name, peri_model_arch(model), np, sp.n_ctx, ci.tmpl ? "yes" : "none",
            tok ? "yes" : "none (token ids only)", api_key ? "required" : "none");
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    app->t_start = srv_now();
    if (srv_run(app, &g_stop) != PERI_OK) { cli_lib_error(cmd, "cannot start the server"); goto done; }
    atomic_store(&app->stopping, true);
    fprintf(stderr, "peri serve: stopped\n");
    rc = 0;
done:
    if (app && atomic_load(&app->n_conns) > 0) {
        // A connection thread is still blocked on a client: leave the model to process exit.
        return rc;
    }
    if (app) srv_sched_free(app->sched);
    free(app);
    peri_chat_info_free(&ci);
    peri_model_free(model);
    return rc;
}
