// `peri run`: generate from a prompt.
//   peri run -m MODEL (-p TEXT | --ids "...") -n N [--temp T] [--top-k K] [--top-p P] [--seed S] [--print-ids]
//   peri run -m MODEL -cnv [-p FIRST_TURN] [-sys SYSTEM]: a conversation (cmd_chat.c)
// --temp 0 is greedy; --top-k 0 and --top-p 1 switch those filters off (Hugging Face semantics).
#include "cli.h"

#include "tokenizers/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(void) {
    fprintf(stderr,
            "usage: peri run [-m MODEL] (-p TEXT | --ids \"I J K ...\") [-n N] [options]\n"
            "  -m MODEL        a Hugging Face folder (config.json + safetensors) or a .gguf file (default: the\n"
            "                  built-in peri-pldr-small, a tiny PLDR-LLM trained on Shakespeare and Botchan)\n"
            "  -p TEXT         prompt text (encoded with the model's tokenizer, no BOS added; special tokens\n"
            "                  such as <|im_start|> written in it are parsed as tokens, as llama.cpp does)\n"
            "  -cnv            chat through the model's chat template (same as `peri chat`; -p is the first turn)\n"
            "  --no-special    encode special-token text in -p as plain text\n"
            "  --verbose-prompt  print the prompt ids to stderr\n"
            "  --ids \"...\"     prompt token ids instead of text\n"
            "  -n N            tokens to generate (default 64; stops early at the end-of-text token)\n"
            "  --temp T        temperature (default 0.8; 0 = greedy)\n"
            "  --top-k K       keep the K most likely tokens (default 40; 0 = off)\n"
            "  --top-p P       nucleus sampling mass (default 0.95; 1 = off)\n"
            "  --min-p P       drop tokens below P x the top probability (default 0 = off)\n"
            "  --repeat-penalty R  Hugging Face repetition penalty (default 1 = off)\n"
            "  --seed S        random seed (default 0)\n"
            "  --print-ids     print the generated ids on one line instead of text\n"
            "  --ignore-eos    do not stop at the end-of-text token\n"
            "  --external-G F  PLDR-LLM with custom_G_type external: G from the safetensors file F\n"
            "  --ctx N         context length (default: prompt + N, at most the model's)\n"
            "  --kv-f16 / --kv-f32  PLM cache element type (default f16, as llama.cpp)\n"
            "  --kv-full       PLM: cache expanded keys and values (llama.cpp's layout) instead of the latent\n"
            CLI_MODEL_HELP
            "  -t N            threads (default: physical cores)\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence.
static size_t utf8_complete(const char *s, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) { i--; back++; }
    if (i == 0) return n;
    unsigned char c = (unsigned char)s[i - 1];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return (back + 1 >= need) ? n : i - 1;
}

int peri_cmd_run(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-cnv") || !strcmp(argv[i], "--conversation")) return peri_cmd_chat(argc, argv);
    const char *cmd = "run", *model_path = NULL, *prompt = NULL, *ids_s = NULL, *ext_g = NULL;
    long n_gen = 64, threads = 0, n_ctx = 0;
    struct peri_sampler_params sp = peri_sampler_default_params();
    struct peri_model_params mp = peri_model_default_params();
    int so, mo;
    bool print_ids = false, ignore_eos = false, no_special = false, verbose_prompt = false, kv_full = false;
    int kv_type = PERI_KV_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!(prompt = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--ids")) { if (!(ids_s = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 0, 1 << 20, &n_gen)) return 1; }
        else if ((so = cli_sampling_option(cmd, argc, argv, &i, &sp)) != 0) { if (so < 0) return 1; }
        else if ((mo = cli_model_option(cmd, argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else if (!strcmp(a, "--print-ids")) print_ids = true;
        else if (!strcmp(a, "--external-G")) { if (!(ext_g = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = true;
        else if (!strcmp(a, "--no-special")) no_special = true;
        else if (!strcmp(a, "--verbose-prompt")) verbose_prompt = true;
        else if (!strcmp(a, "--kv-f16")) kv_type = PERI_KV_F16;
        else if (!strcmp(a, "--kv-f32")) kv_type = PERI_KV_F32;
        else if (!strcmp(a, "--kv-full")) kv_full = true;
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 1 << 20, &n_ctx)) return 1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 256, &threads)) return 1; }
        else { usage(); return cli_error(cmd, "unknown option '%s'", a); }
    }
    if (!model_path && !(model_path = cli_default_model())) return cli_no_default_model(cmd);
    if (!prompt && !ids_s) { usage(); return cli_error(cmd, "no prompt: give -p TEXT or --ids \"...\""); }
    if (prompt && ids_s) return cli_error(cmd, "give either -p or --ids, not both");
    if ((prompt && !*prompt))
        return cli_error(cmd, "the prompt is empty: these models add no BOS token, so generation needs at least one "
                         "prompt token");

    int rc = 1;
    peri_model *model = NULL;
    peri_context *ctx = NULL;
    peri_sampler *smp = NULL;
    peri_token *ids = NULL, *all = NULL;
    char *text = NULL;
    int n_ids = 0;
    mp.n_threads = (int32_t)threads;
    if (peri_model_load(model_path, mp, &model) != PERI_OK) {
        cli_lib_error(cmd, "cannot load the model");
        goto done;
    }
    if (ext_g && peri_pldr_load_external_G(model, ext_g) != PERI_OK) { cli_lib_error(cmd, "cannot use the external G"); goto done; }
    if ((kv_type == PERI_KV_F16 || kv_full) && strcmp(peri_model_arch(model), "plm") != 0) {
        cli_error(cmd, "--kv-f16 and --kv-full are PLM cache options; %s caches in float32", peri_model_arch(model));
        goto done;
    }
    const peri_tokenizer *tok = peri_model_tokenizer(model);
    // Special tokens written in the prompt are parsed as tokens (llama.cpp's parse_special) for tokenizers
    // that have added tokens (byte-level BPE such as Qwen2's), unless --no-special.
    const bool special = !no_special && tok && tok->n_added > 0;
    if (prompt) {
        if (!tok) { cli_error(cmd, "'%s' has no tokenizer (tokenizer.model / tokenizer.json); use --ids", model_path); goto done; }
        size_t len = strlen(prompt);
        int64_t need = peri_tokenize(tok, prompt, len, NULL, 0, special);
        if (need < 0) need = -need;
        ids = malloc(sizeof(peri_token) * (size_t)(need + 1));
        if (!ids) { cli_error(cmd, "out of memory"); goto done; }
        int64_t got = peri_tokenize(tok, prompt, len, ids, (size_t)need + 1, special);
        if (got < 0) { cli_lib_error(cmd, "cannot tokenize the prompt"); goto done; }
        n_ids = (int)got;
    } else {
        n_ids = cli_parse_ids(cmd, ids_s, &ids);
        if (n_ids < 0) goto done;
    }
    if (n_ids == 0) {
        cli_error(cmd, "the prompt has no tokens: these models add no BOS token, so generation needs at least one");
        goto done;
    }
    if (verbose_prompt) {
        fprintf(stderr, "prompt ids (%d):", n_ids);
        for (int i = 0; i < n_ids; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    const int V = peri_model_n_vocab(model), max_ctx = peri_model_n_ctx_train(model);
    if (!n_ctx) n_ctx = n_ids + n_gen < max_ctx ? n_ids + n_gen : max_ctx;
    if (n_ids > n_ctx) {
        cli_error(cmd, "the prompt has %d tokens, more than the context of %ld (the model allows %d)", n_ids, n_ctx, max_ctx);
        goto done;
    }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_batch = n_ids;
    cp.n_threads = (int32_t)threads;
    cp.kv_type = kv_type;
    cp.kv_full = kv_full;
    if (peri_context_init(model, cp, &ctx) != PERI_OK) { cli_lib_error(cmd, "cannot create the context"); goto done; }
    if (peri_sampler_init(sp, V, &smp) != PERI_OK) { cli_lib_error(cmd, "bad sampling options"); goto done; }
    all = malloc(sizeof(peri_token) * (size_t)(n_ids + n_gen + 1));
    if (!all) { cli_error(cmd, "out of memory"); goto done; }
    memcpy(all, ids, sizeof(peri_token) * (size_t)n_ids);
    for (int i = 0; i < n_ids; i++) peri_sampler_accept(smp, ids[i]);

    const bool stream_text = !print_ids && tok;
    size_t printed = 0, text_cap = 0;
    if (stream_text) {
        int64_t need = -peri_detokenize(tok, all, (size_t)n_ids, NULL, 0, true);
        text_cap = (size_t)(need > 0 ? need : 0) + 4096;
        text = malloc(text_cap);
        if (!text) { cli_error(cmd, "out of memory"); goto done; }
        int64_t got = peri_detokenize(tok, all, (size_t)n_ids, text, text_cap, true);
        if (got < 0) got = 0;
        fwrite(text, 1, (size_t)got, stdout);
        fflush(stdout);
        printed = (size_t)got;
    }
    double t0 = now_s(), t_prefill = 0;
    struct peri_batch b = {.n_seq = 1, .n_tokens = n_ids, .tokens = ids};
    int n_out = 0;
    const peri_token eos = peri_model_eos(model);
    for (;;) {
        if (peri_decode(ctx, &b) != PERI_OK) { cli_lib_error(cmd, "generation failed"); goto done; }
        if (n_out == 0) t_prefill = now_s() - t0;
        if (n_out >= n_gen) break;
        peri_token t = peri_sampler_sample(smp, peri_get_logits(ctx));
        peri_sampler_accept(smp, t);
        all[n_ids + n_out++] = t;
        if (!ignore_eos && t == eos) break;
        if (stream_text) {
            int64_t got;
            while ((got = peri_detokenize(tok, all, (size_t)(n_ids + n_out), text, text_cap, true)) < 0) {
                size_t cap = (size_t)(-got) + 4096;
                char *nt = realloc(text, cap);
                if (!nt) { cli_error(cmd, "out of memory"); goto done; }
                text = nt;
                text_cap = cap;
            }
            size_t upto = utf8_complete(text, (size_t)got);
            if (upto > printed) {
                fwrite(text + printed, 1, upto - printed, stdout);
                fflush(stdout);
                printed = upto;
            }
        }
        if (n_out >= n_gen || peri_seq_len(ctx, 0) >= n_ctx) break;
        b = (struct peri_batch){.n_seq = 1, .n_tokens = 1, .tokens = &all[n_ids + n_out - 1]};
    }
    double t_all = now_s() - t0;
    if (print_ids || !tok) {
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? " " : "", all[n_ids + i]);
        printf("\n");
    } else {
        printf("\n");
    }
    fprintf(stderr, "peri run: prompt %d tokens in %.3f s (%.1f tok/s), generated %d tokens (%.1f tok/s)\n", n_ids,
            t_prefill, n_ids / (t_prefill > 0 ? t_prefill : 1e-9), n_out,
            n_out > 1 ? (n_out - 1) / (t_all - t_prefill > 0 ? t_all - t_prefill : 1e-9) : 0.0);
    rc = 0;
done:
    free(text);
    free(all);
    free(ids);
    peri_sampler_free(smp);
    peri_context_free(ctx);
    peri_model_free(model);
    return rc;
}
