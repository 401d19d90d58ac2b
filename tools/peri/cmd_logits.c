// `peri logits`: the stable contract that checks outside the project call.
//   peri logits -m MODEL --ids "I J K" [--decode-ids "A B"] [--no-cache] --out FILE
// FILE gets [prompt length + decode ids] x vocab float32 rows (little-endian, row-major); the shape goes to
// stderr. Task-head models write the head's outputs instead: sequence classification [1 x labels] for the
// pooled token, token classification [T x labels], question answering [T x 2] (start, end). Extras: --deductive FILE.safetensors (PLDR-LLM A, A_LM, G_LM, ... of the prefill), --dag,
// --attn sdpa|eager, -t N.
#include "cli.h"

#include "formats/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr,
            "usage: peri logits -m MODEL --ids \"I J K ...\" [--decode-ids \"A B ...\"] [--no-cache] --out FILE\n"
            "  MODEL           a Hugging Face folder (config.json + safetensors) or a .gguf file\n"
            "  --ids           prompt token ids, one prefill\n"
            "  --decode-ids    then one decode step per id, using the caches\n"
            "  --no-cache      recompute the whole sequence at every step (PLDR-LLM: G from the full input)\n"
            "  --out FILE      float32 little-endian rows [prompt + decode] x vocab\n"
            "  --deductive F   PLDR-LLM: write the G-cache of the prefill (A_raw, A, A_LM, A_P, G_LM per layer,\n"
            "                  and pw, a, ba) to the safetensors file F\n"
            "  --dag           PLDR-LLM: print the DAG metric of the prefill's G-cache\n"
            "  --attn MODE     sdpa (default) or eager: how a query that sees no key is treated\n"
            "  --external-G F  PLDR-LLM with custom_G_type external: G from the safetensors file F\n"
            "  --kv-full       PLM: cache expanded keys and values instead of the latent\n"
            "  --kv-f16 / --kv-f32  PLM cache element type (default f16, as llama.cpp; f32 reproduces float64\n"
            "                  references to 1e-5)\n"
            CLI_MODEL_HELP
            "  -t N            threads (default: physical cores)\n");
}

static int write_deductive(peri_context *ctx, const peri_model *model, const char *path) {
    const char *kinds[] = {"A_raw", "A", "A_LM", "A_P", "G_LM", "pw", "a", "ba"};
    int L = peri_model_n_layer(model), n = 0;
    peri_tensor *ts = calloc((size_t)L * 8, sizeof *ts);
    char(*names)[64] = calloc((size_t)L * 8, 64);
    int rc = (!ts || !names) ? 1 : 0;
    for (int l = 0; l < L && !rc; l++)
        for (int k = 0; k < 8 && !rc; k++) {
            snprintf(names[n], 64, "%s.%d", kinds[k], l);
            int32_t nd;
            int64_t shape[4];
            if (peri_get_state_shape(ctx, names[n], &nd, shape) != PERI_OK) {
                if (k >= 5) continue; // custom G: no power-law parameters
                rc = 1;
                break;
            }
            size_t cnt = 1;
            for (int i = 0; i < nd; i++) cnt *= (size_t)shape[i];
            float *buf = malloc(cnt * sizeof(float));
            if (!buf || peri_get_state(ctx, names[n], 0, buf, cnt) < 0) { free(buf); rc = 1; break; }
            ts[n] = (peri_tensor){.name = names[n], .type = PERI_TYPE_F32, .n_dims = nd, .data = buf, .nbytes = cnt * 4};
            for (int i = 0; i < nd; i++) ts[n].shape[i] = shape[i];
            n++;
        }
    if (!rc && peri_safetensors_write(path, ts, n, NULL, 0) != PERI_OK) rc = 1;
    for (int i = 0; i < n; i++) free((void *)ts[i].data);
    free(ts);
    free(names);
    return rc;
}

int peri_cmd_logits(int argc, char **argv) {
    const char *cmd = "logits", *model_path = NULL, *ids_s = NULL, *dec_s = NULL, *out_path = NULL, *ded_path = NULL, *ext_g = NULL;
    bool no_cache = false, dag = false, kv_full = false;
    int kv_type = PERI_KV_DEFAULT;
    long threads = 0;
    int attn = PERI_ATTN_SDPA, mo;
    struct peri_model_params mp = peri_model_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--ids")) { if (!(ids_s = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--decode-ids")) { if (!(dec_s = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) { if (!(out_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--deductive")) { if (!(ded_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--no-cache")) no_cache = true;
        else if (!strcmp(a, "--external-G")) { if (!(ext_g = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--dag")) dag = true;
        else if (!strcmp(a, "--kv-full")) kv_full = true;
        else if ((mo = cli_model_option(cmd, argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else if (!strcmp(a, "--kv-f16")) kv_type = PERI_KV_F16;
        else if (!strcmp(a, "--kv-f32")) kv_type = PERI_KV_F32;
        else if (!strcmp(a, "--attn")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            if (!v) return 1;
            if (!strcmp(v, "sdpa")) attn = PERI_ATTN_SDPA;
            else if (!strcmp(v, "eager")) attn = PERI_ATTN_EAGER;
            else return cli_error(cmd, "--attn is sdpa or eager, not \"%s\"", v);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            if (!v || !cli_int(cmd, "-t", v, 1, 256, &threads)) return 1;
        } else {
            usage();
            return cli_error(cmd, "unknown option '%s'", a);
        }
    }
    if (!model_path) { usage(); return cli_error(cmd, "no model: give -m MODEL"); }
    if (!ids_s) { usage(); return cli_error(cmd, "no prompt: give --ids \"I J K ...\""); }
    if (!out_path) { usage(); return cli_error(cmd, "no output file: give --out FILE"); }
    peri_token *ids = NULL, *dec = NULL;
    int n_ids = cli_parse_ids(cmd, ids_s, &ids);
    if (n_ids < 0) return 1;
    int n_dec = 0;
    if (dec_s && (n_dec = cli_parse_ids(cmd, dec_s, &dec)) < 0) { free(ids); return 1; }
    if (n_ids == 0) { free(ids); free(dec); return cli_error(cmd, "--ids is empty: these models add no BOS token, so give at least one id"); }

    int rc = 1;
    peri_model *model = NULL;
    peri_context *ctx = NULL;
    FILE *f = NULL;
    peri_token *all = NULL;
    mp.n_threads = (int32_t)threads;
    if (peri_model_load(model_path, mp, &model) != PERI_OK) { cli_lib_error(cmd, "cannot load the model"); goto done; }
    if (ext_g && peri_pldr_load_external_G(model, ext_g) != PERI_OK) { cli_lib_error(cmd, "cannot use the external G"); goto done; }
    if ((kv_type == PERI_KV_F16 || kv_full) && strcmp(peri_model_arch(model), "plm") != 0) {
        cli_error(cmd, "--kv-f16 and --kv-full are PLM cache options; %s caches in float32", peri_model_arch(model));
        goto done;
    }
    const int V = peri_model_n_outputs(model), total = n_ids + n_dec, head = peri_model_head(model);
    if (head != PERI_HEAD_LM && (n_dec || no_cache)) {
        cli_error(cmd, "'%s' has a task head; it scores one prompt (no --decode-ids or --no-cache)", model_path);
        goto done;
    }
    if (total > peri_model_n_ctx_train(model)) {
        cli_error(cmd, "%d tokens in all, more than the model's context of %d", total, peri_model_n_ctx_train(model));
        goto done;
    }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = total;
    cp.n_batch = no_cache ? total : n_ids;
    cp.n_threads = (int32_t)threads;
    cp.attn = attn;
    cp.logits_all = true;
    cp.kv_full = kv_full;
    cp.kv_type = kv_type;
    if (peri_context_init(model, cp, &ctx) != PERI_OK) { cli_lib_error(cmd, "cannot create the context"); goto done; }
    f = fopen(out_path, "wb");
    if (!f) { cli_error(cmd, "cannot write '%s'", out_path); goto done; }
    all = malloc(sizeof(peri_token) * (size_t)total);
    if (!all) { cli_error(cmd, "out of memory"); goto done; }
    memcpy(all, ids, sizeof(peri_token) * (size_t)n_ids);
    if (n_dec) memcpy(all + n_ids, dec, sizeof(peri_token) * (size_t)n_dec);

    struct peri_batch b = {.n_seq = 1, .n_tokens = n_ids, .tokens = ids, .logits_all = true};
    if (peri_decode(ctx, &b) != PERI_OK) { cli_lib_error(cmd, "prefill failed"); goto done; }
    const float *rows = peri_get_logits(ctx);
    int n_rows = n_ids;
    if (head == PERI_HEAD_SEQ_CLS) { // one row: the pooled token, as the HF class returns
        rows += (size_t)peri_seq_cls_pool_index(model, ids, n_ids) * V;
        n_rows = 1;
    }
    if (fwrite(rows, sizeof(float) * (size_t)V, (size_t)n_rows, f) != (size_t)n_rows) {
        cli_error(cmd, "cannot write '%s'", out_path);
        goto done;
    }
    if (ded_path && write_deductive(ctx, model, ded_path)) { cli_lib_error(cmd, "cannot write the deductive outputs"); goto done; }
    if (dag) {
        double m[3];
        if (peri_pldr_dag(ctx, 0, m) != PERI_OK) { cli_lib_error(cmd, "cannot compute the DAG metric"); goto done; }
        fprintf(stderr, "dag: A_LM %.9g A_P %.9g G_LM %.9g\n", m[0], m[1], m[2]);
    }
    for (int i = 0; i < n_dec; i++) {
        if (no_cache) {
            peri_seq_clear(ctx, 0);
            b = (struct peri_batch){.n_seq = 1, .n_tokens = n_ids + i + 1, .tokens = all, .logits_all = false};
        } else {
            b = (struct peri_batch){.n_seq = 1, .n_tokens = 1, .tokens = &dec[i], .logits_all = false};
        }
        if (peri_decode(ctx, &b) != PERI_OK) { cli_lib_error(cmd, "decode step failed"); goto done; }
        if (fwrite(peri_get_logits(ctx), sizeof(float), (size_t)V, f) != (size_t)V) {
            cli_error(cmd, "cannot write '%s'", out_path);
            goto done;
        }
    }
    if (fclose(f) != 0) { f = NULL; cli_error(cmd, "cannot write '%s'", out_path); goto done; }
    f = NULL;
    fprintf(stderr, "logits: [%d x %d] float32 -> %s\n", head == PERI_HEAD_SEQ_CLS ? 1 : total, V, out_path);
    rc = 0;
done:
    if (f) fclose(f);
    free(all);
    free(ids);
    free(dec);
    peri_context_free(ctx);
    peri_model_free(model);
    return rc;
}
