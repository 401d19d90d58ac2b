// Training of PLDR-LLM and PLM in float32: a readable training-mode forward that keeps its activations,
// the backward of every op (train/tops.h), the loss, the DAG regularizer, AdamW and LR schedules.
// It is a separate implementation from the inference forward (src/models), checked against it and against
// the reference gradients of ../shared/fixtures/grads (docs/training.md).
#ifndef PERI_TRAIN_TRAIN_H
#define PERI_TRAIN_TRAIN_H

#include "formats/json.h"
#include "runtime/pool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum peri_tr_arch { PERI_TR_PLDR = 1, PERI_TR_PLM = 2 };
// The output layer: the LM head, or a Hugging Face task head (train/heads_train.c).
enum peri_tr_head { PERI_TR_HEAD_LM = 0, PERI_TR_HEAD_SEQ_CLS = 1, PERI_TR_HEAD_TOKEN_CLS = 2, PERI_TR_HEAD_QA = 3 };
enum peri_tr_problem { PERI_TR_SINGLE_LABEL = 0, PERI_TR_MULTI_LABEL = 1, PERI_TR_REGRESSION = 2 };

// One named parameter: a slice [off, off+n) of the trainer's flat w / g arrays.
typedef struct peri_tparam {
    char *name;
    int n_dims;
    int64_t shape[4];
    size_t off, n;
    bool no_decay;       // hint for optimizers that skip decay on norms/biases (AdamW here decays all by default)
} peri_tparam;

typedef struct peri_trainer {
    int arch;                        // enum peri_tr_arch
    char *config_text;               // config.json as read (written back with checkpoints)
    size_t config_len;
    // hyperparameters (PLDR: D, L, H, d, F, Fa, n_res, n_dense; PLM: D, L, H, nope, rope, dv, rank, F)
    int64_t V, D, L, H, d, F, Fa, n_res, n_dense, nope, rope, dv, rank, n_ctx;
    double theta;
    float eps;
    bool interleaved, tied, attn_bias, glu_bias, final_bias;
    int32_t pad_id, eos_id, bos_id;
    int head;                        // enum peri_tr_head
    int problem;                     // enum peri_tr_problem (sequence classification)
    int64_t n_out;                   // task heads: outputs per position (labels; 2 for QA)
    int head_w, head_b;              // task heads: parameter indices of the head (head_b -1 without bias)
    // parameters: flat float32 values and gradients
    int n_params;
    peri_tparam *params;
    size_t n_total;
    float *w, *g;
    float *cos_tab, *sin_tab;        // RoPE [n_ctx][n_rot/2], the same table the inference code builds
    peri_pool *pool;                 // may be NULL (single thread)
} peri_trainer;

// Loads a model folder / safetensors / gguf (float weights) into a trainer. n_threads <= 0: physical cores.
int peri_trainer_load(const char *path, int n_threads, peri_trainer **out);
void peri_trainer_free(peri_trainer *t);
const peri_tparam *peri_trainer_find(const peri_trainer *t, const char *name);

struct peri_tr_opts {
    bool backward;        // compute gradients (accumulated into t->g)
    double grad_scale;    // d(total)/d(this batch's loss): 1, or 1/accumulation steps
    bool mask_pad_keys;   // original PLDR convention: keys whose id is pad_id (0) are never attended to
    double dag_coef[3];   // PLDR DAG loss coefficients for L_A, L_Ap, L_G (added to the loss)
    bool dag_eval;        // compute the DAG terms even when the coefficients are 0
    double *dag_per_head; // optional out: [3][L][B][H] per-head terms (before the mean)
    float *logits_out;    // optional out: [B,T,V] logits ([B,T,n_out] for a task head)
    const float *targets; // task heads, multi-label / regression: [B, n_out] float targets
};
struct peri_tr_result {
    double loss;          // mean cross-entropy over the labelled positions
    int64_t n_terms;      // labelled positions
    double dag[3];        // L_A, L_Ap, L_G (when computed)
    double total;         // loss + sum coef * dag
};

// Forward (and backward) of a batch of B rows of T ids. labels [B,T]: the target of each position, or
// < 0 to ignore it. peri_tr_labels_hf fills the Hugging Face causal-LM labels (ids shifted by one).
// With a task head, labels are: [B] class ids (sequence classification, single label; multi-label and
// regression use o->targets), [B,T] class ids with -100 ignored (token classification), [B][2] start and end
// token positions (QA). The losses are Hugging Face's (see peri_tr_head_loss).
int peri_trainer_run(peri_trainer *t, const int32_t *ids, const int32_t *labels, int B, int T,
                     const struct peri_tr_opts *o, struct peri_tr_result *r);
void peri_tr_labels_hf(int32_t *labels, const int32_t *ids, int B, int T);
void peri_trainer_zero_grad(peri_trainer *t);

// log(tr(expm(X))) in double without overflow (scaling and squaring with renormalisation). If grad is
// not NULL it receives d log tr(expm(X)) / dX = expm(X)^T / tr(expm(X)). work: 4*d*d doubles.
double peri_tr_log_trace_expm(const double *X, int d, double *grad, double *work);

// AdamW (torch semantics, decoupled weight decay): p <- p(1 - lr wd); m, v moments; bias-corrected step.
struct peri_adamw { double lr, beta1, beta2, eps, weight_decay; };
void peri_adamw_step(float *p, const float *g, float *m, float *v, size_t n, const struct peri_adamw *h, int64_t step);
void peri_adamw_step_ref(float *p, const float *g, float *m, float *v, size_t n, const struct peri_adamw *h,
                         int64_t step);
// Gradient clipping: by value (each entry into [-c, c]) and by global L2 norm (returns the norm before).
void peri_clip_value(float *g, size_t n, float c);
double peri_clip_norm(float *g, size_t n, double max_norm);

// Learning-rate schedules. step counts from 0.
enum peri_sched { PERI_SCHED_CONST = 0, PERI_SCHED_COSINE = 1, PERI_SCHED_WSD = 2 };
struct peri_schedule {
    int kind;
    double lr, min_lr;            // peak and floor
    int64_t warmup, total;        // warmup steps; total steps (cosine ends, WSD decay ends, at total)
    int64_t decay;                // WSD: steps of the decay phase (ending at total); constant at min_lr after
};
double peri_schedule_lr(const struct peri_schedule *s, int64_t step);

// Writes dir/config.json and dir/model.safetensors (float32, the same names as loaded).
int peri_trainer_save(const peri_trainer *t, const char *dir);

// Threaded float32 linear layers (the trainer's big products); _ref: the scalar ops of tops.h.
void peri_tr_lin_fwd(peri_pool *pool, float *y, const float *x, const float *W, const float *b, int64_t n, int64_t K,
                     int64_t M);
void peri_tr_lin_bwd(peri_pool *pool, float *dx, float *dW, float *db, const float *dy, const float *x, const float *W,
                     int64_t n, int64_t K, int64_t M);

// Task heads (train/heads_train.c). head_config reads architectures / id2label / num_labels / problem_type;
// head_params adds score.* or qa_outputs.* (called by the architectures instead of their LM head).
int peri_tr_head_config(peri_trainer *t, const json_value *cfg);
int peri_tr_head_params(peri_trainer *t, int *w_idx, int *b_idx);
// The HF losses over head logits [B,T,n_out]: sequence classification pools the rightmost non-pad token, then
// cross-entropy (single label), BCE with logits (multi-label, mean over B x n_out) or MSE (regression); token
// classification: cross-entropy per labelled token; QA: (CE(start) + CE(end)) / 2 with positions clamped to
// [0, T] and T ignored. dlogits (may be NULL) accumulates d(grad_scale x loss)/dlogits.
int peri_tr_head_loss(const peri_trainer *t, const float *logits, float *dlogits, const int32_t *ids,
                      const int32_t *labels, const float *targets, int B, int T, double grad_scale, double *loss,
                      int64_t *n_terms);

// Fine-tuning examples, one JSON object per line:
//   sequence classification: {"text": "...", "label": 2}  (multi-label: "label": [0,1,1]; regression: 0.7 or [..])
//   token classification:    {"tokens": ["word", ...], "labels": [3, ...]}  (label on each word's first token,
//                            -100 on the rest, as HF's examples do)
//   question answering:      {"question": "...", "context": "...", "answer_start": BYTE, "answer_text": "..."}
//   any head: "ids": [...] instead of text (QA then with token positions "start" and "end").
typedef struct peri_tr_example {
    int32_t *ids;
    int T;
    int32_t *labels;      // as peri_trainer_run takes them for one row
    float *targets;       // multi-label / regression
} peri_tr_example;
struct peri_tokenizer;
int peri_tr_head_load_jsonl(const peri_trainer *t, const struct peri_tokenizer *tok, const char *path,
                            peri_tr_example **out, int64_t *n);
void peri_tr_examples_free(peri_tr_example *ex, int64_t n);

// Causal attention of B x H independent heads on the pool (tops.h's peri_tr_attn_fwd/bwd per head; head bh's
// rows start at bh*T*dk / bh*T*dv / bh*T*T; keep, if given, is [B,T]). With G (PLDR-LLM, dk = dv = d), the
// backward also takes Q = Qh G back to dQh and dG ([BH,d,d]).
void peri_tr_attn_fwd_heads(peri_pool *pool, float *O, float *P, const float *Q, const float *K, const float *V,
                            const uint8_t *keep, int64_t B, int64_t H, int T, int dk, int dv, float scale);
int peri_tr_attn_bwd_heads(peri_pool *pool, float *dQ, float *dK, float *dV, const float *dO, const float *P,
                           const float *Q, const float *K, const float *V, int64_t B, int64_t H, int T, int dk, int dv,
                           float scale, float *dQh, float *dG, const float *Qh, const float *G);

// Architecture entry points (train/pldr_train.c, train/plm_train.c).
int peri_tr_pldr_params(peri_trainer *t, const json_value *cfg);
int peri_tr_pldr_run(peri_trainer *t, const int32_t *ids, const int32_t *labels, int B, int T,
                     const struct peri_tr_opts *o, struct peri_tr_result *r);
int peri_tr_plm_params(peri_trainer *t, const json_value *cfg);
int peri_tr_plm_run(peri_trainer *t, const int32_t *ids, const int32_t *labels, int B, int T,
                    const struct peri_tr_opts *o, struct peri_tr_result *r);
// Adds a parameter to the table (during *_params); returns its index or a negative status.
int peri_tr_add_param(peri_trainer *t, const char *name, int n_dims, const int64_t *shape);

#endif
