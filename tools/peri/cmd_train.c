// `peri train`: pretraining and fine-tuning on a text file or folder (docs/training.md).
//   peri train -m MODEL --data PATH --out DIR [options]
// Text is tokenized with the model's tokenizer, each file ending with the end token, and packed into chunks of
// seq+1 tokens (input = the first seq, targets = the last seq, as PLDR-LLM's recipe). AdamW with decoupled weight
// decay, clipping by value and by norm, gradient accumulation, warmup + cosine or Warmup-Stable-Decay-Constant,
// the PLDR DAG loss, a validation split, checkpoints in Hugging Face layout with the optimizer state (resume),
// a progress line and a loss curve (SVG).
#include "cli.h"

#include "formats/json.h"
#include "formats/safetensors.h"
#include "train/train.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *CMD = "train";

static void usage(void) {
    fprintf(stderr,
            "usage: peri train -m MODEL --data PATH --out DIR [options]\n"
            "  -m MODEL          starting model (HF folder: `peri init` for a new one, or a checkpoint to fine-tune);\n"
            "                    --init MODEL is the same\n"
            "  --data PATH       a text file, or a folder of text files (each file is a document ending with [END])\n"
            "  --out DIR         checkpoints: DIR/config.json, model.safetensors, optimizer.safetensors,\n"
            "                    trainer_state.json, loss.csv, loss.svg\n"
            "  --resume DIR      continue from a checkpoint written by peri train (model, optimizer, step)\n"
            "  --tokenizer PATH  tokenizer file or folder (default: the model's)\n"
            "  --seq N           tokens per training row (default 128)\n"
            "  --batch N         rows per micro-batch (default 8)\n"
            "  --accum N         micro-batches per optimizer step (default 1)\n"
            "  --steps N         optimizer steps (default 100)\n"
            "  --lr X            peak learning rate (default 1e-3)\n"
            "  --min-lr X        floor of the schedule (default 0.1 x lr)\n"
            "  --sched S         cosine (linear warmup, cosine to min-lr; default), wsd (warmup-stable-decay-\n"
            "                    constant), const\n"
            "  --warmup N        warmup steps (default 10%% of steps)\n"
            "  --decay-steps N   wsd: length of the linear decay phase (default 10%% of steps)\n"
            "  --beta1 X --beta2 X --eps X --wd X    AdamW (defaults 0.9, 0.95, 1e-5, 0.1)\n"
            "  --clip-value X    clip each gradient entry to [-X, X] (default 1.0; 0 = off)\n"
            "  --clip-norm X     clip the global gradient norm to X (default 0 = off)\n"
            "  --dag A,Ap,G      PLDR-LLM DAG loss coefficients (default 0,0,0)\n"
            "  --val-frac X      fraction of chunks held out for validation (default 0.05)\n"
            "  --val-every N     validate every N steps (default 50; also at the end)\n"
            "  --save-every N    checkpoint every N steps (default: only at the end)\n"
            "  --log-every N     progress line every N steps (default 1)\n"
            "  --seed N          data order (default 1)\n"
            "  --stop-after N    stop (and save) after step N, keeping the schedule of --steps; --resume continues\n"
            "  -t N              threads (default: physical cores)\n"
            "Task heads (a checkpoint whose architectures is ...ForSequenceClassification, ...ForTokenClassification or\n"
            "...ForQuestionAnswering): --data is a JSONL file, one example per line, run one at a time (no padding);\n"
            "--batch examples per step. Formats:\n"
            "  {\"text\": \"...\", \"label\": 1}     (multi-label: \"label\": [0,1,1]; regression: a number or list)\n"
            "  {\"tokens\": [\"word\", ...], \"labels\": [2, ...]}  (label on each word's first token)\n"
            "  {\"question\": \"...\", \"context\": \"...\", \"answer_start\": BYTE, \"answer_text\": \"...\"}\n"
            "  or \"ids\": [...] instead of text (QA: token positions \"start\", \"end\")\n");
}

// ---- data ---------------------------------------------------------------------------------------------------

typedef struct { peri_token *ids; size_t n, cap; } tokvec;

static int tv_push(tokvec *v, const peri_token *x, size_t n) {
    if (v->n + n > v->cap) {
        size_t nc = v->cap ? v->cap : 1 << 16;
        while (nc < v->n + n) nc *= 2;
        peri_token *p = realloc(v->ids, nc * sizeof(peri_token));
        if (!p) return -1;
        v->ids = p;
        v->cap = nc;
    }
    memcpy(v->ids + v->n, x, n * sizeof(peri_token));
    v->n += n;
    return 0;
}

// Tokenizes one file as a document (in pieces split at line ends, so each call stays small), then the end token.
static int tokenize_file(const peri_tokenizer *tok, const char *path, peri_token eos, tokvec *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return cli_error(CMD, "%s: cannot open (%s)", path, strerror(errno));
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    peri_token *ids = NULL;
    size_t ids_cap = 0;
    int rc = 0;
    for (;;) {
        size_t got = buf ? fread(buf + len, 1, cap - len, f) : 0;
        len += got;
        bool eof = got == 0 || len < cap;
        if (!buf) { rc = cli_error(CMD, "out of memory"); break; }
        // cut at the last newline of a full buffer
        size_t cut = len;
        if (!eof) {
            while (cut > 0 && buf[cut - 1] != '\n') cut--;
            if (cut == 0) cut = len;
        }
        if (cut > 0) {
            if (ids_cap < cut + 16) {
                ids_cap = cut + 16;
                peri_token *p = realloc(ids, ids_cap * sizeof(peri_token));
                if (!p) { rc = cli_error(CMD, "out of memory"); break; }
                ids = p;
            }
            int64_t n = peri_tokenize(tok, buf, cut, ids, ids_cap, false);
            if (n < 0 && peri_last_error()[0] == 0) {
                ids_cap = (size_t)(-n);
                peri_token *p = realloc(ids, ids_cap * sizeof(peri_token));
                if (!p) { rc = cli_error(CMD, "out of memory"); break; }
                ids = p;
                n = peri_tokenize(tok, buf, cut, ids, ids_cap, false);
            }
            if (n < 0) { rc = cli_lib_error(CMD, path); break; }
            if (tv_push(out, ids, (size_t)n)) { rc = cli_error(CMD, "out of memory"); break; }
        }
        memmove(buf, buf + cut, len - cut);
        len -= cut;
        if (eof && len == 0) break;
    }
    fclose(f);
    free(buf);
    free(ids);
    if (!rc && eos >= 0 && tv_push(out, &eos, 1)) rc = cli_error(CMD, "out of memory");
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int load_data(const peri_tokenizer *tok, const char *path, peri_token eos, tokvec *out, int *n_files) {
    struct stat st;
    if (stat(path, &st) != 0) return cli_error(CMD, "%s: not found", path);
    *n_files = 0;
    if (!S_ISDIR(st.st_mode)) { *n_files = 1; return tokenize_file(tok, path, eos, out); }
    DIR *d = opendir(path);
    if (!d) return cli_error(CMD, "%s: cannot list (%s)", path, strerror(errno));
    char **names = NULL;
    int n = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        char **p = realloc(names, sizeof(char *) * (size_t)(n + 1));
        if (!p || !(p[n] = strdup(full))) { names = p; rc = cli_error(CMD, "out of memory"); break; }
        names = p;
        n++;
    }
    closedir(d);
    if (names) qsort(names, (size_t)n, sizeof(char *), cmp_str);   // a stable order whatever readdir gives
    for (int i = 0; i < n && !rc; i++) rc = tokenize_file(tok, names[i], eos, out);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    *n_files = n;
    if (!rc && n == 0) rc = cli_error(CMD, "%s: no files", path);
    return rc;
}

// ---- checkpoints ------------------------------------------------------------------------------------------------

static int save_optimizer(const peri_trainer *t, const float *m, const float *v, const char *dir) {
    int n = t->n_params * 2;
    peri_tensor *ts = calloc((size_t)n, sizeof(*ts));
    char **names = calloc((size_t)n, sizeof(char *));
    int rc = (!ts || !names) ? -1 : 0;
    for (int i = 0; i < t->n_params && !rc; i++)
        for (int k = 0; k < 2; k++) {
            const peri_tparam *p = &t->params[i];
            size_t len = strlen(p->name) + 4;
            if (!(names[2 * i + k] = malloc(len))) { rc = -1; break; }
            snprintf(names[2 * i + k], len, "%s.%s", k ? "v" : "m", p->name);
            peri_tensor *x = &ts[2 * i + k];
            *x = (peri_tensor){.name = names[2 * i + k], .type = PERI_TYPE_F32, .n_dims = p->n_dims,
                               .data = (k ? v : m) + p->off, .nbytes = p->n * sizeof(float)};
            for (int j = 0; j < p->n_dims; j++) x->shape[j] = p->shape[j];
        }
    char path[4096];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (!rc && peri_safetensors_write(path, ts, n, NULL, 0) != PERI_OK) rc = cli_lib_error(CMD, path);
    else if (rc) rc = cli_error(CMD, "out of memory");
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(ts);
    return rc;
}

static int load_optimizer(const peri_trainer *t, float *m, float *v, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    peri_safetensors st;
    if (peri_safetensors_open(&st, path, true) != PERI_OK) return cli_lib_error(CMD, path);
    int rc = 0;
    for (int i = 0; i < t->n_params && !rc; i++)
        for (int k = 0; k < 2; k++) {
            char nm[600];
            snprintf(nm, sizeof nm, "%s.%s", k ? "v" : "m", t->params[i].name);
            const peri_tensor *x = peri_safetensors_find(&st, nm);
            if (!x || x->type != PERI_TYPE_F32 || (size_t)peri_tensor_nelem(x) != t->params[i].n) {
                rc = cli_error(CMD, "%s: %s is missing or has the wrong shape", path, nm);
                break;
            }
            memcpy((k ? v : m) + t->params[i].off, x->data, t->params[i].n * sizeof(float));
        }
    peri_safetensors_close(&st);
    return rc;
}

typedef struct { int64_t step; double train, val; } hist_pt;

static void write_svg(const char *path, const hist_pt *h, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    double lo = INFINITY, hi = -INFINITY;
    int64_t s0 = n ? h[0].step : 0, s1 = n ? h[n - 1].step : 1;
    for (int i = 0; i < n; i++) {
        if (isfinite(h[i].train)) { lo = fmin(lo, h[i].train); hi = fmax(hi, h[i].train); }
        if (isfinite(h[i].val)) { lo = fmin(lo, h[i].val); hi = fmax(hi, h[i].val); }
    }
    if (!(hi > lo)) { lo = (isfinite(lo) ? lo : 0) - 1; hi = lo + 2; }
    if (s1 <= s0) s1 = s0 + 1;
    const double W = 640, H = 400, L = 60, R = 20, T = 20, B = 40;
#define SX(s) (L + (W - L - R) * (double)((s) - s0) / (double)(s1 - s0))
#define SY(y) (T + (H - T - B) * (1 - ((y) - lo) / (hi - lo)))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, T, L, H - B);
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3f</text>\n", L - 4, T + 4, hi);
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3f</text>\n", L - 4, H - B, lo);
    fprintf(f, "<text x=\"%g\" y=\"%g\">%lld</text>\n", L, H - B + 16, (long long)s0);
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%lld</text>\n", W - R, H - B + 16, (long long)s1);
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 8);
    fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"");
    for (int i = 0; i < n; i++) if (isfinite(h[i].train)) fprintf(f, "%.1f,%.1f ", SX(h[i].step), SY(h[i].train));
    fprintf(f, "\"/>\n<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"");
    for (int i = 0; i < n; i++) if (isfinite(h[i].val)) fprintf(f, "%.1f,%.1f ", SX(h[i].step), SY(h[i].val));
    fprintf(f, "\"/>\n<text x=\"%g\" y=\"%g\" fill=\"#1f77b4\">train loss</text>\n", W - R - 160, T + 12);
    fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"#d62728\">validation loss</text>\n", W - R - 160, T + 28);
    fprintf(f, "</svg>\n");
#undef SX
#undef SY
    fclose(f);
}

// Copies the tokenizer files of a model folder next to the checkpoint, so it loads with its tokenizer.
static void copy_tokenizer(const char *src, const char *dir) {
    const char *files[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "vocab.json", "merges.txt"};
    struct stat st;
    if (stat(src, &st) != 0 || !S_ISDIR(st.st_mode) || !strcmp(src, dir)) return;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        FILE *in = fopen(a, "rb");
        if (!in) continue;
        FILE *out = fopen(b, "wb");
        char buf[65536];
        size_t n;
        while (out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
        if (out) fclose(out);
        fclose(in);
    }
}

static int save_all(const peri_trainer *t, const float *m, const float *v, const char *dir, int64_t step,
                    const hist_pt *h, int nh) {
    if (peri_trainer_save(t, dir) != PERI_OK) return cli_lib_error(CMD, dir);
    if (save_optimizer(t, m, v, dir)) return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return cli_error(CMD, "%s: cannot write", path);
    fprintf(f, "{\"step\": %lld}\n", (long long)step);
    fclose(f);
    snprintf(path, sizeof path, "%s/loss.csv", dir);
    if ((f = fopen(path, "w"))) {
        fprintf(f, "step,train_loss,val_loss\n");
        for (int i = 0; i < nh; i++) {
            fprintf(f, "%lld,", (long long)h[i].step);
            if (isfinite(h[i].train)) fprintf(f, "%.6f", h[i].train);
            fputc(',', f);
            if (isfinite(h[i].val)) fprintf(f, "%.6f", h[i].val);
            fputc('\n', f);
        }
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/loss.svg", dir);
    write_svg(path, h, nh);
    return 0;
}

static int read_history(const char *dir, hist_pt **h, int *nh, int *cap) {
    char path[4096], line[256];
    snprintf(path, sizeof path, "%s/loss.csv", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        long long s;
        char *p = line, *end;
        s = strtoll(p, &end, 10);
        if (end == p || *end != ',') continue;
        hist_pt pt = {s, NAN, NAN};
        p = end + 1;
        if (*p != ',') pt.train = strtod(p, &end), p = end;
        if (*p == ',') { p++; if (*p != '\n' && *p) pt.val = strtod(p, &end); }
        if (*nh == *cap) {
            *cap = *cap ? *cap * 2 : 256;
            hist_pt *q = realloc(*h, sizeof(hist_pt) * (size_t)*cap);
            if (!q) { fclose(f); return -1; }
            *h = q;
        }
        (*h)[(*nh)++] = pt;
    }
    fclose(f);
    return 0;
}

static void fmt_time(char *buf, size_t n, double s) {
    if (s < 0 || !isfinite(s)) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

// ---- task heads ------------------------------------------------------------------------------------------------

struct head_run {
    const char *data, *out, *src;
    long batch, steps, val_every, log_every, seed, stop_after;
    double clip_value, clip_norm, val_frac;
    struct peri_schedule sc;
    struct peri_adamw h;
};

// Loss of one example (B = 1); with backward, gradients accumulate scaled by `scale`. *correct: the argmax
// matches (single-label sequence classification, per token for token classification), -1 if not measured.
static int head_example(peri_trainer *t, const peri_tr_example *e, bool bwd, double scale, float *logits,
                        double *loss, int64_t *hits, int64_t *n_acc) {
    struct peri_tr_opts o = {.backward = bwd, .grad_scale = scale, .targets = e->targets, .logits_out = logits};
    struct peri_tr_result r;
    if (peri_trainer_run(t, e->ids, e->labels, 1, e->T, &o, &r) != PERI_OK) return -1;
    *loss = r.loss;
    const int64_t C = t->n_out;
    if (logits && t->head == PERI_TR_HEAD_SEQ_CLS && t->problem == PERI_TR_SINGLE_LABEL && e->labels[0] >= 0) {
        const float *z = logits + (size_t)(e->T - 1) * C;   // no padding: the last token is the pooled one
        int64_t am = 0;
        for (int64_t c = 1; c < C; c++) if (z[c] > z[am]) am = c;
        *hits += am == e->labels[0];
        (*n_acc)++;
    } else if (logits && t->head == PERI_TR_HEAD_TOKEN_CLS) {
        for (int i = 0; i < e->T; i++) {
            if (e->labels[i] < 0) continue;
            const float *z = logits + (size_t)i * C;
            int64_t am = 0;
            for (int64_t c = 1; c < C; c++) if (z[c] > z[am]) am = c;
            *hits += am == e->labels[i];
            (*n_acc)++;
        }
    }
    return 0;
}

static int train_head(peri_trainer *t, const peri_tokenizer *tok, const struct head_run *a) {
    static const char *kinds[] = {"", "sequence classification", "token classification", "question answering"};
    peri_tr_example *ex = NULL;
    int64_t n = 0;
    if (peri_tr_head_load_jsonl(t, tok, a->data, &ex, &n) != PERI_OK) return cli_lib_error(CMD, "reading the examples");
    int rc = 1;
    int64_t n_val = a->val_frac > 0 ? (int64_t)ceil((double)n * a->val_frac) : 0;
    if (n_val >= n) n_val = n - 1;
    int64_t n_train = n - n_val;
    float *m = calloc(t->n_total, sizeof(float)), *v = calloc(t->n_total, sizeof(float));
    float *logits = malloc(sizeof(float) * (size_t)(t->n_ctx * t->n_out));
    uint32_t *order = malloc(sizeof(uint32_t) * (size_t)n_train);
    hist_pt *hist = malloc(sizeof(hist_pt) * (size_t)a->steps);
    if (!m || !v || !logits || !order || !hist || n_train > UINT32_MAX) { cli_error(CMD, "out of memory"); goto done; }
    fprintf(stderr, "%s: %lld examples (%lld train, %lld validation) for %s with %lld outputs; %zu parameters\n",
            a->data, (long long)n, (long long)n_train, (long long)n_val, kinds[t->head], (long long)t->n_out, t->n_total);
    uint64_t rs = (uint64_t)a->seed * 0x9E3779B97F4A7C15ull + 1;
    int64_t pos = n_train, epoch = -1, nh = 0;
    struct peri_adamw h = a->h;
    double tstart = now_s();
    for (int64_t step = 0; step < a->steps; step++) {
        h.lr = peri_schedule_lr(&a->sc, step);
        peri_trainer_zero_grad(t);
        double loss = 0;
        for (long b = 0; b < a->batch; b++) {
            if (pos >= n_train) {
                for (int64_t i = 0; i < n_train; i++) order[i] = (uint32_t)i;
                for (int64_t i = n_train - 1; i > 0; i--) { int64_t j = (int64_t)(rng_next(&rs) % (uint64_t)(i + 1)); uint32_t x = order[i]; order[i] = order[j]; order[j] = x; }
                pos = 0;
                epoch++;
            }
            double l;
            int64_t hits = 0, cnt = 0;
            if (head_example(t, &ex[order[pos++]], true, 1.0 / (double)a->batch, NULL, &l, &hits, &cnt)) {
                cli_lib_error(CMD, "training step");
                goto done;
            }
            loss += l / (double)a->batch;
        }
        if (!isfinite(loss)) { cli_error(CMD, "step %lld: the loss is %f; lower --lr", (long long)step + 1, loss); goto done; }
        if (a->clip_value > 0) peri_clip_value(t->g, t->n_total, (float)a->clip_value);
        double gnorm = peri_clip_norm(t->g, t->n_total, a->clip_norm);
        peri_adamw_step(t->w, t->g, m, v, t->n_total, &h, step + 1);
        bool last = step + 1 == a->steps || step + 1 == a->stop_after;
        double val = NAN, acc = NAN;
        if (n_val > 0 && ((a->val_every > 0 && (step + 1) % a->val_every == 0) || last)) {
            double sum = 0;
            int64_t hits = 0, cnt = 0;
            for (int64_t i = n_train; i < n; i++) {
                double l;
                if (head_example(t, &ex[i], false, 1, logits, &l, &hits, &cnt)) { cli_lib_error(CMD, "validation"); goto done; }
                sum += l;
            }
            val = sum / (double)n_val;
            if (cnt) acc = (double)hits / (double)cnt;
        }
        hist[nh++] = (hist_pt){step + 1, loss, val};
        if ((step + 1) % a->log_every == 0 || last || isfinite(val)) {
            fprintf(stderr, "step %lld/%ld | epoch %lld | loss %.4f", (long long)step + 1, a->steps, (long long)epoch, loss);
            if (isfinite(val)) fprintf(stderr, " | val %.4f", val);
            if (isfinite(acc)) fprintf(stderr, " | val acc %.3f", acc);
            fprintf(stderr, " | lr %.2e | |g| %.3f | %.1f s\n", h.lr, gnorm, now_s() - tstart);
        }
        if (last) {
            if (save_all(t, m, v, a->out, step + 1, hist, (int)nh)) goto done;
            copy_tokenizer(a->src, a->out);
            break;
        }
    }
    fprintf(stderr, "saved %s (%.1fs)\n", a->out, now_s() - tstart);
    rc = 0;
done:
    free(hist);
    free(order);
    free(logits);
    free(m);
    free(v);
    peri_tr_examples_free(ex, n);
    return rc;
}

// Mean loss over the validation chunks (batches of `batch`).
static double validate(peri_trainer *t, const peri_token *chunks, int64_t first, int64_t n, int seq, int batch,
                       peri_token *ids, int32_t *lab) {
    double sum = 0;
    int64_t terms = 0;
    for (int64_t c = 0; c < n; c += batch) {
        int B = (int)(n - c < batch ? n - c : batch);
        for (int b = 0; b < B; b++) {
            const peri_token *ch = chunks + (size_t)(first + c + b) * (size_t)(seq + 1);
            memcpy(ids + (size_t)b * seq, ch, sizeof(peri_token) * (size_t)seq);
            memcpy(lab + (size_t)b * seq, ch + 1, sizeof(int32_t) * (size_t)seq);
        }
        struct peri_tr_opts o = {.backward = false, .grad_scale = 1};
        struct peri_tr_result r;
        if (peri_trainer_run(t, ids, lab, B, seq, &o, &r) != PERI_OK) return NAN;
        sum += r.loss * (double)r.n_terms;
        terms += r.n_terms;
    }
    return terms ? sum / (double)terms : NAN;
}

int peri_cmd_train(int argc, char **argv) {
    const char *model_path = NULL, *data_path = NULL, *out_dir = NULL, *resume = NULL, *tok_path = NULL, *sched = "cosine";
    long seq = 128, batch = 8, accum = 1, steps = 100, warmup = -1, decay_steps = -1, val_every = 50, save_every = 0;
    long log_every = 1, seed = 1, threads = 0, stop_after = 0;
    double lr = 1e-3, min_lr = -1, beta1 = 0.9, beta2 = 0.95, eps = 1e-5, wd = 0.1, clip_value = 1.0, clip_norm = 0;
    double val_frac = 0.05, coef[3] = {0, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
#define STR(opt, var) else if (!strcmp(a, opt)) { if (!(var = cli_value(CMD, argc, argv, &i))) return 1; }
#define INT(opt, var, lo, hi) else if (!strcmp(a, opt)) { if (!(v = cli_value(CMD, argc, argv, &i)) || !cli_int(CMD, a, v, lo, hi, &var)) return 1; }
#define FLT(opt, var, lo, hi) else if (!strcmp(a, opt)) { if (!(v = cli_value(CMD, argc, argv, &i)) || !cli_float(CMD, a, v, lo, hi, &var)) return 1; }
        STR("-m", model_path) STR("--model", model_path) STR("--init", model_path) STR("--data", data_path)
        STR("--out", out_dir) STR("--resume", resume) STR("--tokenizer", tok_path) STR("--sched", sched)
        INT("--seq", seq, 2, 1 << 20) INT("--batch", batch, 1, 1 << 16) INT("--accum", accum, 1, 1 << 16)
        INT("--steps", steps, 1, 1L << 40) INT("--warmup", warmup, 0, 1L << 40) INT("--decay-steps", decay_steps, 0, 1L << 40)
        INT("--val-every", val_every, 0, 1L << 40) INT("--save-every", save_every, 0, 1L << 40)
        INT("--log-every", log_every, 1, 1L << 40) INT("--seed", seed, 0, 1L << 62) INT("-t", threads, 0, 1024)
        INT("--threads", threads, 0, 1024) INT("--stop-after", stop_after, 1, 1L << 40)
        FLT("--lr", lr, 0, 10) FLT("--min-lr", min_lr, 0, 10) FLT("--beta1", beta1, 0, 0.999999) FLT("--beta2", beta2, 0, 0.999999)
        FLT("--eps", eps, 0, 1) FLT("--wd", wd, 0, 10) FLT("--clip-value", clip_value, 0, 1e30) FLT("--clip-norm", clip_norm, 0, 1e30)
        FLT("--val-frac", val_frac, 0, 0.9)
        else if (!strcmp(a, "--dag")) {
            if (!(v = cli_value(CMD, argc, argv, &i))) return 1;
            if (sscanf(v, "%lf,%lf,%lf", &coef[0], &coef[1], &coef[2]) != 3) return cli_error(CMD, "--dag wants A,Ap,G, got '%s'", v);
        } else return cli_error(CMD, "unknown option '%s' (see peri train --help)", a);
#undef STR
#undef INT
#undef FLT
    }
    if (resume && !model_path) model_path = resume;
    if (!model_path || !data_path || !out_dir) { usage(); return 1; }
    struct peri_schedule sc = {.lr = lr, .min_lr = min_lr >= 0 ? min_lr : 0.1 * lr, .total = steps,
                               .warmup = warmup >= 0 ? warmup : steps / 10, .decay = decay_steps >= 0 ? decay_steps : steps / 10};
    if (!strcmp(sched, "cosine")) sc.kind = PERI_SCHED_COSINE;
    else if (!strcmp(sched, "wsd")) sc.kind = PERI_SCHED_WSD;
    else if (!strcmp(sched, "const")) sc.kind = PERI_SCHED_CONST;
    else return cli_error(CMD, "--sched: cosine, wsd or const, not '%s'", sched);

    int rc = 1;
    peri_trainer *t = NULL;
    peri_tokenizer *tok = NULL;
    tokvec data = {0};
    float *m = NULL, *v = NULL;
    peri_token *ids = NULL;
    int32_t *lab = NULL;
    uint32_t *order = NULL;
    hist_pt *hist = NULL;
    int nh = 0, hcap = 0;
    if (peri_trainer_load(resume ? resume : model_path, (int)threads, &t) != PERI_OK) { cli_lib_error(CMD, model_path); goto done; }
    if (peri_tokenizer_load(tok_path ? tok_path : model_path, &tok) != PERI_OK) {
        // task-head examples may come as token ids, without a tokenizer
        if (t->head == PERI_TR_HEAD_LM || tok_path) { cli_lib_error(CMD, "loading the tokenizer (give one with --tokenizer)"); goto done; }
        tok = NULL;
    }
    if (tok && peri_tokenizer_n_vocab(tok) > t->V) {
        cli_error(CMD, "the tokenizer has %d tokens but the model only %lld", peri_tokenizer_n_vocab(tok), (long long)t->V);
        goto done;
    }
    if (t->head != PERI_TR_HEAD_LM) {
        if (resume) { cli_error(CMD, "--resume is for language-model training; fine-tune a task head from -m again"); goto done; }
        struct head_run hr = {.data = data_path, .out = out_dir, .src = tok_path ? tok_path : model_path, .batch = batch,
                              .steps = steps, .val_every = val_every, .log_every = log_every, .seed = seed,
                              .stop_after = stop_after, .clip_value = clip_value, .clip_norm = clip_norm,
                              .val_frac = val_frac, .sc = sc,
                              .h = {.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = wd}};
        rc = train_head(t, tok, &hr);
        goto done;
    }
    if (seq > t->n_ctx) { cli_error(CMD, "--seq %ld is longer than the model's context (%lld)", seq, (long long)t->n_ctx); goto done; }
    int n_files = 0;
    double t0 = now_s();
    if (load_data(tok, data_path, t->eos_id, &data, &n_files)) goto done;
    int64_t n_chunks = (int64_t)(data.n / (size_t)(seq + 1));
    if (n_chunks < 2) { cli_error(CMD, "%s: %zu tokens make fewer than 2 chunks of %ld", data_path, data.n, seq + 1); goto done; }
    int64_t n_val = val_frac > 0 ? (int64_t)ceil((double)n_chunks * val_frac) : 0;
    if (n_val >= n_chunks) n_val = n_chunks - 1;
    int64_t n_train = n_chunks - n_val;
    fprintf(stderr, "%s: %d file(s), %zu tokens in %.1fs; %lld chunks of %ld (%lld train, %lld validation); %zu parameters\n",
            data_path, n_files, data.n, now_s() - t0, (long long)n_chunks, seq + 1, (long long)n_train, (long long)n_val,
            t->n_total);
    m = calloc(t->n_total, sizeof(float));
    v = calloc(t->n_total, sizeof(float));
    ids = malloc(sizeof(peri_token) * (size_t)(batch * seq));
    lab = malloc(sizeof(int32_t) * (size_t)(batch * seq));
    order = malloc(sizeof(uint32_t) * (size_t)n_train);
    if (!m || !v || !ids || !lab || !order || n_train > UINT32_MAX) { cli_error(CMD, "out of memory"); goto done; }
    int64_t step0 = 0;
    if (resume) {
        if (load_optimizer(t, m, v, resume)) goto done;
        char path[4096];
        snprintf(path, sizeof path, "%s/trainer_state.json", resume);
        FILE *f = fopen(path, "r");
        char buf[256] = {0};
        if (!f || !fread(buf, 1, sizeof buf - 1, f)) { if (f) fclose(f); cli_error(CMD, "%s: cannot read", path); goto done; }
        fclose(f);
        json_value *js = json_parse(buf, strlen(buf), path);
        int64_t s = 0;
        if (!js || !json_get_int(js, "step", 0, &s)) { json_free(js); cli_lib_error(CMD, path); goto done; }
        json_free(js);
        step0 = s;
        if (read_history(resume, &hist, &nh, &hcap)) { cli_error(CMD, "out of memory"); goto done; }
        fprintf(stderr, "resuming from %s at step %lld\n", resume, (long long)step0);
    }
    // data order: a shuffle per epoch from the seed; resuming replays the same sequence of batches
    uint64_t rs = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 1;
    int64_t pos = n_train, epoch = -1;
    int64_t per_step = batch * accum;
    const peri_token *chunks = data.ids;
    struct peri_adamw h = {.lr = lr, .beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = wd};
    double tstart = now_s();
    int64_t tokens_done = 0;
    // skip the batches already consumed before resuming
    for (int64_t k = 0; k < step0 * per_step; k++) {
        if (pos >= n_train) {
            for (int64_t i = 0; i < n_train; i++) order[i] = (uint32_t)i;
            for (int64_t i = n_train - 1; i > 0; i--) { int64_t j = (int64_t)(rng_next(&rs) % (uint64_t)(i + 1)); uint32_t x = order[i]; order[i] = order[j]; order[j] = x; }
            pos = 0;
            epoch++;
        }
        pos++;
    }
    for (int64_t step = step0; step < steps; step++) {
        h.lr = peri_schedule_lr(&sc, step);
        peri_trainer_zero_grad(t);
        double loss = 0, dag[3] = {0, 0, 0};
        for (long a = 0; a < accum; a++) {
            for (long b = 0; b < batch; b++) {
                if (pos >= n_train) {
                    for (int64_t i = 0; i < n_train; i++) order[i] = (uint32_t)i;
                    for (int64_t i = n_train - 1; i > 0; i--) { int64_t j = (int64_t)(rng_next(&rs) % (uint64_t)(i + 1)); uint32_t x = order[i]; order[i] = order[j]; order[j] = x; }
                    pos = 0;
                    epoch++;
                }
                const peri_token *ch = chunks + (size_t)order[pos++] * (size_t)(seq + 1);
                memcpy(ids + b * seq, ch, sizeof(peri_token) * (size_t)seq);
                for (long i = 0; i < seq; i++) lab[b * seq + i] = ch[i + 1] == t->pad_id && t->arch == PERI_TR_PLDR ? -1 : ch[i + 1];
            }
            struct peri_tr_opts o = {.backward = true, .grad_scale = 1.0 / (double)accum, .mask_pad_keys = t->arch == PERI_TR_PLDR};
            memcpy(o.dag_coef, coef, sizeof coef);
            struct peri_tr_result r;
            if (peri_trainer_run(t, ids, lab, (int)batch, (int)seq, &o, &r) != PERI_OK) { cli_lib_error(CMD, "training step"); goto done; }
            loss += r.loss / (double)accum;
            for (int k = 0; k < 3; k++) dag[k] += r.dag[k] / (double)accum;
        }
        if (!isfinite(loss)) { cli_error(CMD, "step %lld: the loss is %f; lower --lr or check the data", (long long)step + 1, loss); goto done; }
        if (clip_value > 0) peri_clip_value(t->g, t->n_total, (float)clip_value);
        double gnorm = peri_clip_norm(t->g, t->n_total, clip_norm);
        peri_adamw_step(t->w, t->g, m, v, t->n_total, &h, step + 1);
        tokens_done += per_step * seq;
        double el = now_s() - tstart, tps = (double)tokens_done / fmax(el, 1e-9);
        double eta = (double)(steps - step - 1) * (double)per_step * (double)seq / fmax(tps, 1e-9);
        double val = NAN;
        bool last = step + 1 == steps || step + 1 == stop_after;
        if (n_val > 0 && ((val_every > 0 && (step + 1) % val_every == 0) || last))
            val = validate(t, chunks, n_train, n_val, (int)seq, (int)batch, ids, lab);
        if (nh == hcap) {
            hcap = hcap ? hcap * 2 : 256;
            hist_pt *q = realloc(hist, sizeof(hist_pt) * (size_t)hcap);
            if (!q) { cli_error(CMD, "out of memory"); goto done; }
            hist = q;
        }
        hist[nh++] = (hist_pt){step + 1, loss, val};
        if ((step + 1) % log_every == 0 || last || isfinite(val)) {
            char es[32];
            fmt_time(es, sizeof es, eta);
            fprintf(stderr, "step %lld/%ld | epoch %lld | loss %.4f", (long long)step + 1, steps, (long long)epoch, loss);
            if (coef[0] != 0 || coef[1] != 0 || coef[2] != 0) fprintf(stderr, " | dag %.3g %.3g %.3g", dag[0], dag[1], dag[2]);
            if (isfinite(val)) fprintf(stderr, " | val %.4f (ppl %.2f)", val, exp(val));
            fprintf(stderr, " | lr %.2e | |g| %.3f | %.0f tok/s | ETA %s\n", h.lr, gnorm, tps, es);
        }
        if ((save_every > 0 && (step + 1) % save_every == 0) || last) {
            if (save_all(t, m, v, out_dir, step + 1, hist, nh)) goto done;
            copy_tokenizer(tok_path ? tok_path : model_path, out_dir);
        }
        if (last) break;
    }
    if (step0 >= steps) fprintf(stderr, "nothing to do: the checkpoint is already at step %lld of %ld\n", (long long)step0, steps);
    else fprintf(stderr, "saved %s (%.1fs)\n", out_dir, now_s() - tstart);
    rc = 0;
done:
    free(hist);
    free(order);
    free(ids);
    free(lab);
    free(m);
    free(v);
    free(data.ids);
    peri_tokenizer_free(tok);
    peri_trainer_free(t);
    return rc;
}
