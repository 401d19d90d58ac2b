// Chat metadata beside the tokenizer: chat template, bos/eos strings and end-of-generation ids.
#include "tokenizers/tokenizer_meta.h"

#include "core/error.h"
#include "core/mapfile.h"
#include "formats/gguf.h"
#include "formats/json.h"
#include "tokenizers/chat_template.h"
#include "tokenizers/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// Token texts that end a turn in the chat formats peri meets (llama.cpp's end-of-generation list).
static const char *const k_eog_texts[] = {
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>", "<EOT>",
    "<|eom_id|>",
};

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static void add_eog(peri_chat_info *ci, const peri_tokenizer *tok, int64_t id) {
    if (id < 0 || (tok && id >= tok->n_vocab) || ci->n_eog >= PERI_MAX_EOG) return;
    for (int i = 0; i < ci->n_eog; i++)
        if (ci->eog[i] == id) return;
    ci->eog[ci->n_eog++] = (peri_token)id;
}

// Only special/control tokens qualify: a vocabulary may hold the same text as an ordinary piece.
static void add_eog_text(peri_chat_info *ci, const peri_tokenizer *tok, const char *s) {
    if (!tok || !s) return;
    int32_t id = peri_tok_lookup(tok, s, strlen(s));
    if (peri_tok_is_special(tok, id)) add_eog(ci, tok, id);
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// A special-token field of tokenizer_config.json: a string or an AddedToken object {"content": ...}.
static int token_field(const json_value *cfg, const char *key, char **out) {
    const json_value *v = json_get(cfg, key);
    if (v && v->type == JSON_OBJECT) v = json_get(v, "content");
    if (!v || v->type != JSON_STRING) return PERI_OK;
    *out = dup_n(v->str, strlen(v->str));
    return *out ? PERI_OK : peri_fail(PERI_E_NOMEM, "out of memory");
}

// chat_template: a string, or a list of {name, template} (the one named "default", else the first).
static int template_field(const json_value *t, const char *path, char **out) {
    if (t && t->type == JSON_ARRAY) {
        const json_value *pick = NULL;
        for (size_t i = 0; i < t->len; i++) {
            const json_value *name = json_get(&t->items[i], "name");
            if (!pick || (name && name->type == JSON_STRING && !strcmp(name->str, "default"))) pick = &t->items[i];
        }
        t = pick ? json_get(pick, "template") : NULL;
    }
    if (!t || t->type == JSON_NULL) return PERI_OK;
    if (t->type != JSON_STRING)
        return peri_fail(PERI_E_FORMAT, "'%s': chat_template is neither a string nor a list of named templates", path);
    *out = dup_n(t->str, strlen(t->str));
    return *out ? PERI_OK : peri_fail(PERI_E_NOMEM, "out of memory");
}

static int load_json(const char *path, char **text, json_value **doc) {
    size_t len;
    int rc = peri_read_file(path, PERI_CHAT_MAX_TEMPLATE * 4, text, &len);
    if (rc) return rc;
    *doc = json_parse(*text, len, path);
    return *doc ? PERI_OK : PERI_E_FORMAT;
}

static int load_dir(const char *dir, peri_chat_info *ci) {
    char path[4096];
    char *text = NULL;
    json_value *cfg = NULL;
    int rc = PERI_OK;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (is_file(path)) {
        if ((rc = load_json(path, &text, &cfg)) || (rc = template_field(json_get(cfg, "chat_template"), path, &ci->tmpl)) ||
            (rc = token_field(cfg, "bos_token", &ci->bos)) || (rc = token_field(cfg, "eos_token", &ci->eos)))
            goto done;
        json_free(cfg);
        free(text);
        cfg = NULL;
        text = NULL;
    }
    // Newer transformers save the template beside the config instead.
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (!ci->tmpl && is_file(path)) {
        size_t len;
        if ((rc = peri_read_file(path, PERI_CHAT_MAX_TEMPLATE, &ci->tmpl, &len))) goto done;
    }
    snprintf(path, sizeof path, "%s/chat_template.json", dir);
    if (!ci->tmpl && is_file(path)) {
        if ((rc = load_json(path, &text, &cfg)) || (rc = template_field(json_get(cfg, "chat_template"), path, &ci->tmpl)))
            goto done;
    }
done:
    json_free(cfg);
    free(text);
    return rc;
}

static int load_gguf(const char *path, const peri_tokenizer *tok, peri_chat_info *ci) {
    peri_gguf g;
    int rc = peri_gguf_open(&g, path, true);
    if (rc) return rc;
    gguf_str s;
    if (peri_gguf_get_str(&g, "tokenizer.chat_template", &s) && !(ci->tmpl = dup_n(s.s, (size_t)s.len)))
        rc = peri_fail(PERI_E_NOMEM, "out of memory");
    int64_t id;
    if (peri_gguf_get_i64(&g, "tokenizer.ggml.eot_token_id", &id)) add_eog(ci, tok, id);
    if (peri_gguf_get_i64(&g, "tokenizer.ggml.eom_token_id", &id)) add_eog(ci, tok, id);
    peri_gguf_close(&g);
    // The template's bos/eos strings are the texts of the GGUF's bos/eos ids (llama.cpp does the same).
    if (!rc && tok) {
        size_t n;
        if (tok->bos_id >= 0 && tok->bos_id < tok->n_vocab) {
            const char *p = peri_tok_text(tok, tok->bos_id, &n);
            if (!(ci->bos = dup_n(p, n))) rc = peri_fail(PERI_E_NOMEM, "out of memory");
        }
        if (!rc && tok->eos_id >= 0 && tok->eos_id < tok->n_vocab) {
            const char *p = peri_tok_text(tok, tok->eos_id, &n);
            if (!(ci->eos = dup_n(p, n))) rc = peri_fail(PERI_E_NOMEM, "out of memory");
        }
    }
    return rc;
}

int peri_chat_info_load(const char *model_path, const peri_tokenizer *tok, peri_token model_eos,
                        peri_chat_info *ci) {
    memset(ci, 0, sizeof *ci);
    if (!model_path) return peri_fail(PERI_E_ARG, "peri_chat_info_load: no model path");
    struct stat st;
    if (stat(model_path, &st) != 0) return peri_fail(PERI_E_IO, "'%s': no such file or folder", model_path);
    int rc = S_ISDIR(st.st_mode) ? load_dir(model_path, ci) : load_gguf(model_path, tok, ci);
    if (rc) return rc;
    add_eog(ci, tok, model_eos);
    if (tok) {
        add_eog(ci, tok, tok->eos_id);
        add_eog_text(ci, tok, ci->eos);
        for (size_t i = 0; i < sizeof k_eog_texts / sizeof k_eog_texts[0]; i++) add_eog_text(ci, tok, k_eog_texts[i]);
    }
    return PERI_OK;
}

void peri_chat_info_free(peri_chat_info *ci) {
    if (!ci) return;
    free(ci->tmpl);
    free(ci->bos);
    free(ci->eos);
    memset(ci, 0, sizeof *ci);
}

bool peri_chat_info_is_eog(const peri_chat_info *ci, peri_token id) {
    for (int i = 0; i < ci->n_eog; i++)
        if (ci->eog[i] == id) return true;
    return false;
}
