// Tests of peri_weights_open: Hugging Face folders (single and sharded), lone .safetensors and .gguf files,
// the error cases, and every model file of ../shared/fixtures (GGUF and safetensors agreeing).
#include "core/error.h"
#include "formats/weights.h"
#include "test.h"

#include <dirent.h>
#include <stdint.h>
#include <unistd.h>

static char g_tmp[512];

static const char *tmp_file(const char *name) {
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 1024, "%s/%s", g_tmp, name);
    return p;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void clear_dir(void) {
    DIR *d = opendir(g_tmp);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') remove(tmp_file(e->d_name));
    closedir(d);
}

static bool same_tensor(const peri_tensor *a, const peri_tensor *b) {
    return a && b && strcmp(a->name, b->name) == 0 && a->type == b->type && a->n_dims == b->n_dims &&
           a->nbytes == b->nbytes && memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->n_dims) == 0 &&
           memcmp(a->data, b->data, a->nbytes) == 0;
}

#define NT 6
static float g_data[NT][64];
static peri_tensor g_t[NT];
static const char *g_names[NT] = {"model.embed_tokens.weight", "model.layers.0.attn.weight", "model.layers.0.norm.weight",
                                  "model.layers.1.attn.weight", "model.layers.1.norm.weight", "model.norm.weight"};

static void make_tensors(void) {
    for (int i = 0; i < NT; i++) {
        for (int k = 0; k < 64; k++) g_data[i][k] = (float)(i * 100 + k) * 0.25f;
        g_t[i] = (peri_tensor){.name = g_names[i], .type = PERI_TYPE_F32, .n_dims = 2, .shape = {8, 8},
                               .data = g_data[i], .nbytes = sizeof g_data[i]};
    }
    g_t[2].n_dims = g_t[4].n_dims = g_t[5].n_dims = 1;
    g_t[2].shape[0] = g_t[4].shape[0] = g_t[5].shape[0] = 64;
}

static const char *config_json = "{\"architectures\": [\"PLMForCausalLM\"], \"hidden_size\": 8}";

static void test_single_and_sharded(void) {
    make_tensors();
    clear_dir();
    peri_weights one, sh;
    write_text(tmp_file("config.json"), config_json);
    CHECK(peri_safetensors_write(tmp_file("model.safetensors"), g_t, NT, NULL, 0) == PERI_OK);
    int rc = peri_weights_open(&one, g_tmp, true);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc) return;
    CHECK(one.n_tensors == NT && one.n_shards == 1 && one.gguf == NULL && one.config && one.dir);
    int64_t hs;
    CHECK(json_get_int(one.config, "hidden_size", 0, &hs) && hs == 8);
    for (int i = 0; i < NT; i++) CHECKF(same_tensor(peri_weights_find(&one, g_names[i]), &g_t[i]), "%s", g_names[i]);
    CHECK(peri_weights_find(&one, "nope") == NULL);

    // The same model split into two shards plus an index.
    remove(tmp_file("model.safetensors"));
    CHECK(peri_safetensors_write(tmp_file("model-00001-of-00002.safetensors"), g_t, 3, NULL, 0) == PERI_OK);
    CHECK(peri_safetensors_write(tmp_file("model-00002-of-00002.safetensors"), g_t + 3, NT - 3, NULL, 0) == PERI_OK);
    char index[4096];
    size_t n = (size_t)snprintf(index, sizeof index, "{\"metadata\": {\"total_size\": %zu}, \"weight_map\": {",
                                sizeof g_data);
    for (int i = 0; i < NT; i++)
        n += (size_t)snprintf(index + n, sizeof index - n, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                              i ? ", " : "", g_names[i], i < 3 ? 1 : 2);
    snprintf(index + n, sizeof index - n, "}}");
    write_text(tmp_file("model.safetensors.index.json"), index);
    rc = peri_weights_open(&sh, g_tmp, false);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc == PERI_OK) {
        CHECK(sh.n_tensors == NT && sh.n_shards == 2 && sh.config != NULL);
        for (int i = 0; i < NT; i++)
            CHECKF(same_tensor(peri_weights_find(&sh, g_names[i]), peri_weights_find(&one, g_names[i])), "%s", g_names[i]);
        peri_weights_close(&sh);
    }
    peri_weights_close(&one);

    // The index names a tensor its shard lacks.
    char bad[4096];
    snprintf(bad, sizeof bad, "{\"weight_map\": {\"%s\": \"model-00002-of-00002.safetensors\"}}", g_names[0]);
    write_text(tmp_file("model.safetensors.index.json"), bad);
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT && strstr(peri_last_error(), g_names[0]));
    // Shard names must stay inside the folder.
    write_text(tmp_file("model.safetensors.index.json"), "{\"weight_map\": {\"a\": \"../x.safetensors\"}}");
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT && strstr(peri_last_error(), "'..'"));
    write_text(tmp_file("model.safetensors.index.json"), "{\"weight_map\": {\"a\": \"/etc/passwd\"}}");
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT);
    write_text(tmp_file("model.safetensors.index.json"), "{\"weight_map\": {\"a\": 3}}");
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT);
    write_text(tmp_file("model.safetensors.index.json"), "{\"weight_map\": {\"a\": \"missing.safetensors\"}}");
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_IO && strstr(peri_last_error(), "missing.safetensors"));
    write_text(tmp_file("model.safetensors.index.json"), "{\"weights\": {}}");
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT && strstr(peri_last_error(), "weight_map"));
    // A tensor present in two shards.
    CHECK(peri_safetensors_write(tmp_file("model-00002-of-00002.safetensors"), g_t + 2, NT - 2, NULL, 0) == PERI_OK);
    write_text(tmp_file("model.safetensors.index.json"), index);
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT && strstr(peri_last_error(), g_names[2]) &&
          strstr(peri_last_error(), "more than one shard"));

    // Neither weights file.
    remove(tmp_file("model.safetensors.index.json"));
    CHECK(peri_weights_open(&sh, g_tmp, true) != PERI_OK && strstr(peri_last_error(), "model.safetensors"));
    // No config.json: the message from the issue.
    remove(tmp_file("config.json"));
    CHECK(peri_weights_open(&sh, g_tmp, true) != PERI_OK);
    char want[1024];
    snprintf(want, sizeof want, "'%s' has no config.json: a model folder in Hugging Face layout needs config.json and "
             "model.safetensors", g_tmp);
    CHECKF(strcmp(peri_last_error(), want) == 0, "%s", peri_last_error());
    // A bad config.json names itself and the position.
    write_text(tmp_file("config.json"), "{\"a\": 1,\n}");
    CHECK(peri_weights_open(&sh, g_tmp, true) == PERI_E_FORMAT && strstr(peri_last_error(), "config.json") &&
          strstr(peri_last_error(), "line 2, column 1"));

    // A lone .safetensors file; config.json beside it is optional.
    CHECK(peri_weights_open(&sh, tmp_file("model-00001-of-00002.safetensors"), true) != PERI_OK);   // bad config
    remove(tmp_file("config.json"));
    rc = peri_weights_open(&sh, tmp_file("model-00001-of-00002.safetensors"), true);
    CHECK(rc == PERI_OK && sh.n_tensors == 3 && sh.config == NULL);
    if (rc == PERI_OK) peri_weights_close(&sh);

    // GGUF by extension and by magic; other files are refused.
    peri_gguf_writer *w = peri_gguf_writer_new();
    peri_gguf_set_str(w, "general.architecture", "plm");
    peri_gguf_add_tensor(w, g_names[0], PERI_TYPE_F32, 2, g_t[0].shape, g_data[0], sizeof g_data[0]);
    CHECK(peri_gguf_write(w, tmp_file("m.gguf")) == PERI_OK);
    CHECK(peri_gguf_write(w, tmp_file("m.bin")) == PERI_OK);
    peri_gguf_writer_free(w);
    rc = peri_weights_open(&sh, tmp_file("m.gguf"), true);
    CHECK(rc == PERI_OK && sh.gguf && sh.n_tensors == 1 && same_tensor(peri_weights_find(&sh, g_names[0]), &g_t[0]));
    if (rc == PERI_OK) peri_weights_close(&sh);
    rc = peri_weights_open(&sh, tmp_file("m.bin"), true);
    CHECK(rc == PERI_OK && sh.gguf && sh.total_bytes > 0);
    if (rc == PERI_OK) peri_weights_close(&sh);
    write_text(tmp_file("notes.txt"), "hello");
    CHECK(peri_weights_open(&sh, tmp_file("notes.txt"), true) == PERI_E_UNSUPPORTED);
    CHECK(peri_weights_open(&sh, tmp_file("absent"), true) == PERI_E_IO && strstr(peri_last_error(), "absent"));
    clear_dir();
}

// ---- fixtures ----

static int n_files;

static void check_file(const char *path) {
    peri_weights w;
    int rc = peri_weights_open(&w, path, true);
    CHECKF(rc == PERI_OK, "%s: %s", path, peri_last_error());
    if (rc) return;
    n_files++;
    CHECKF(w.n_tensors > 0, "%s", path);
    int bad = 0;
    for (int i = 0; i < w.n_tensors; i++) {
        const peri_tensor *t = w.tensors[i];
        const struct peri_type_traits *tr = peri_type_traits(t->type);
        int64_t ne = peri_tensor_nelem(t), last = t->n_dims ? t->shape[t->n_dims - 1] : 1;
        if (!tr || ne < 0 || last <= 0 || peri_row_size(t->type, last) * (size_t)(ne / last) != t->nbytes ||
            peri_weights_find(&w, t->name) != t)
            bad++;
    }
    CHECKF(bad == 0, "%s: %d tensors with inconsistent shape/size", path, bad);
    peri_weights_close(&w);
}

static bool matches(const char *name) {
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, ".gguf") == 0) return true;
    if (strcmp(name, "expected.safetensors") == 0) return true;
    return strncmp(name, "model", 5) == 0 && n > 12 && strcmp(name + n - 12, ".safetensors") == 0;
}

static void walk(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    bool has_config = false;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) walk(p);
        else if (matches(e->d_name)) check_file(p);
        else if (strcmp(e->d_name, "config.json") == 0) has_config = true;
    }
    closedir(d);
    if (has_config) {
        char p[4096];
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        if (access(p, R_OK) == 0) {
            peri_weights w;
            int rc = peri_weights_open(&w, dir, true);
            CHECKF(rc == PERI_OK && w.config && w.config->type == JSON_OBJECT && w.n_tensors > 0, "%s: %s", dir,
                   peri_last_error());
            if (rc == PERI_OK) peri_weights_close(&w);
        }
    }
}

// llama.cpp's converter writes the HF weights unchanged for plm-tiny's f32 GGUF: same shapes (row-major after
// reversing ne) and the same float32 bytes.
static void check_gguf_vs_safetensors(const char *shared) {
    char dir[4096], gg[4200];
    snprintf(dir, sizeof dir, "%s/fixtures/plm/plm-tiny", shared);
    snprintf(gg, sizeof gg, "%s/model-f32.gguf", dir);
    if (access(gg, R_OK) != 0) return;
    peri_weights hf, gw;
    int rc1 = peri_weights_open(&hf, dir, true), rc2 = peri_weights_open(&gw, gg, false);
    CHECK(rc1 == PERI_OK && rc2 == PERI_OK);
    if (rc1 == PERI_OK && rc2 == PERI_OK) {
        static const char *pairs[][2] = {
            {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"},
            {"blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight"},
            {"blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"},
            {"token_embd.weight", "model.embed_tokens.weight"},
            {"output_norm.weight", "model.norm.weight"},
        };
        for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
            const peri_tensor *a = peri_weights_find(&gw, pairs[i][0]), *b = peri_weights_find(&hf, pairs[i][1]);
            CHECKF(a && b && a->type == PERI_TYPE_F32 && b->type == PERI_TYPE_F32 && a->n_dims == b->n_dims &&
                   memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->n_dims) == 0 && a->nbytes == b->nbytes &&
                   memcmp(a->data, b->data, a->nbytes) == 0, "%s vs %s", pairs[i][0], pairs[i][1]);
        }
        gguf_str arch;
        CHECK(peri_gguf_get_str(gw.gguf, "general.architecture", &arch) && arch.len == 3 && memcmp(arch.s, "plm", 3) == 0);
    }
    if (rc1 == PERI_OK) peri_weights_close(&hf);
    if (rc2 == PERI_OK) peri_weights_close(&gw);
}

int main(void) {
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(g_tmp, sizeof g_tmp, "%s/peri_test_weights_%d", tmp, (int)getpid());
    mkdir(g_tmp, 0700);
    test_single_and_sharded();
    rmdir(g_tmp);
    const char *shared = test_shared_dir();
    if (shared) {
        char p[4096];
        snprintf(p, sizeof p, "%s/fixtures", shared);
        walk(p);
        printf("%d fixture files opened\n", n_files);
        check_gguf_vs_safetensors(shared);
    }
    return TEST_END();
}
