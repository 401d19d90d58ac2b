// Scoring: log-likelihoods of continuations (lm-evaluation-harness semantics), zero-shot tasks, perplexity.
// docs/eval.md describes the prompt formats, the cache reuse (PLDR-LLM's G from the context) and the methods.
#ifndef PERI_EVAL_EVAL_H
#define PERI_EVAL_EVAL_H

#include "peri.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*peri_progress_fn)(int64_t done, int64_t total, void *user);

struct peri_eval_params {
    int32_t n_ctx;        // tokens per sequence (0: the model's training context, at most 2048)
    int32_t n_threads;    // 0 = physical cores
    int32_t n_parallel;   // choices scored side by side as separate sequences (1 = one at a time)
    bool one_forward;     // harness semantics: each choice as one forward of context+continuation (for PLDR-LLM
                          // G then depends on the continuation); default: the context once, its caches reused
    bool add_bos;         // prepend the model's BOS token to every context
    int32_t kv_type;      // enum peri_kv_type of the contexts' caches (PERI_KV_DEFAULT: PLM F16, as peri run)
};
struct peri_eval_params peri_eval_default_params(void);

typedef struct peri_eval_ctx peri_eval_ctx;
int peri_eval_init(peri_model *model, const struct peri_eval_params *params, peri_eval_ctx **out);
void peri_eval_free(peri_eval_ctx *e);

// Log-likelihoods of n continuations given their contexts (token ids). Continuations that share one context
// (ctx_shared) are scored against a context computed once. ll[i] = sum of log p(cont token | prefix);
// greedy[i] (may be NULL) = every continuation token was the argmax. Contexts that do not fit are cut from
// the left, as the harness does.
int peri_eval_loglik_tokens(peri_eval_ctx *e, const peri_token *const *ctx, const int32_t *n_ctx,
                            const peri_token *const *cont, const int32_t *n_cont, int n, double *ll, bool *greedy);
// The same on text, tokenized as the harness does: trailing spaces of the context move to the
// continuation, and the continuation's tokens are encode(context + continuation) minus encode(context).
int peri_eval_loglik(peri_eval_ctx *e, const char *const *ctx, const char *const *cont, int n, double *ll,
                     bool *greedy, int32_t *n_cont_tokens);

// ---- tasks -------------------------------------------------------------------------------------------------

typedef struct peri_task_doc {
    int n;                // choices (LAMBADA: 1)
    char **ctx;           // [n] contexts (all the same string except WinoGrande's partial scoring)
    char **cont;          // [n] continuations, with their leading space
    int gold;
} peri_task_doc;

typedef struct peri_task_docs {
    char task[32];
    int n_docs;
    peri_task_doc *docs;
} peri_task_docs;

// Names of the supported tasks (comma-separated) and the data file each one reads in ../shared/data/eval.
const char *peri_task_names(void);
const char *peri_task_file(const char *task);   // NULL if unknown
// Parses a task's data (jsonl, or HellaSwag's 6-line text) into prompts. labels: SIQA's labels file (else NULL).
int peri_task_parse(const char *task, const char *text, size_t len, const char *labels, size_t labels_len,
                    peri_task_docs *out);
void peri_task_docs_free(peri_task_docs *d);

struct peri_task_result {
    int n;                    // documents scored
    double acc, acc_stderr;
    double acc_norm, acc_norm_stderr;   // byte-length normalized (has_norm)
    double ppl;                         // LAMBADA: exp(-mean log-likelihood of the last word) (has_ppl)
    double ppl_token;                   // LAMBADA: exp(-sum ll / continuation tokens)
    bool has_norm, has_ppl;
};
// Scores the first `limit` documents (0: all).
int peri_task_run(peri_eval_ctx *e, const peri_task_docs *docs, int limit, struct peri_task_result *res,
                  peri_progress_fn progress, void *user);

// ---- perplexity ---------------------------------------------------------------------------------------------

struct peri_ppl_params {
    int32_t n_ctx;            // window (0: the model's training context)
    int32_t stride;           // 0: llama-perplexity's chunks (second half of each chunk scored);
                              // > 0: Hugging Face's strided sliding window
    int32_t n_threads;
    bool add_bos;             // chunks start with BOS (llama-perplexity replaces the first token of each chunk)
    int32_t kv_type;          // enum peri_kv_type (0 = PERI_KV_DEFAULT)
    peri_progress_fn progress;
    void *progress_user;
};
struct peri_ppl_result {
    int64_t n_tokens;         // tokens of the text
    int64_t n_scored;         // tokens whose log-likelihood was counted
    double nll;               // mean negative log-likelihood
    double ppl, ppl_stderr;   // exp(nll) and llama.cpp's standard error of it
};
int peri_perplexity(peri_model *model, const peri_token *tokens, int64_t n, const struct peri_ppl_params *params,
                    struct peri_ppl_result *res);

#endif
