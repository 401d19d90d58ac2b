// Random PLDR-LLM weights for `peri init`, with the fixtures' recipe: xavier-uniform linear weights,
// biases 0.05 N(0,1), LayerNorm weights 1 + 0.1 N, embedding N(0,1), LM head N(0,1) * 2.5/sqrt(D),
// W and a N(0,1)/sqrt(d), b and ba 0.05 N, pw 1 + 0.1 N. Every parameter then reaches the output.
#include "core/error.h"
#include "formats/json.h"
#include "runtime/init.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int peri_pldr_init_random(const json_value *cfg, uint64_t seed, const char *out_dir);

int peri_pldr_init_random(const json_value *cfg, uint64_t seed, const char *out_dir) {
    int64_t V, L, H, d, D, F, A_dff, n_res, n_dense;
    bool ab, gb, fb, tie;
    const char *gtype;
    if (!json_get_int(cfg, "vocab_size", 32000, &V) || !json_get_int(cfg, "num_hidden_layers", 5, &L) ||
        !json_get_int(cfg, "num_attention_heads", 14, &H) || !json_get_int(cfg, "head_dim", 64, &d) ||
        !json_get_int(cfg, "hidden_size", H * d, &D) || !json_get_int(cfg, "intermediate_size", H * d * 8 / 3, &F) ||
        !json_get_int(cfg, "A_dff", 170, &A_dff) || !json_get_int(cfg, "num_reslayerA", 8, &n_res) ||
        !json_get_int(cfg, "num_denseA", 2, &n_dense) || !json_get_bool(cfg, "attention_bias", true, &ab) ||
        !json_get_bool(cfg, "glu_bias", true, &gb) || !json_get_bool(cfg, "final_bias", true, &fb) ||
        !json_get_bool(cfg, "tie_word_embeddings", false, &tie) || !json_get_str(cfg, "custom_G_type", NULL, &gtype))
        return PERI_E_FORMAT;
    if (V <= 0 || L <= 0 || H <= 0 || d <= 0 || D != H * d || F <= 0 || V * D > ((int64_t)1 << 33))
        return peri_fail(PERI_E_FORMAT, "config: sizes must be positive, hidden_size = heads x head_dim, and the model "
                         "small enough to initialise");
    peri_init_list I;
    peri_init_list_begin(&I, seed);
    char n[256];
    const float bias_s = 0.05f;
#define LIN(name, out, in, bias)                                                                   \
    do {                                                                                           \
        int64_t s_[2] = {(out), (in)}, sb_[1] = {(out)};                                           \
        snprintf(n, sizeof n, "%s.weight", name);                                                  \
        peri_init_add(&I, n, 2, s_, PERI_INIT_XAVIER_UNIFORM, 0, 0);                               \
        if (bias) { snprintf(n, sizeof n, "%s.bias", name); peri_init_add(&I, n, 1, sb_, PERI_INIT_NORMAL, bias_s, 0); } \
    } while (0)
#define LN(name, dim)                                                                              \
    do {                                                                                           \
        int64_t s_[1] = {(dim)};                                                                   \
        snprintf(n, sizeof n, "%s.weight", name); peri_init_add(&I, n, 1, s_, PERI_INIT_NORMAL, 0.1f, 1.0f); \
        snprintf(n, sizeof n, "%s.bias", name); peri_init_add(&I, n, 1, s_, PERI_INIT_NORMAL, bias_s, 0); \
    } while (0)
    int64_t s_emb[2] = {V, D};
    peri_init_add(&I, "decoder.embedding.weight", 2, s_emb, PERI_INIT_NORMAL, 1.0f, 0);
    LN("decoder.layernorm1", D);
    char p[256];
    for (int64_t l = 0; l < L; l++) {
        const char *mats[4] = {"wq", "wk", "wv", "dense"};
        for (int i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "decoder.dec_layers.%lld.mha1.%s", (long long)l, mats[i]);
            LIN(p, D, D, ab);
        }
        if (!gtype) {
            int64_t s3[3] = {H, d, d};
            const float sd = 1.0f / sqrtf((float)d);
            const char *pl[5] = {"Wlst", "blst", "pwlst", "alst", "balst"};
            const float sc[5] = {sd, bias_s, 0.1f, sd, bias_s}, off[5] = {0, 0, 1.0f, 0, 0};
            for (int i = 0; i < 5; i++) {
                snprintf(n, sizeof n, "decoder.dec_layers.%lld.mha1.plgatt_layer.%s", (long long)l, pl[i]);
                peri_init_add(&I, n, 3, s3, PERI_INIT_NORMAL, sc[i], off[i]);
            }
            snprintf(p, sizeof p, "decoder.dec_layers.%lld.mha1.layernorm1", (long long)l);
            LN(p, d);
            for (int64_t r = 0; r < n_res; r++) {
                for (int64_t g = 0; g < n_dense; g++) {
                    snprintf(p, sizeof p, "decoder.dec_layers.%lld.mha1.reslayerAs.%lld.denseAs.%lld.gluw1", (long long)l, (long long)r, (long long)g);
                    LIN(p, A_dff, d, gb);
                    snprintf(p, sizeof p, "decoder.dec_layers.%lld.mha1.reslayerAs.%lld.denseAs.%lld.gluw2", (long long)l, (long long)r, (long long)g);
                    LIN(p, A_dff, d, gb);
                    snprintf(p, sizeof p, "decoder.dec_layers.%lld.mha1.reslayerAs.%lld.denseAs.%lld.gluw3", (long long)l, (long long)r, (long long)g);
                    LIN(p, d, A_dff, gb);
                }
                snprintf(p, sizeof p, "decoder.dec_layers.%lld.mha1.reslayerAs.%lld.layernormA", (long long)l, (long long)r);
                LN(p, d);
            }
        }
        snprintf(p, sizeof p, "decoder.dec_layers.%lld.ffn.gluw1", (long long)l);
        LIN(p, F, D, gb);
        snprintf(p, sizeof p, "decoder.dec_layers.%lld.ffn.gluw2", (long long)l);
        LIN(p, F, D, gb);
        snprintf(p, sizeof p, "decoder.dec_layers.%lld.ffn.gluw3", (long long)l);
        LIN(p, D, F, gb);
        snprintf(p, sizeof p, "decoder.dec_layers.%lld.layernorm1", (long long)l);
        LN(p, D);
        snprintf(p, sizeof p, "decoder.dec_layers.%lld.layernorm2", (long long)l);
        LN(p, D);
    }
    // the head: an LM head, or the task head the architecture names (score / qa_outputs, N(0,1) 2.5/sqrt(D))
    const json_value *arch = json_get(cfg, "architectures");
    const char *an = arch && arch->type == JSON_ARRAY && arch->len && arch->items[0].type == JSON_STRING ? arch->items[0].str : "";
    const json_value *id2label = json_get(cfg, "id2label");
    int64_t n_labels = id2label && id2label->type == JSON_OBJECT && id2label->len ? (int64_t)id2label->len : 2;
    if (strstr(an, "ForSequenceClassification") || strstr(an, "ForTokenClassification") || strstr(an, "ForQuestionAnswering")) {
        int qa = strstr(an, "ForQuestionAnswering") != NULL, seq = strstr(an, "ForSequenceClassification") != NULL;
        int64_t sw[2] = {qa ? 2 : n_labels, D}, sb[1] = {qa ? 2 : n_labels};
        peri_init_add(&I, qa ? "qa_outputs.weight" : "score.weight", 2, sw, PERI_INIT_NORMAL, 2.5f / sqrtf((float)D), 0);
        if (!seq) peri_init_add(&I, qa ? "qa_outputs.bias" : "score.bias", 1, sb, PERI_INIT_NORMAL, 0.1f, 0);
        fb = false;
    } else if (!tie) {
        peri_init_add(&I, "final_layer.weight", 2, s_emb, PERI_INIT_NORMAL, 2.5f / sqrtf((float)D), 0);
    }
    if (fb) {
        int64_t sv[1] = {V};
        peri_init_add(&I, "final_layer.bias", 1, sv, PERI_INIT_NORMAL, 0.1f, 0);
    }
    if (gtype) {
        // custom G: HF's persistent buffers, (A = 0, A_LM = 0, G = I) per layer
        int64_t sg[6] = {L, 3, 1, H, d, d};
        peri_init_add(&I, "decoder.past_G_values", 6, sg, PERI_INIT_ZERO, 0, 0);
        if (!I.oom) {
            float *g = (float *)I.t[I.n - 1].data;
            for (int64_t l = 0; l < L; l++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t i = 0; i < d; i++) g[(((l * 3 + 2) * H + h) * d + i) * d + i] = 1.0f;
        }
    }
#undef LIN
#undef LN
    return peri_init_list_write(&I, out_dir);
}
