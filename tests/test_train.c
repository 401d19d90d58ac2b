// Training loop checks: AdamW steps on a fixed batch lower the loss (both architectures); a saved checkpoint
// loads in the inference engine with the trainer's logits; `peri train` resumed from a checkpoint ends with
// byte-identical weights to an uninterrupted run; `peri grad` writes the fixture's loss.
#include "test.h"

#include "formats/safetensors.h"
#include "peri.h"
#include "train/train.h"

#include <unistd.h>

static void overfit(const char *shared, const char *name) {
    char dir[1024], tmp[] = "/tmp/peri_test_train_XXXXXX";
    snprintf(dir, sizeof dir, "%s/fixtures/grads/%s", shared, name);
    peri_trainer *t = NULL;
    CHECK(peri_trainer_load(dir, 2, &t) == PERI_OK);
    if (!t) return;
    enum { B = 2, T = 10 };
    int32_t ids[B * T], lab[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = 4 + (i * 37) % 200;
    peri_tr_labels_hf(lab, ids, B, T);
    float *m = calloc(t->n_total, 4), *v = calloc(t->n_total, 4);
    struct peri_adamw h = {.lr = 3e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-5, .weight_decay = 0.1};
    struct peri_tr_opts o = {.backward = true, .grad_scale = 1};
    struct peri_tr_result r;
    double first = 0, last = 0;
    for (int s = 1; s <= 12; s++) {
        peri_trainer_zero_grad(t);
        CHECK(peri_trainer_run(t, ids, lab, B, T, &o, &r) == PERI_OK);
        if (s == 1) first = r.loss;
        last = r.loss;
        peri_clip_value(t->g, t->n_total, 1.0f);
        peri_adamw_step(t->w, t->g, m, v, t->n_total, &h, s);
    }
    CHECKF(last < first - 1.0, "%s: loss %.4f -> %.4f after 12 AdamW steps on one batch", name, first, last);
    printf("%s: overfit one batch: loss %.4f -> %.4f\n", name, first, last);
    // the trained weights, saved in HF layout, load in the inference engine and give the trainer's logits
    CHECK(mkdtemp(tmp) != NULL);
    CHECK(peri_trainer_save(t, tmp) == PERI_OK);
    float *logits = malloc(sizeof(float) * T * (size_t)t->V);
    struct peri_tr_opts of = {.backward = false, .grad_scale = 1, .logits_out = logits};
    CHECK(peri_trainer_run(t, ids, lab, 1, T, &of, &r) == PERI_OK);
    peri_model *model = NULL;
    struct peri_model_params mp = peri_model_default_params();
    mp.n_threads = 1;
    CHECK(peri_model_load(tmp, mp, &model) == PERI_OK);
    if (model) {
        struct peri_context_params cp = peri_context_default_params();
        cp.n_ctx = T;
        cp.n_seq_max = 1;
        cp.n_threads = 1;
        cp.logits_all = true;
        cp.kv_type = PERI_KV_F32;
        peri_context *c = NULL;
        CHECK(peri_context_init(model, cp, &c) == PERI_OK);
        int32_t seq = 0;
        struct peri_batch bt = {.n_seq = 1, .n_tokens = T, .seq_ids = &seq, .tokens = ids, .logits_all = true};
        CHECK(c && peri_decode(c, &bt) == PERI_OK);
        double d = c ? test_max_abs_diff(peri_get_logits(c), logits, (size_t)T * t->V) : INFINITY;
        CHECKF(d < 1e-4, "%s: saved checkpoint logits differ by %.3g", name, d);
        peri_context_free(c);
        peri_model_free(model);
    }
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0);
    free(logits);
    free(m);
    free(v);
    peri_trainer_free(t);
}

static int run(const char *cmd) {
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static bool same_file(const char *a, const char *b) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return run(cmd) == 0;
}

// `peri train` for 3 steps == 2 steps, stop, resume for the last one (weights and optimizer state bit for bit)
static void resume(const char *shared, const char *bin) {
    char tmp[] = "/tmp/peri_test_resume_XXXXXX", cmd[4096], a[1200], b[1200];
    CHECK(mkdtemp(tmp) != NULL);
    snprintf(cmd, sizeof cmd, "head -c 3000 '%s/data/text/tinyshakespeare/input.txt' > '%s/data.txt'", shared, tmp);
    CHECK(run(cmd) == 0);
    const char *common = "--seq 8 --batch 2 --steps 3 --warmup 1 --lr 1e-2 --val-frac 0.05 -t 2 --log-every 100";
    snprintf(cmd, sizeof cmd, "'%s' train -m '%s/fixtures/pldr/pldr-small-vocab32k' --data '%s/data.txt' --out '%s/A' %s 2>'%s/logA'",
             bin, shared, tmp, tmp, common, tmp);
    CHECK(run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "'%s' train -m '%s/fixtures/pldr/pldr-small-vocab32k' --data '%s/data.txt' --out '%s/B' %s --stop-after 2 2>'%s/logB'",
             bin, shared, tmp, tmp, common, tmp);
    CHECK(run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "'%s' train --resume '%s/B' --data '%s/data.txt' --out '%s/C' %s 2>'%s/logC'", bin, tmp, tmp, tmp,
             common, tmp);
    CHECK(run(cmd) == 0);
    const char *files[] = {"model.safetensors", "optimizer.safetensors", "config.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(a, sizeof a, "%s/A/%s", tmp, files[i]);
        snprintf(b, sizeof b, "%s/C/%s", tmp, files[i]);
        CHECKF(same_file(a, b), "resumed run differs from the uninterrupted one: %s", files[i]);
    }
    snprintf(a, sizeof a, "%s/B/model.safetensors", tmp);
    snprintf(b, sizeof b, "%s/A/model.safetensors", tmp);
    CHECK(!same_file(a, b));   // the stopped run really is a step behind
    snprintf(cmd, sizeof cmd, "grep -q '^3,' '%s/C/loss.csv' && grep -q '<svg' '%s/C/loss.svg' && grep -q 'tok/s' '%s/logA'", tmp, tmp, tmp);
    CHECK(run(cmd) == 0);
    // the checkpoint runs with its tokenizer in the inference engine
    snprintf(cmd, sizeof cmd, "'%s' run -m '%s/C' -p 'To be' -n 3 >/dev/null 2>&1", bin, tmp);
    CHECK(run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(run(cmd) == 0);
}

// `peri grad` on the fixture batch writes the reference loss and a gradient per parameter
static void grad_cmd(const char *shared, const char *bin) {
    char tmp[] = "/tmp/peri_test_gradcmd_XXXXXX", cmd[4096], out[1200];
    CHECK(mkdtemp(tmp) != NULL);
    snprintf(out, sizeof out, "%s/g.safetensors", tmp);
    snprintf(cmd, sizeof cmd,
             "'%s' grad -m '%s/fixtures/grads/plm-tiny' --ids '240 63 391 55 28 229 447 357 362 412 143 150' "
             "--ids '118,294,292,509,424,444,227,56,42,220,144,243' --out '%s' 2>/dev/null", bin, shared, out);
    CHECK(run(cmd) == 0);
    peri_safetensors st, ref;
    char rp[1200];
    snprintf(rp, sizeof rp, "%s/fixtures/grads/plm-tiny/expected.safetensors", shared);
    if (peri_safetensors_open(&st, out, true) == PERI_OK && peri_safetensors_open(&ref, rp, true) == PERI_OK) {
        const peri_tensor *l = peri_safetensors_find(&st, "loss"), *lr = peri_safetensors_find(&ref, "loss");
        CHECK(l && lr && fabsf(*(const float *)l->data - *(const float *)lr->data) < 1e-5f);
        CHECK(st.n_tensors == 21);
        const peri_tensor *g = peri_safetensors_find(&st, "grad.model.embed_tokens.weight");
        const peri_tensor *gr = peri_safetensors_find(&ref, "grad.model.embed_tokens.weight");
        CHECK(g && gr && test_max_abs_diff(g->data, gr->data, (size_t)peri_tensor_nelem(gr)) < 1e-4);
        peri_safetensors_close(&st);
        peri_safetensors_close(&ref);
    } else CHECK(0);
    // unequal rows are an error
    snprintf(cmd, sizeof cmd, "'%s' grad -m '%s/fixtures/grads/plm-tiny' --ids '1 2 3' --ids '1 2' --out '%s' 2>/dev/null", bin, shared, out);
    CHECK(run(cmd) == 1);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(run(cmd) == 0);
}

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) return TEST_SKIP;
    overfit(shared, "pldr-tiny");
    overfit(shared, "plm-tiny");
    const char *bin = getenv("PERI_BIN");
    if (bin && access(bin, X_OK) == 0) {
        grad_cmd(shared, bin);
        resume(shared, bin);
    } else printf("PERI_BIN not set: command tests skipped\n");
    return TEST_END();
}
