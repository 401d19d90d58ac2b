// `peri perplexity -m MODEL -f TEXT`: llama-perplexity's chunks or Hugging Face's strided sliding window.
#include "cli.h"

#include "core/mapfile.h"
#include "eval/eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "usage: peri perplexity -m MODEL -f TEXT [--ctx N] [--stride S] [--bos] [--kv-f32] [-t THREADS]\n"
               "                       [--no-mmap] [--no-repack] [--sparse-down auto|on|off]\n"
               "  default: llama-perplexity's method: the text cut into chunks of --ctx tokens, each evaluated\n"
               "           alone and scored on its second half\n"
               "  --stride S  Hugging Face's strided sliding window: windows of --ctx tokens advanced by S, each\n"
               "              token scored once with up to ctx-S tokens of context\n"
               "  --bos       the first token of every chunk is replaced by BOS (llama-perplexity with add_bos)\n"
               "  --kv-f32    PLM: cache in float32 (default f16, as llama.cpp)\n"
               CLI_MODEL_HELP
               "Prints the token count, the perplexity and its standard error (as llama.cpp computes it).\n");
}

static void progress(int64_t done, int64_t total, void *user) {
    (void)user;
    int w = 30, k = total ? (int)(done * w / total) : w;
    fprintf(stderr, "\r[%.*s%*s] %lld/%lld windows", k, "##############################", w - k, "", (long long)done,
            (long long)total);
    if (done == total) fputc('\n', stderr);
}

int peri_cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *file = NULL;
    struct peri_ppl_params pp = {0};
    long v;
    struct peri_model_params mp = peri_model_default_params();
    int mo;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value("perplexity", argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { if (!(file = cli_value("perplexity", argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) {
            if (!(val = cli_value("perplexity", argc, argv, &i)) || !cli_int("perplexity", a, val, 2, 1 << 20, &v)) return 1;
            pp.n_ctx = (int32_t)v;
        } else if (!strcmp(a, "--stride")) {
            if (!(val = cli_value("perplexity", argc, argv, &i)) || !cli_int("perplexity", a, val, 1, 1 << 20, &v)) return 1;
            pp.stride = (int32_t)v;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(val = cli_value("perplexity", argc, argv, &i)) || !cli_int("perplexity", a, val, 0, 1024, &v)) return 1;
            pp.n_threads = (int32_t)v;
        } else if (!strcmp(a, "--bos")) pp.add_bos = true;
        else if (!strcmp(a, "--kv-f32")) pp.kv_type = PERI_KV_F32;
        else if (!strcmp(a, "--kv-f16")) pp.kv_type = PERI_KV_F16;
        else if ((mo = cli_model_option("perplexity", argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else return cli_error("perplexity", "unknown option '%s' (see peri perplexity --help)", a);
    }
    if (!model_path || !file) {
        usage(stderr);
        return 1;
    }
    char *text;
    size_t len;
    if (peri_read_file(file, (size_t)1 << 31, &text, &len)) return cli_lib_error("perplexity", "cannot read the text");
    peri_model *m;
    mp.n_threads = pp.n_threads;
    if (peri_model_load(model_path, mp, &m)) {
        free(text);
        return cli_lib_error("perplexity", "cannot load the model");
    }
    const peri_tokenizer *tok = peri_model_tokenizer(m);
    int rc = 0;
    peri_token *ids = NULL;
    if (!tok) rc = cli_error("perplexity", "the model has no tokenizer");
    else {
        ids = malloc(sizeof *ids * (len + 16));
        int64_t n = ids ? peri_tokenize(tok, text, len, ids, len + 16, false) : -1;
        if (n < 0) rc = cli_lib_error("perplexity", "cannot tokenize the text");
        else {
            if (isatty(2)) pp.progress = progress;
            struct peri_ppl_result r;
            if (peri_perplexity(m, ids, n, &pp, &r)) rc = cli_lib_error("perplexity", "failed");
            else {
                printf("method: %s\n", pp.stride ? "strided sliding window (Hugging Face)" : "chunks, second half scored (llama-perplexity)");
                printf("tokens: %lld (scored %lld)\n", (long long)r.n_tokens, (long long)r.n_scored);
                printf("PPL = %.4f +/- %.5f\n", r.ppl, r.ppl_stderr);
            }
        }
    }
    free(ids);
    free(text);
    peri_model_free(m);
    return rc;
}
