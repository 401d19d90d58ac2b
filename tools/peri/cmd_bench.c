// `peri bench`: prefill and decode speed of a model, measured the way BENCHMARKS.md reports them.
//   peri bench -m MODEL [-p 128] [-n 64] [-t N] [-r REPS] [--depth D]
// Prefill: one call with p tokens (PLDR-LLM computes G there). Decode: n single-token steps after it (or
// after a prompt of D tokens with --depth). Prints tokens/s, best of r runs, and the weight bytes read per
// decoded token.
#include "cli.h"

#include "kernels/ops.h"
#include "runtime/pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int peri_cmd_bench(int argc, char **argv) {
    const char *cmd = "bench", *path = NULL;
    long n_p = 128, n_g = 64, threads = 0, reps = 3, depth = -1;
    bool no_mmap = false, kv_full = false;
    int kv_type = PERI_KV_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: peri bench -m MODEL [-p PROMPT_TOKENS=128] [-n GEN_TOKENS=64] [-t THREADS] [-r REPS=3]\n"
                            "                  [--depth D: decode after a D-token prompt] [--no-mmap]\n"
                            "                  [--kv-f16 | --kv-f32] [--kv-full]   (PLM cache type and layout)\n");
            return 0;
        } else if (!strcmp(a, "-m")) { if (!(path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 1 << 20, &n_p)) return 1; }
        else if (!strcmp(a, "-n")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 1 << 20, &n_g)) return 1; }
        else if (!strcmp(a, "-t")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 256, &threads)) return 1; }
        else if (!strcmp(a, "-r")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 1000, &reps)) return 1; }
        else if (!strcmp(a, "--depth")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 1 << 20, &depth)) return 1; }
        else if (!strcmp(a, "--no-mmap")) no_mmap = true;
        else if (!strcmp(a, "--kv-full")) kv_full = true;
        else if (!strcmp(a, "--kv-f16")) kv_type = PERI_KV_F16;
        else if (!strcmp(a, "--kv-f32")) kv_type = PERI_KV_F32;
        else return cli_error(cmd, "unknown option '%s'", a);
    }
    if (!path) return cli_error(cmd, "no model: give -m MODEL");
    struct peri_model_params mp = peri_model_default_params();
    mp.use_mmap = !no_mmap;
    peri_model *m;
    if (peri_model_load(path, mp, &m) != PERI_OK) return cli_lib_error(cmd, "cannot load the model");
    if ((kv_type == PERI_KV_F16 || kv_full) && strcmp(peri_model_arch(m), "plm") != 0) {
        cli_error(cmd, "--kv-f16 and --kv-full are PLM cache options; %s caches in float32", peri_model_arch(m));
        peri_model_free(m);
        return 1;
    }
    const long dec_prompt = depth > 0 ? depth : n_p;
    long n_ctx = (n_p > dec_prompt ? n_p : dec_prompt) + n_g;
    if (n_ctx > peri_model_n_ctx_train(m)) {
        peri_model_free(m);
        return cli_error(cmd, "prompt + generated tokens (%ld) exceed the model's context of %d", n_ctx, peri_model_n_ctx_train(m));
    }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_batch = (int32_t)(n_p > dec_prompt ? n_p : dec_prompt);
    cp.n_threads = (int32_t)threads;
    cp.kv_full = kv_full;
    cp.kv_type = kv_type;
    peri_context *c;
    if (peri_context_init(m, cp, &c) != PERI_OK) { peri_model_free(m); return cli_lib_error(cmd, "cannot create the context"); }
    const int V = peri_model_n_vocab(m);
    peri_token *ids = malloc(sizeof(peri_token) * (size_t)n_ctx);
    if (!ids) return cli_error(cmd, "out of memory");
    for (long i = 0; i < n_ctx; i++) ids[i] = (peri_token)((i * 7919 + 13) % V);
    double best_pp = 1e30, best_tg = 1e30;
    int rc = 0;
    for (long r = 0; r < reps && !rc; r++) {
        peri_seq_clear(c, 0);
        struct peri_batch b = {.n_seq = 1, .n_tokens = (int32_t)n_p, .tokens = ids};
        double t0 = now_s();
        if (peri_decode(c, &b) != PERI_OK) { rc = cli_lib_error(cmd, "prefill failed"); break; }
        double tp = now_s() - t0;
        if (tp < best_pp) best_pp = tp;
        if (dec_prompt != n_p) {
            peri_seq_clear(c, 0);
            b.n_tokens = (int32_t)dec_prompt;
            if (peri_decode(c, &b) != PERI_OK) { rc = cli_lib_error(cmd, "prefill failed"); break; }
        }
        t0 = now_s();
        for (long i = 0; i < n_g; i++) {
            struct peri_batch d = {.n_seq = 1, .n_tokens = 1, .tokens = &ids[dec_prompt + i]};
            if (peri_decode(c, &d) != PERI_OK) { rc = cli_lib_error(cmd, "decode failed"); break; }
        }
        double tg = now_s() - t0;
        if (tg < best_tg) best_tg = tg;
    }
    if (!rc) {
        peri_pool *pool = peri_pool_new((int)threads);
        double bw = pool ? peri_measure_read_bandwidth(pool, (size_t)1 << 28) : 0;
        peri_pool_free(pool);
        double bytes = (double)peri_model_decode_bytes(m);
        printf("model: %s (%s), threads %d, kernels %s\n", path, peri_model_arch(m), threads ? (int)threads : peri_physical_cores(),
               peri_system_info());
        if (!strcmp(peri_model_arch(m), "plm"))
            printf("cache: %s, %s\n", kv_full ? "full K/V (--kv-full)" : "latent", kv_type == PERI_KV_F32 ? "f32" : "f16");
        printf("read bandwidth: %.1f GB/s; weights read per decoded token: %.1f MB; decode bound %.1f tokens/s\n", bw,
               bytes / 1e6, bw * 1e9 / bytes);
        printf("prefill pp%ld: %.1f tokens/s (%.3f s)\n", n_p, n_p / best_pp, best_pp);
        printf("decode tg%ld at depth %ld: %.2f tokens/s (%.2f ms/token), %.0f%% of the bound\n", n_g, dec_prompt,
               n_g / best_tg, 1e3 * best_tg / n_g, 100.0 * (n_g / best_tg) / (bw * 1e9 / bytes));
    }
    free(ids);
    peri_context_free(c);
    peri_model_free(m);
    return rc;
}
