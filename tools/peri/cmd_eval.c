// `peri eval`: zero-shot multiple-choice benchmarks with lm-evaluation-harness semantics (docs/eval.md).
#include "cli.h"

#include "eval/eval.h"
#include "formats/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "usage: peri eval -m MODEL --task TASK[,TASK...] --data DIR [--limit N] [--out results.json]\n"
               "                 [--ctx N] [--parallel N] [--one-forward] [--bos] [--kv-f32] [-t THREADS]\n"
               "                 [--no-mmap] [--no-repack] [--sparse-down auto|on|off]\n"
               "  TASK          %s (or all)\n"
               "  --data DIR    the folder of ../shared/data/eval (jsonl files, hellaswag_val_full.txt[.bz2])\n"
               "  --limit N     score the first N documents of each task\n"
               "  --out FILE    results as JSON (a table is always printed on stdout)\n"
               "  --ctx N       tokens per sequence (default: the model's context, at most 2048)\n"
               "  --parallel N  score up to N choices side by side as separate sequences (default 1)\n"
               "  --one-forward score each choice as one forward of context+continuation, as the harness does\n"
               "                (default: the context once, its caches - and PLDR-LLM's G - reused for every choice)\n"
               "  --bos         prepend BOS to every context (the harness's add_bos_token)\n"
               "  --kv-f32      PLM: cache in float32 (default f16, as llama.cpp; scores then differ from a float32\n"
               "                reference by the f16 rounding of the cached latents)\n"
               CLI_MODEL_HELP,
            peri_task_names());
}

static void progress(int64_t done, int64_t total, void *user) {
    const char *task = user;
    int w = 30, k = total ? (int)(done * w / total) : w;
    fprintf(stderr, "\r%-14s [%.*s%*s] %lld/%lld", task, k, "##############################", w - k, "",
            (long long)done, (long long)total);
    if (done == total) fputc('\n', stderr);
}

static char *read_path(const char *path, size_t *len) {
    size_t pl = strlen(path);
    FILE *f;
    bool piped = pl > 4 && !strcmp(path + pl - 4, ".bz2");
    if (piped) {
        // The library reads no compressed files; the tool decompresses with the system's bzip2.
        char cmd[4200];
        if (strchr(path, '\'')) return NULL;
        snprintf(cmd, sizeof cmd, "bzip2 -dc '%s'", path);
        f = popen(cmd, "r");
    } else {
        f = fopen(path, "rb");
    }
    if (!f) return NULL;
    size_t cap = 1 << 20, n = 0;
    char *p = malloc(cap);
    while (p) {
        size_t got = fread(p + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
        if (n + 1 == cap) {
            char *q = realloc(p, cap * 2);
            if (!q) { free(p); p = NULL; break; }
            p = q;
            cap *= 2;
        }
    }
    int st = piped ? pclose(f) : fclose(f);
    if (st != 0) { free(p); return NULL; }
    if (p) p[n] = 0, *len = n;
    return p;
}

static char *task_data(const char *dir, const char *task, size_t *len, char *path, size_t psize) {
    const char *file = peri_task_file(task);
    snprintf(path, psize, "%s/%s", dir, file);
    if (!strcmp(task, "hellaswag")) {   // an already decompressed copy is read as is
        char plain[4096];
        snprintf(plain, sizeof plain, "%s/hellaswag_val_full.txt", dir);
        if (access(plain, R_OK) == 0) snprintf(path, psize, "%s", plain);
    }
    return read_path(path, len);
}

int peri_cmd_eval(int argc, char **argv) {
    const char *model_path = NULL, *tasks = NULL, *data = NULL, *out = NULL;
    struct peri_eval_params ep = peri_eval_default_params();
    long limit = 0, v;
    struct peri_model_params mp = peri_model_default_params();
    int mo;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value("eval", argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--task") || !strcmp(a, "--tasks")) { if (!(tasks = cli_value("eval", argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--data")) { if (!(data = cli_value("eval", argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) { if (!(out = cli_value("eval", argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--limit")) {
            if (!(val = cli_value("eval", argc, argv, &i)) || !cli_int("eval", a, val, 0, 1 << 30, &limit)) return 1;
        } else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) {
            if (!(val = cli_value("eval", argc, argv, &i)) || !cli_int("eval", a, val, 2, 1 << 20, &v)) return 1;
            ep.n_ctx = (int32_t)v;
        } else if (!strcmp(a, "--parallel")) {
            if (!(val = cli_value("eval", argc, argv, &i)) || !cli_int("eval", a, val, 1, 64, &v)) return 1;
            ep.n_parallel = (int32_t)v;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(val = cli_value("eval", argc, argv, &i)) || !cli_int("eval", a, val, 0, 1024, &v)) return 1;
            ep.n_threads = (int32_t)v;
        } else if (!strcmp(a, "--one-forward")) ep.one_forward = true;
        else if (!strcmp(a, "--bos")) ep.add_bos = true;
        else if (!strcmp(a, "--kv-f32")) ep.kv_type = PERI_KV_F32;
        else if (!strcmp(a, "--kv-f16")) ep.kv_type = PERI_KV_F16;
        else if ((mo = cli_model_option("eval", argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else return cli_error("eval", "unknown option '%s' (see peri eval --help)", a);
    }
    if (!model_path || !tasks || !data) {
        usage(stderr);
        return 1;
    }
    char list[1024];
    snprintf(list, sizeof list, "%s", !strcmp(tasks, "all") ? peri_task_names() : tasks);
    char *names[16];
    int n_tasks = 0;
    for (char *s = strtok(list, ", "); s && n_tasks < 16; s = strtok(NULL, ", ")) {
        if (!peri_task_file(s)) return cli_error("eval", "unknown task '%s'; tasks: %s", s, peri_task_names());
        names[n_tasks++] = s;
    }
    peri_model *m;
    mp.n_threads = ep.n_threads;
    if (peri_model_load(model_path, mp, &m)) return cli_lib_error("eval", "cannot load the model");
    peri_eval_ctx *e;
    if (peri_eval_init(m, &ep, &e)) {
        peri_model_free(m);
        return cli_lib_error("eval", "cannot create the context");
    }
    bool tty = isatty(2);
    struct peri_task_result res[16];
    int rc = 0;
    for (int t = 0; t < n_tasks && !rc; t++) {
        char path[4200], *labels = NULL;
        size_t len = 0, llen = 0;
        char *text = task_data(data, names[t], &len, path, sizeof path);
        if (!text) { rc = cli_error("eval", "cannot read %s (is --data the eval data folder?)", path); break; }
        if (!strcmp(names[t], "siqa")) {
            char lp[4200];
            snprintf(lp, sizeof lp, "%s/siqa_dev-labels.lst", data);
            labels = read_path(lp, &llen);
            if (!labels) { free(text); rc = cli_error("eval", "cannot read %s", lp); break; }
        }
        peri_task_docs docs;
        if (peri_task_parse(names[t], text, len, labels, llen, &docs)) {
            rc = cli_lib_error("eval", path);
        } else {
            if (peri_task_run(e, &docs, (int)limit, &res[t], tty ? progress : NULL, names[t])) rc = cli_lib_error("eval", "scoring failed");
            peri_task_docs_free(&docs);
        }
        free(text);
        free(labels);
    }
    if (!rc) {
        printf("| %-14s | %5s | %-9s | %8s | %8s |\n", "task", "n", "metric", "value", "stderr");
        printf("|%.*s|%.*s|%.*s|%.*s|%.*s|\n", 16, "----------------", 7, "-------", 11, "-----------", 10, "----------", 10, "----------");
        for (int t = 0; t < n_tasks; t++) {
            printf("| %-14s | %5d | %-9s | %8.4f | %8.4f |\n", names[t], res[t].n, "acc", res[t].acc, res[t].acc_stderr);
            if (res[t].has_norm)
                printf("| %-14s | %5s | %-9s | %8.4f | %8.4f |\n", "", "", "acc_norm", res[t].acc_norm, res[t].acc_norm_stderr);
            if (res[t].has_ppl) printf("| %-14s | %5s | %-9s | %8.4f | %8s |\n", "", "", "perplexity", res[t].ppl, "");
        }
        if (out) {
            FILE *f = fopen(out, "w");
            if (!f) rc = cli_error("eval", "cannot write %s", out);
            else {
                char esc[2048];
                json_escape(esc, sizeof esc, model_path, strlen(model_path));
                fprintf(f, "{\n  \"model\": %s,\n  \"config\": {\"limit\": %ld, \"n_ctx\": %d, \"parallel\": %d, "
                           "\"one_forward\": %s, \"add_bos\": %s},\n  \"results\": {\n",
                        esc, limit, ep.n_ctx, ep.n_parallel, ep.one_forward ? "true" : "false", ep.add_bos ? "true" : "false");
                for (int t = 0; t < n_tasks; t++) {
                    fprintf(f, "    \"%s\": {\"n\": %d, \"acc\": %.17g, \"acc_stderr\": %.17g", names[t], res[t].n,
                            res[t].acc, res[t].acc_stderr);
                    if (res[t].has_norm)
                        fprintf(f, ", \"acc_norm\": %.17g, \"acc_norm_stderr\": %.17g", res[t].acc_norm, res[t].acc_norm_stderr);
                    if (res[t].has_ppl) fprintf(f, ", \"perplexity\": %.17g, \"token_perplexity\": %.17g", res[t].ppl, res[t].ppl_token);
                    fprintf(f, "}%s\n", t + 1 < n_tasks ? "," : "");
                }
                fprintf(f, "  }\n}\n");
                if (fclose(f)) rc = cli_error("eval", "cannot write %s", out);
            }
        }
    }
    peri_eval_free(e);
    peri_model_free(m);
    return rc;
}
