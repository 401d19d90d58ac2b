// The model and context objects behind the public handles, and the interface every architecture
// implements (src/models/<arch>.c). Adding an architecture = one ops table + one line in model.c.
#ifndef PERI_RUNTIME_MODEL_H
#define PERI_RUNTIME_MODEL_H

#include "formats/weights.h"
#include "peri.h"
#include "runtime/pool.h"

#include <stdio.h>

// A growable text buffer for describe().
typedef struct peri_strbuf { char *s; size_t len, cap; int oom; } peri_strbuf;
void peri_sb_printf(peri_strbuf *sb, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

struct peri_arch_ops {
    const char *name;                                  // "pldrllm", "plm"
    const char *model_type;                            // HF config.json model_type
    // True if this architecture handles the files: HF model_type / architectures, or GGUF arch.
    int (*match)(const peri_weights *w);
    // Reads the config (config.json or GGUF keys) and binds every weight; sets the common hparams.
    int (*load)(peri_model *m);
    void (*free)(peri_model *m);
    void (*describe)(const peri_model *m, peri_strbuf *sb);   // config summary
    // Allocates caches and scratch for c->params (all of it, once).
    int (*ctx_init)(peri_context *c);
    void (*ctx_free)(peri_context *c);
    // Forward of a batch; writes c->logits (rows as peri_get_logits documents) and appends to caches.
    int (*decode)(peri_context *c, const struct peri_batch *b);
    // Resets the per-sequence state beyond the generic length (e.g. PLDR's G-cache status).
    void (*seq_clear)(peri_context *c, int32_t seq);
    // Points *data at a named float32 state tensor of a sequence (see peri_get_state) and gives its shape.
    int (*get_state)(const peri_context *c, const char *name, int32_t seq, const float **data, int32_t *n_dims,
                     int64_t shape[4]);
    int (*dag)(const peri_context *c, int32_t seq, double out[3]);
    // `peri init`: writes out_dir/model.safetensors with random weights for this config (the caller writes
    // config.json). The recipe is documented per architecture.
    int (*init_random)(const json_value *config, uint64_t seed, const char *out_dir);
    // Bytes of weights one decode step reads (for the bandwidth bound in benchmarks); NULL: all tensors.
    int64_t (*decode_bytes)(const peri_model *m);
    // After the load (tokenizer and heads bound; contexts can be made): choices that need the model running (PLM:
    // which down projections to rearrange, from the activations of a short pass). NULL: none.
    int (*prepare)(peri_model *m);
};

struct peri_model {
    peri_weights w;
    // Output head (runtime/heads.c): the LM head, or a task head chosen by config.json's architectures.
    int head;                         // enum peri_head_type
    int32_t n_out;                    // values per output row: n_vocab, num_labels, or 2 (QA)
    const peri_tensor *out_w;         // task head weight [n_out, n_embd] (NULL for the LM head)
    float *out_b;                     // task head bias [n_out] or NULL
    char **labels;                    // id2label [n_out] (NULL if none)
    int problem_type;                 // enum peri_problem_type
    const struct peri_arch_ops *ops;
    void *arch;                       // the architecture's weights struct
    int32_t n_vocab, n_embd, n_layer, n_ctx_train;
    peri_token bos, eos, pad;
    peri_tokenizer *tok;              // may be NULL
    struct peri_model_params params;
    // Small weights converted to float32 at load (norms, biases, ...), owned here: freed with the model.
    void **owned;
    int n_owned, cap_owned;
};

struct peri_context {
    peri_model *model;
    struct peri_context_params params;
    peri_pool *pool;
    void *arch;                       // caches and scratch
    int32_t *seq_len;                 // [n_seq_max] tokens in each sequence's cache
    float *logits;                    // [n_seq_max * n_batch * n_vocab]
    int64_t n_logits_rows;
};

// Float32 copy of a (small) weight of any supported type, owned by the model. NULL + error on failure.
float *peri_model_f32_copy(peri_model *m, const peri_tensor *t);
// Finds a tensor and checks its shape (n_dims values in shape[]); error names the tensor and both shapes.
int peri_model_get(peri_model *m, const char *name, int n_dims, const int64_t *shape, const peri_tensor **out);
// Same, then a float32 copy (for vectors and small matrices).
int peri_model_get_f32(peri_model *m, const char *name, int n_dims, const int64_t *shape, float **out);
// Allocation owned by the model (zeroed); NULL on failure with an error set.
void *peri_model_alloc(peri_model *m, size_t bytes);

// Task heads. detect: from config.json's architectures (before the arch binds weights: a task-head
// checkpoint has no LM head). bind: the head's tensors (after the arch load, which sets n_embd/n_vocab).
int peri_heads_detect(peri_model *m);
int peri_heads_bind(peri_model *m);
// The model's output for n rows of final hidden states x [n, n_embd] -> y [n, n_out]: the arch's LM head
// (lm_w, lm_b) for language models, the task head otherwise.
void peri_model_output(peri_context *c, float *y, const float *x, int64_t n, const peri_tensor *lm_w, const float *lm_b);

extern const struct peri_arch_ops peri_arch_pldr;
extern const struct peri_arch_ops peri_arch_plm;
// Tests only: how PLM prefill attends on the latent cache, process-wide. 0 (default) picks the form with fewer
// multiply-adds per micro-batch, 1 the absorbed form, 2 the decompressed form where its scratch allows.
void peri_plm_set_prefill_form(int form);

#endif
