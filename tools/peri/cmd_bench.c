// `peri bench`: prefill and decode speed of a model, as llama-bench measures them, so the two can be compared run for
// run (BENCHMARKS.md, bench/plm.sh).
//   peri bench -m MODEL [-p 512] [-n 128] [-t N] [-r 5] [-d DEPTH] [-o md|json]
// Two tests, like llama-bench's: pp<p> (one call with p tokens) and tg<n> (n single-token calls), each after a prompt
// of d tokens that is not timed (d = 0: from an empty cache), each repeated r times after one untimed warm-up (the
// first pass over memory-mapped weights pays their page faults). Reported per test: mean and standard deviation of
// the tokens/s over the repetitions, and the process's peak RSS so far. `-o json` prints only a JSON array with one
// object per test under llama-bench's field names plus peak_rss_bytes; the table also gives the read-bandwidth probe
// and each tg test as a share of the decode bound (weight bytes per token / bandwidth).
#include "cli.h"

#include "kernels/ops.h"
#include "runtime/pool.h"
#include "server/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (int64_t)ru.ru_maxrss * 1024;   // kilobytes on Linux
}

struct bench_test {
    long n_prompt, n_gen, n_depth;
    double *samples_ts, *samples_ns;   // [reps] each
    double avg_ts, stddev_ts, avg_ns, stddev_ns;
    int64_t peak_rss;
    char when[32];        // UTC start, as llama-bench's test_time
};

// n tokens of ids in one call, after what sequence 0 already holds.
static int feed(peri_context *c, const peri_token *ids, long n) {
    struct peri_batch b = {.n_seq = 1, .n_tokens = (int32_t)n, .tokens = ids};
    return peri_decode(c, &b);
}

// One repetition of test t: the untimed depth prompt, then the timed part. Returns seconds, or -1 on error.
static double run_once(peri_context *c, const peri_token *ids, const struct bench_test *t) {
    peri_seq_clear(c, 0);
    if (t->n_depth > 0 && feed(c, ids, t->n_depth) != PERI_OK) return -1;
    double t0 = now_s();
    if (t->n_prompt > 0) {
        if (feed(c, ids + t->n_depth, t->n_prompt) != PERI_OK) return -1;
    } else {
        for (long i = 0; i < t->n_gen; i++)
            if (feed(c, ids + t->n_depth + i, 1) != PERI_OK) return -1;
    }
    return now_s() - t0;
}

// Mean and sample standard deviation (n - 1, as llama-bench) of v[0..n).
static void mean_sd(const double *v, long n, double *mean, double *sd) {
    double m = 0, q = 0;
    for (long i = 0; i < n; i++) m += v[i];
    m /= (double)n;
    for (long i = 0; i < n; i++) q += (v[i] - m) * (v[i] - m);
    *mean = m;
    *sd = n > 1 ? sqrt(q / (double)(n - 1)) : 0.0;
}

static void test_name(const struct bench_test *t, char *buf, size_t n) {
    int k = t->n_prompt > 0 ? snprintf(buf, n, "pp%ld", t->n_prompt) : snprintf(buf, n, "tg%ld", t->n_gen);
    if (t->n_depth > 0 && k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, " @ d%ld", t->n_depth);
}

static void print_json(const char *path, const char *arch, int64_t size, long n_batch, long threads,
                       const struct bench_test *tests, int n_tests, long reps) {
    sbuf b = {0};
    sb_puts(&b, "[\n");
    for (int i = 0; i < n_tests; i++) {
        const struct bench_test *t = &tests[i];
        sb_puts(&b, "  {\"model_filename\": ");
        sb_json_str(&b, path, strlen(path));
        sb_puts(&b, ", \"model_type\": ");
        sb_json_str(&b, arch, strlen(arch));
        sb_printf(&b, ", \"model_size\": %lld, \"n_batch\": %ld, \"n_threads\": %ld, \"n_prompt\": %ld, \"n_gen\": %ld, "
                      "\"n_depth\": %ld, \"test_time\": \"%s\", \"avg_ns\": %.0f, \"stddev_ns\": %.0f, ",
                  (long long)size, n_batch, threads, t->n_prompt, t->n_gen, t->n_depth, t->when, t->avg_ns, t->stddev_ns);
        sb_puts(&b, "\"avg_ts\": ");
        sb_json_num(&b, t->avg_ts);
        sb_puts(&b, ", \"stddev_ts\": ");
        sb_json_num(&b, t->stddev_ts);
        sb_puts(&b, ", \"samples_ts\": [");
        for (long r = 0; r < reps; r++) {
            if (r) sb_puts(&b, ", ");
            sb_json_num(&b, t->samples_ts[r]);
        }
        sb_printf(&b, "], \"peak_rss_bytes\": %lld}%s\n", (long long)t->peak_rss, i + 1 < n_tests ? "," : "");
    }
    sb_puts(&b, "]\n");
    if (!b.oom) fputs(b.p, stdout);
    sb_free(&b);
}

int peri_cmd_bench(int argc, char **argv) {
    const char *cmd = "bench", *path = NULL, *out = "md";
    long n_p = 512, n_g = 128, threads = 0, reps = 5, depth = 0;
    bool kv_full = false, warmup = true;
    struct peri_model_params mp = peri_model_default_params();
    int kv_type = PERI_KV_DEFAULT, mo;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: peri bench -m MODEL [-p PROMPT_TOKENS=512] [-n GEN_TOKENS=128] [-t THREADS] [-r REPS=5]\n"
                            "                  [-d DEPTH=0: tokens in the cache before each test] [-o md|json]\n"
                            "                  [--no-warmup] [--no-mmap] [--no-repack] [--sparse-down auto|on|off]\n"
                            "                  [--kv-f16 | --kv-f32] [--kv-full]\n"
                            "  -p 0 or -n 0 skips that test. Tokens/s are the mean and standard deviation over REPS runs.\n"
                            CLI_MODEL_HELP);
            return 0;
        } else if (!strcmp(a, "-m")) { if (!(path = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 0, 1 << 20, &n_p)) return 1; }
        else if (!strcmp(a, "-n")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 0, 1 << 20, &n_g)) return 1; }
        else if (!strcmp(a, "-t")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 256, &threads)) return 1; }
        else if (!strcmp(a, "-r")) { if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 1, 1000, &reps)) return 1; }
        else if (!strcmp(a, "-d") || !strcmp(a, "--depth")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || !cli_int(cmd, a, v, 0, 1 << 20, &depth)) return 1;
        } else if (!strcmp(a, "-o")) {
            if (!(out = cli_value(cmd, argc, argv, &i))) return 1;
            if (strcmp(out, "md") != 0 && strcmp(out, "json") != 0)
                return cli_error(cmd, "-o %s: the output formats are md (a table) and json", out);
        }
        else if (!strcmp(a, "--no-warmup")) warmup = false;
        else if ((mo = cli_model_option(cmd, argc, argv, &i, &mp)) != 0) { if (mo < 0) return 1; }
        else if (!strcmp(a, "--kv-full")) kv_full = true;
        else if (!strcmp(a, "--kv-f16")) kv_type = PERI_KV_F16;
        else if (!strcmp(a, "--kv-f32")) kv_type = PERI_KV_F32;
        else return cli_error(cmd, "unknown option '%s'", a);
    }
    if (!path) return cli_error(cmd, "no model: give -m MODEL");
    if (n_p == 0 && n_g == 0) return cli_error(cmd, "-p 0 and -n 0 leave nothing to measure");
    if (!threads) threads = peri_physical_cores();
    mp.n_threads = (int32_t)threads;
    peri_model *m;
    if (peri_model_load(path, mp, &m) != PERI_OK) return cli_lib_error(cmd, "cannot load the model");
    const char *arch = peri_model_arch(m);
    if ((kv_type == PERI_KV_F16 || kv_full) && strcmp(arch, "plm") != 0) {
        cli_error(cmd, "--kv-f16 and --kv-full are PLM cache options; %s caches in float32", arch);
        peri_model_free(m);
        return 1;
    }
    const long longest = n_p > n_g ? n_p : n_g, n_ctx = depth + longest;
    if (n_ctx > peri_model_n_ctx_train(m)) {
        cli_error(cmd, "depth + tokens (%ld) exceed the model's context of %d: lower -d, -p or -n", n_ctx,
                  peri_model_n_ctx_train(m));
        peri_model_free(m);
        return 1;
    }
    struct peri_context_params cp = peri_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_batch = (int32_t)(n_p > depth ? n_p : depth > 0 ? depth : 1);   // the longest single call
    cp.n_threads = (int32_t)threads;
    cp.kv_full = kv_full;
    cp.kv_type = kv_type;
    peri_context *c;
    if (peri_context_init(m, cp, &c) != PERI_OK) { peri_model_free(m); return cli_lib_error(cmd, "cannot create the context"); }
    const int V = peri_model_n_vocab(m);
    peri_token *ids = malloc(sizeof(peri_token) * (size_t)n_ctx);
    struct bench_test tests[2];
    int n_tests = 0;
    if (n_p > 0) tests[n_tests++] = (struct bench_test){.n_prompt = n_p, .n_depth = depth};
    if (n_g > 0) tests[n_tests++] = (struct bench_test){.n_gen = n_g, .n_depth = depth};
    bool oom = !ids;
    for (int i = 0; i < n_tests; i++) {
        tests[i].samples_ts = calloc((size_t)reps, sizeof(double));
        tests[i].samples_ns = calloc((size_t)reps, sizeof(double));
        oom |= !tests[i].samples_ts || !tests[i].samples_ns;
    }
    int rc = 0;
    if (oom) rc = cli_error(cmd, "out of memory");
    for (long i = 0; !rc && i < n_ctx; i++) ids[i] = (peri_token)((i * 7919 + 13) % V);

    for (int i = 0; i < n_tests && !rc; i++) {
        struct bench_test *t = &tests[i];
        if (warmup) {   // as llama-bench: a short prompt (at most 32 tokens) or one generated token
            peri_seq_clear(c, 0);
            if (feed(c, ids, t->n_prompt > 0 ? (t->n_prompt < 32 ? t->n_prompt : 32) : 1) != PERI_OK) {
                rc = cli_lib_error(cmd, "warm-up failed");
                break;
            }
        }
        time_t now = time(NULL);
        struct tm tmv;
        gmtime_r(&now, &tmv);
        strftime(t->when, sizeof t->when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
        const long tokens = t->n_prompt > 0 ? t->n_prompt : t->n_gen;
        for (long r = 0; r < reps; r++) {
            double sec = run_once(c, ids, t);
            if (sec < 0) { rc = cli_lib_error(cmd, t->n_prompt > 0 ? "prefill failed" : "decode failed"); break; }
            t->samples_ts[r] = tokens / sec;
            t->samples_ns[r] = sec * 1e9;
        }
        if (rc) break;
        mean_sd(t->samples_ts, reps, &t->avg_ts, &t->stddev_ts);
        mean_sd(t->samples_ns, reps, &t->avg_ns, &t->stddev_ns);
        t->peak_rss = peak_rss_bytes();
    }
    const int64_t size = peri_model_decode_bytes(m);
    if (!rc && !strcmp(out, "json")) {
        print_json(path, arch, size, cp.n_batch, threads, tests, n_tests, reps);
    } else if (!rc) {
        printf("model: %s (%s), kernels %s\n", path, arch, peri_system_info());
        if (!strcmp(arch, "plm"))
            printf("cache: %s, %s\n", kv_full ? "full K/V (--kv-full)" : "latent", kv_type == PERI_KV_F32 ? "f32" : "f16");
        printf("\n| model | size | threads | test | t/s | peak RSS |\n|---|---:|---:|---:|---:|---:|\n");
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        for (int i = 0; i < n_tests; i++) {
            char name[64];
            test_name(&tests[i], name, sizeof name);
            printf("| %s | %.2f GiB | %ld | %s | %.2f ± %.2f | %.2f GiB |\n", base, (double)size / (1 << 30), threads, name,
                   tests[i].avg_ts, tests[i].stddev_ts, (double)tests[i].peak_rss / (1 << 30));
        }
        // The bound of a tg test: the weight bytes every decoded token reads, over the read bandwidth measured now
        // (the machine is shared: a probe from another minute can be 30% off).
        peri_pool *pool = peri_pool_new((int)threads);
        double bw = pool ? peri_measure_read_bandwidth(pool, (size_t)1 << 28) : 0;
        peri_pool_free(pool);
        printf("\nread bandwidth: %.1f GB/s; weights read per decoded token: %.1f MB; decode bound %.1f tokens/s\n", bw,
               (double)size / 1e6, bw * 1e9 / (double)size);
        for (int i = 0; i < n_tests; i++)
            if (tests[i].n_gen > 0) {
                char name[64];
                test_name(&tests[i], name, sizeof name);
                printf("%s: %.0f%% of the bound\n", name, 100.0 * tests[i].avg_ts / (bw * 1e9 / (double)size));
            }
    }
    for (int i = 0; i < n_tests; i++) free(tests[i].samples_ts), free(tests[i].samples_ns);
    free(ids);
    peri_context_free(c);
    peri_model_free(m);
    return rc;
}
