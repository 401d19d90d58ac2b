// `peri grad`: the loss and the gradient of every parameter for a batch, as checks outside the project call it.
//   peri grad -m MODEL --ids "..." [--ids "..." ...] --out FILE.safetensors
// One --ids per batch row (equal lengths); labels are the inputs shifted by one (Hugging Face causal-LM loss,
// mean over the B x (T-1) terms). FILE gets `loss` [1] and `grad.<name>` for every parameter, float32.
#include "cli.h"

#include "formats/safetensors.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr,
            "usage: peri grad -m MODEL --ids \"I J K ...\" [--ids \"...\" ...] --out FILE.safetensors\n"
            "  MODEL        a Hugging Face folder (config.json + model.safetensors; F32/F16/BF16 weights)\n"
            "  --ids        token ids of one batch row (repeat for more rows; all rows the same length >= 2)\n"
            "  --out FILE   safetensors with `loss` [1] and `grad.<parameter name>` for every parameter (float32)\n"
            "  --orig       PLDR-LLM original training convention: forward on ids[:, :-1], targets ids[:, 1:]\n"
            "               (target 0 ignored, keys with id 0 masked) instead of Hugging Face's\n"
            "  --dag A,Ap,G PLDR-LLM: add the DAG loss with these coefficients (also writes dag_L_A/Ap/G)\n"
            "  -t N         threads (default: physical cores)\n");
}

int peri_cmd_grad(int argc, char **argv) {
    const char *cmd = "grad", *model_path = NULL, *out_path = NULL;
    long threads = 0;
    bool orig = false, dag = false;
    double coef[3] = {0, 0, 0};
    int n_rows = 0, T = -1, rc = 1;
    peri_token *ids = NULL;
    peri_trainer *t = NULL;
    int32_t *labels = NULL;
    peri_tensor *ts = NULL;
    char **names = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); free(ids); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value(cmd, argc, argv, &i))) goto done; }
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) { if (!(out_path = cli_value(cmd, argc, argv, &i))) goto done; }
        else if (!strcmp(a, "--orig")) orig = true;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            if (!v || !cli_int(cmd, a, v, 0, 1024, &threads)) goto done;
        } else if (!strcmp(a, "--dag")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            if (!v) goto done;
            if (sscanf(v, "%lf,%lf,%lf", &coef[0], &coef[1], &coef[2]) != 3) { cli_error(cmd, "--dag wants three numbers A,Ap,G, got '%s'", v); goto done; }
            dag = true;
        } else if (!strcmp(a, "--ids")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            if (!v) goto done;
            peri_token *row = NULL;
            int len = cli_parse_ids(cmd, v, &row);
            if (len < 0) goto done;
            if (T >= 0 && len != T) { free(row); cli_error(cmd, "--ids row %d has %d ids; every row needs the same length (%d)", n_rows + 1, len, T); goto done; }
            if (len < 2) { free(row); cli_error(cmd, "--ids needs at least 2 ids per row (a token and its successor)"); goto done; }
            if (n_rows >= 4096) { free(row); cli_error(cmd, "too many --ids rows (at most 4096)"); goto done; }
            T = len;
            peri_token *nids = realloc(ids, sizeof(peri_token) * (size_t)(n_rows + 1) * (size_t)T);
            if (!nids) { free(row); cli_error(cmd, "out of memory"); goto done; }
            ids = nids;
            memcpy(ids + (size_t)n_rows * T, row, sizeof(peri_token) * (size_t)T);
            free(row);
            n_rows++;
        } else { cli_error(cmd, "unknown option '%s' (see peri grad --help)", a); goto done; }
    }
    if (!model_path || !out_path || n_rows == 0) { usage(); goto done; }
    if (peri_trainer_load(model_path, (int)threads, &t) != PERI_OK) { cli_lib_error(cmd, model_path); goto done; }
    if (orig && t->arch != PERI_TR_PLDR) { cli_error(cmd, "--orig applies to PLDR-LLM models only"); goto done; }
    int Tin = T;
    labels = malloc(sizeof(int32_t) * (size_t)n_rows * (size_t)T);
    if (!labels) { cli_error(cmd, "out of memory"); goto done; }
    if (orig) {
        // forward on ids[:, :-1] with targets ids[:, 1:]; target 0 ([PAD]) is ignored
        Tin = T - 1;
        for (int b = 0; b < n_rows; b++)
            for (int i = 0; i < Tin; i++) {
                int32_t y = ids[(size_t)b * T + i + 1];
                ids[(size_t)b * Tin + i] = ids[(size_t)b * T + i];
                labels[(size_t)b * Tin + i] = y == t->pad_id ? -1 : y;
            }
    } else peri_tr_labels_hf(labels, ids, n_rows, T);
    struct peri_tr_opts o = {.backward = true, .grad_scale = 1, .mask_pad_keys = orig, .dag_eval = dag};
    memcpy(o.dag_coef, coef, sizeof coef);
    struct peri_tr_result r;
    if (peri_trainer_run(t, ids, labels, n_rows, Tin, &o, &r) != PERI_OK) { cli_lib_error(cmd, "forward/backward"); goto done; }
    int n = t->n_params + 1 + (dag ? 3 : 0);
    ts = calloc((size_t)n, sizeof(*ts));
    names = calloc((size_t)n, sizeof(char *));
    if (!ts || !names) { cli_error(cmd, "out of memory"); goto done; }
    float vals[4] = {(float)r.total, (float)r.dag[0], (float)r.dag[1], (float)r.dag[2]};
    int k = 0;
    ts[k++] = (peri_tensor){.name = "loss", .type = PERI_TYPE_F32, .n_dims = 1, .shape = {1}, .data = &vals[0], .nbytes = 4};
    if (dag) {
        const char *dn[3] = {"dag_L_A", "dag_L_Ap", "dag_L_G"};
        for (int j = 0; j < 3; j++)
            ts[k++] = (peri_tensor){.name = dn[j], .type = PERI_TYPE_F32, .n_dims = 1, .shape = {1}, .data = &vals[1 + j], .nbytes = 4};
    }
    for (int i = 0; i < t->n_params; i++) {
        const peri_tparam *p = &t->params[i];
        size_t len = strlen(p->name) + 6;
        names[i] = malloc(len);
        if (!names[i]) { cli_error(cmd, "out of memory"); goto done; }
        snprintf(names[i], len, "grad.%s", p->name);
        peri_tensor *x = &ts[k++];
        *x = (peri_tensor){.name = names[i], .type = PERI_TYPE_F32, .n_dims = p->n_dims, .data = t->g + p->off,
                           .nbytes = p->n * sizeof(float)};
        for (int j = 0; j < p->n_dims; j++) x->shape[j] = p->shape[j];
    }
    if (peri_safetensors_write(out_path, ts, k, NULL, 0) != PERI_OK) { cli_lib_error(cmd, out_path); goto done; }
    fprintf(stderr, "loss %.6f over %lld terms; %d gradients written to %s\n", r.total, (long long)r.n_terms, t->n_params, out_path);
    rc = 0;
done:
    if (names && t)
        for (int i = 0; i < t->n_params; i++) free(names[i]);
    free(names);
    free(ts);
    free(labels);
    free(ids);
    peri_trainer_free(t);
    return rc;
}
