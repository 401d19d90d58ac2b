// Opens a model's weights from a Hugging Face folder (single or sharded safetensors), a .safetensors file or
// a .gguf file, as one name-indexed set of tensors.
#include "formats/weights.h"

#include "core/error.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX_BYTES (16u << 20)
#define INDEX_MAX_BYTES (64u << 20)


static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir), m = strlen(name);
    char *p = malloc(n + m + 2);
    if (!p) return NULL;
    memcpy(p, dir, n);
    size_t k = n;
    if (k && p[k - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, m + 1);
    return p;
}

static char *dirname_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static bool has_gguf_magic(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char m[4];
    bool ok = fread(m, 1, 4, f) == 4 && memcmp(m, "GGUF", 4) == 0;
    fclose(f);
    return ok;
}

void peri_weights_close(peri_weights *w) {
    if (!w) return;
    free(w->path);
    free(w->dir);
    json_free(w->config);
    if (w->gguf) {
        peri_gguf_close(w->gguf);
        free(w->gguf);
    }
    for (int i = 0; i < w->n_shards; i++) peri_safetensors_close(&w->shards[i]);
    free(w->shards);
    free(w->tensors);
    free(w->sorted);
    memset(w, 0, sizeof *w);
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const peri_tensor *const *)a)->name, (*(const peri_tensor *const *)b)->name);
}

// Builds tensors[] (file order, shard by shard) and the by-name index; names must be unique overall.
static int collect_tensors(peri_weights *w) {
    size_t n = 0;
    if (w->gguf) n = (size_t)w->gguf->n_tensors;
    for (int i = 0; i < w->n_shards; i++) n += (size_t)w->shards[i].n_tensors;
    if (n > INT32_MAX) return peri_fail(PERI_E_FORMAT, "'%s': too many tensors", w->path);
    w->tensors = malloc((n ? n : 1) * sizeof *w->tensors);
    w->sorted = malloc((n ? n : 1) * sizeof *w->sorted);
    if (!w->tensors || !w->sorted) return peri_fail(PERI_E_NOMEM, "out of memory opening '%s'", w->path);
    size_t k = 0;
    if (w->gguf)
        for (int j = 0; j < w->gguf->n_tensors; j++) w->tensors[k++] = &w->gguf->tensors[j];
    for (int i = 0; i < w->n_shards; i++)
        for (int j = 0; j < w->shards[i].n_tensors; j++) w->tensors[k++] = &w->shards[i].tensors[j];
    w->n_tensors = (int)n;
    memcpy(w->sorted, w->tensors, n * sizeof *w->tensors);
    qsort(w->sorted, n, sizeof *w->sorted, cmp_tensor_ptr_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(w->sorted[i - 1]->name, w->sorted[i]->name) == 0) {
            const char *a = NULL, *b = NULL;
            for (int s = 0; s < w->n_shards; s++)
                if (peri_safetensors_find(&w->shards[s], w->sorted[i]->name)) {
                    if (!a) a = w->shards[s].file.path;
                    else if (!b) b = w->shards[s].file.path;
                }
            return peri_fail(PERI_E_FORMAT, "'%s': tensor '%s' is in more than one shard (%s and %s)", w->path,
                             w->sorted[i]->name, a ? a : "?", b ? b : "?");
        }
    return PERI_OK;
}

static int add_shard(peri_weights *w, const char *file, bool use_mmap) {
    peri_safetensors *ns = realloc(w->shards, (size_t)(w->n_shards + 1) * sizeof *ns);
    if (!ns) return peri_fail(PERI_E_NOMEM, "out of memory opening '%s'", file);
    w->shards = ns;
    int rc = peri_safetensors_open(&w->shards[w->n_shards], file, use_mmap);
    if (rc) return rc;
    w->total_bytes += w->shards[w->n_shards].file.size;
    w->n_shards++;
    return PERI_OK;
}

static int load_config(peri_weights *w, const char *cfg_path) {
    char *text;
    size_t len;
    int rc = peri_read_file(cfg_path, CONFIG_MAX_BYTES, &text, &len);
    if (rc) return rc;
    w->config = json_parse(text, len, cfg_path);
    free(text);
    if (!w->config) return PERI_E_FORMAT;
    if (w->config->type != JSON_OBJECT)
        return peri_fail(PERI_E_FORMAT, "'%s' is not a JSON object; a model's config.json holds {\"architectures\": ...}",
                         cfg_path);
    return PERI_OK;
}

static bool bad_shard_name(const char *s) {
    return !*s || strchr(s, '/') || strchr(s, '\\') || strstr(s, "..");
}

static int open_sharded(peri_weights *w, const char *index_path, bool use_mmap) {
    char *text;
    size_t len;
    int rc = peri_read_file(index_path, INDEX_MAX_BYTES, &text, &len);
    if (rc) return rc;
    json_value *idx = json_parse(text, len, index_path);
    free(text);
    if (!idx) return PERI_E_FORMAT;
    const json_value *map = json_get(idx, "weight_map");
    const char **files = NULL;
    int *shard_of = NULL;   // shard number of each weight_map entry
    int n_files = 0;
    char *path = NULL;
    if (!map || map->type != JSON_OBJECT) {
        rc = peri_fail(PERI_E_FORMAT, "'%s' has no \"weight_map\" object (tensor name -> shard file)", index_path);
        goto out;
    }
    files = calloc(map->len ? map->len : 1, sizeof *files);
    shard_of = calloc(map->len ? map->len : 1, sizeof *shard_of);
    if (!files || !shard_of) {
        rc = peri_fail(PERI_E_NOMEM, "out of memory reading '%s'", index_path);
        goto out;
    }
    for (size_t i = 0; i < map->len; i++) {
        const json_value *f = &map->items[i];
        if (f->type != JSON_STRING || strlen(f->str) != f->len || bad_shard_name(f->str)) {
            rc = peri_fail(PERI_E_FORMAT, "'%s': weight_map[\"%s\"] must be a file name in the same folder (no '/' or "
                           "'..')", index_path, map->keys[i]);
            goto out;
        }
        int s = 0;
        while (s < n_files && strcmp(files[s], f->str) != 0) s++;
        if (s == n_files) files[n_files++] = f->str;
        shard_of[i] = s;
    }
    if (n_files == 0) {
        rc = peri_fail(PERI_E_FORMAT, "'%s': weight_map is empty", index_path);
        goto out;
    }
    // Shards are opened in the order they first appear, each once.
    for (int s = 0; s < n_files; s++) {
        free(path);
        path = join(w->dir, files[s]);
        if (!path) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); goto out; }
        if ((rc = add_shard(w, path, use_mmap))) {
            peri_fail_prefix(rc, "shard listed in '%s': ", index_path);
            goto out;
        }
    }
    for (size_t i = 0; i < map->len; i++)
        if (!peri_safetensors_find(&w->shards[shard_of[i]], map->keys[i])) {
            rc = peri_fail(PERI_E_FORMAT, "'%s' lists tensor '%s' in '%s', but that shard does not contain it",
                           index_path, map->keys[i], files[shard_of[i]]);
            goto out;
        }
out:
    free(path);
    free(files);
    free(shard_of);
    json_free(idx);
    return rc;
}

static int open_folder(peri_weights *w, bool use_mmap) {
    int rc;
    char *cfg = join(w->path, "config.json");
    char *single = join(w->path, "model.safetensors");
    char *index = join(w->path, "model.safetensors.index.json");
    w->dir = strdup(w->path);
    if (!cfg || !single || !index || !w->dir) { rc = peri_fail(PERI_E_NOMEM, "out of memory"); goto out; }
    if (!is_file(cfg)) {
        rc = peri_fail(PERI_E_IO, "'%s' has no config.json: a model folder in Hugging Face layout needs config.json "
                       "and model.safetensors", w->path);
        goto out;
    }
    if ((rc = load_config(w, cfg))) goto out;
    if (is_file(single)) rc = add_shard(w, single, use_mmap);
    else if (is_file(index)) rc = open_sharded(w, index, use_mmap);
    else
        rc = peri_fail(PERI_E_IO, "'%s' has config.json but neither model.safetensors nor model.safetensors.index.json "
                       "(a .gguf file is opened by its own path)", w->path);
out:
    free(cfg);
    free(single);
    free(index);
    return rc;
}

int peri_weights_open(peri_weights *w, const char *path, bool use_mmap) {
    memset(w, 0, sizeof *w);
    if (!path) return peri_fail(PERI_E_ARG, "peri_weights_open: NULL path");
    w->path = strdup(path);
    if (!w->path) return peri_fail(PERI_E_NOMEM, "out of memory");
    int rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = peri_fail(PERI_E_IO, "cannot open '%s': %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = open_folder(w, use_mmap);
    } else if (ends_with(path, ".gguf") || has_gguf_magic(path)) {
        w->gguf = calloc(1, sizeof *w->gguf);
        if (!w->gguf) rc = peri_fail(PERI_E_NOMEM, "out of memory");
        else if ((rc = peri_gguf_open(w->gguf, path, use_mmap))) {
            free(w->gguf);
            w->gguf = NULL;
        } else {
            w->total_bytes = w->gguf->file.size;
        }
    } else if (ends_with(path, ".safetensors")) {
        w->dir = dirname_of(path);
        rc = w->dir ? add_shard(w, path, use_mmap) : peri_fail(PERI_E_NOMEM, "out of memory");
        if (!rc) {
            // The config beside a lone .safetensors file is optional (e.g. expected-output files have none).
            char *cfg = join(w->dir, "config.json");
            if (!cfg) rc = peri_fail(PERI_E_NOMEM, "out of memory");
            else if (is_file(cfg)) rc = load_config(w, cfg);
            free(cfg);
        }
    } else {
        rc = peri_fail(PERI_E_UNSUPPORTED, "'%s' is not a model: give a folder in Hugging Face layout (config.json + "
                       "model.safetensors), a .safetensors file or a .gguf file", path);
    }
    if (!rc) rc = collect_tensors(w);
    if (rc) peri_weights_close(w);
    return rc;
}

const peri_tensor *peri_weights_find(const peri_weights *w, const char *name) {
    if (!w || !name || !w->sorted) return NULL;
    int lo = 0, hi = w->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(w->sorted[mid]->name, name);
        if (c == 0) return w->sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

// The file whose bytes hold the tensor's, or NULL.
static peri_mapfile *file_of(peri_weights *w, const peri_tensor *t) {
    const unsigned char *d = t->data;
    peri_mapfile *f = w->gguf ? &w->gguf->file : NULL;
    for (int i = 0; !f && i < w->n_shards; i++) {
        peri_mapfile *s = &w->shards[i].file;
        if (d >= s->data && d <= s->data + s->size) f = s;
    }
    return f && d >= f->data && t->nbytes <= f->size && (size_t)(d - f->data) <= f->size - t->nbytes ? f : NULL;
}

bool peri_weights_mapped(peri_weights *w, const peri_tensor *t) {
    const peri_mapfile *f = file_of(w, t);
    return f && f->mapped;
}

void peri_weights_release(peri_weights *w, const peri_tensor *t) {
    const peri_mapfile *f = file_of(w, t);
    if (!f || !f->mapped) return;
    long pg = sysconf(_SC_PAGESIZE);
    const uintptr_t page = pg > 0 ? (uintptr_t)pg : 4096, a = (uintptr_t)t->data;
    const uintptr_t lo = (a + page - 1) / page * page, hi = (a + t->nbytes) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);   // advice: a failure only leaves the pages resident
}
