// peri.h: the one public header of libperi, an inference engine for PLM and PLDR-LLM models.
//
// Conventions (as llama.h / sqlite):
//   - every function is prefixed peri_, every handle is opaque and has its *_free;
//   - parameters come from *_default_params() by value;
//   - functions return PERI_OK (0) or a negative enum peri_status; peri_last_error() then says what is
//     wrong, where, and what to do (thread-local, valid until the next failing call on that thread);
//   - output buffers are the caller's: functions return the count written, or minus the size needed;
//   - the library never exits, never prints unless a log callback is set.
#ifndef PERI_H
#define PERI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(PERI_SHARED_BUILD)
#define PERI_API __declspec(dllexport)
#elif defined(__GNUC__)
#define PERI_API __attribute__((visibility("default")))
#else
#define PERI_API
#endif

typedef int32_t peri_token;

enum peri_status {
    PERI_OK = 0,
    PERI_E_IO = -1,          // a file could not be opened, read or mapped
    PERI_E_FORMAT = -2,      // a file or input is malformed
    PERI_E_UNSUPPORTED = -3, // well-formed but not supported (a dtype, an architecture, an option)
    PERI_E_NOMEM = -4,       // an allocation failed or a size is beyond the limits
    PERI_E_ARG = -5,         // a bad argument from the caller
    PERI_E_CONTEXT_FULL = -6,// the sequence does not fit in the context
    PERI_E_ABORTED = -7,     // the abort callback asked to stop
};

// The message of the last failure on this thread ("" if none).
PERI_API const char *peri_last_error(void);
PERI_API const char *peri_status_name(int status);

// Optional log sink (default: silent).
typedef void (*peri_log_fn)(int level, const char *text, void *user_data);
PERI_API void peri_log_set(peri_log_fn fn, void *user_data);

// ---------------------------------------------------------------------------------------------------------
// Models

typedef struct peri_model peri_model;
typedef struct peri_context peri_context;
typedef struct peri_tokenizer peri_tokenizer;

// PLM's down projections stored by their inputs (with use_repack), so that a decoded token reads only the weights of
// its non-zero squared-ReLU activations (about 91% zeros in the trained checkpoints).
enum peri_sparse_down {
    PERI_SPARSE_DOWN_AUTO = 0,   // F32/F16/BF16/Q8_0 always; Q4_K and Q6_K (Q4_K_M files) per layer, where a short
                                 // pass at load finds the activations at least 80% (Q4_K) or 85% (Q6_K) zero
    PERI_SPARSE_DOWN_ON = 1,     // every down projection whose type has such a layout
    PERI_SPARSE_DOWN_OFF = 2,    // none: the file's layout
};

struct peri_model_params {
    int32_t n_threads;   // threads for loading work (0 = physical cores)
    bool use_mmap;       // map weights read-only and use them in place (false: read into memory)
    bool use_repack;     // rewrite weights at load into the kernels' layouts where they have one (Q4_0 rows of
                         // whole 512-value groups; PLM's down projections, as sparse_down says); a mapped weight's
                         // pages become the process's own (copy on write; the file is never written), so processes
                         // no longer share them
    int32_t sparse_down; // enum peri_sparse_down (with use_repack)
};
PERI_API struct peri_model_params peri_model_default_params(void);

// path: a folder in Hugging Face layout (config.json + model.safetensors or sharded
// model.safetensors.index.json) or a .gguf file.
PERI_API int peri_model_load(const char *path, struct peri_model_params params, peri_model **out);
PERI_API void peri_model_free(peri_model *model);

PERI_API const char *peri_model_arch(const peri_model *model);     // "pldrllm", "plm"
PERI_API int32_t peri_model_n_vocab(const peri_model *model);
PERI_API int32_t peri_model_n_embd(const peri_model *model);
PERI_API int32_t peri_model_n_layer(const peri_model *model);
PERI_API int32_t peri_model_n_ctx_train(const peri_model *model);
PERI_API peri_token peri_model_eos(const peri_model *model);       // -1 if none
PERI_API peri_token peri_model_bos(const peri_model *model);       // -1 if none
PERI_API peri_token peri_model_pad(const peri_model *model);       // -1 if none
// Writes a human-readable description (architecture, config, tensors, files, metadata) into buf.
// Returns the length written, or minus the size needed (including the terminating NUL).
PERI_API int64_t peri_model_describe(const peri_model *model, char *buf, size_t size);
// Bytes of weights one decode step reads (embedding rows excluded): decode speed is bounded by
// memory bandwidth / this.
PERI_API int64_t peri_model_decode_bytes(const peri_model *model);
// Output heads. Language models (…ForCausalLM) have PERI_HEAD_LM; checkpoints of the Hugging Face task classes
// (…ForSequenceClassification, …ForTokenClassification, …ForQuestionAnswering) load with their head, and
// then every logits row holds peri_model_n_outputs() values instead of the vocabulary.
enum peri_head_type { PERI_HEAD_LM = 0, PERI_HEAD_SEQ_CLS = 1, PERI_HEAD_TOKEN_CLS = 2, PERI_HEAD_QA = 3 };
enum peri_problem_type { PERI_PROBLEM_SINGLE_LABEL = 0, PERI_PROBLEM_MULTI_LABEL = 1, PERI_PROBLEM_REGRESSION = 2 };
PERI_API int32_t peri_model_head(const peri_model *model);
PERI_API int32_t peri_model_n_outputs(const peri_model *model);   // n_vocab, num_labels, or 2 for QA
PERI_API const char *peri_model_label(const peri_model *model, int32_t i);   // id2label[i], or NULL
PERI_API int32_t peri_model_problem_type(const peri_model *model);
// Sequence classification pooling as the HF classes do it: the index of the rightmost token that is not the
// pad id (the last token when the model has no pad id; 0 if every token is padding, as torch's argmax).
PERI_API int32_t peri_seq_cls_pool_index(const peri_model *model, const peri_token *ids, int32_t n);
// The same for a batch ids [n_seq x n_tokens] into out[n_seq]. Without a pad id only one row is allowed
// (HF: "Cannot handle batch sizes > 1 if no padding token is defined"): PERI_E_ARG otherwise.
PERI_API int peri_seq_cls_pool(const peri_model *model, const peri_token *ids, int32_t n_seq, int32_t n_tokens,
                               int32_t *out);
// The tokenizer loaded with the model, or NULL if the model folder/file carries none. Owned by the model.
PERI_API const peri_tokenizer *peri_model_tokenizer(const peri_model *model);

// ---------------------------------------------------------------------------------------------------------
// Contexts: caches and scratch for up to n_seq_max sequences, all allocated at creation

enum peri_attn_semantics {
    PERI_ATTN_SDPA = 0,  // a query row that sees no key attends to nothing (torch >= 2.5 sdpa, HF default)
    PERI_ATTN_EAGER = 1, // such a row gets a uniform softmax over all keys (HF eager with finfo.min mask)
};

// Called for named intermediate tensors during a forward pass (for tests and debugging).
// shape is row-major; the data is only valid during the call.
typedef void (*peri_tensor_cb)(const char *name, int32_t seq, const float *data, int32_t n_dims,
                               const int64_t *shape, void *user_data);

// Element type of the attention caches. PERI_KV_DEFAULT is the architecture's choice: F16 for PLM (latent and
// full caches, as llama.cpp's default), F32 for PLDR-LLM (which has no F16 cache and ignores this field).
enum peri_kv_type { PERI_KV_DEFAULT = 0, PERI_KV_F32 = 1, PERI_KV_F16 = 2 };

struct peri_context_params {
    int32_t n_ctx;        // tokens per sequence (0 = the model's training context)
    int32_t n_seq_max;    // sequences (batch rows / server slots)
    int32_t n_batch;      // most tokens per sequence in one peri_decode call (0 = n_ctx)
    int32_t n_threads;    // 0 = physical cores
    int32_t attn;         // enum peri_attn_semantics
    peri_tensor_cb tensor_cb;
    void *tensor_cb_data;
    bool logits_all;      // allow peri_batch.logits_all (the logits buffer then holds n_batch rows per
                          // sequence instead of one)
    bool kv_full;         // PLM: cache expanded K/V as llama.cpp does (default: latent cache)
    int32_t kv_type;      // enum peri_kv_type
    bool cache_first_G;   // PLDR-LLM: decode rows use sequence 0's G (HF cache_first_G)
};
PERI_API struct peri_context_params peri_context_default_params(void);
PERI_API int peri_context_init(peri_model *model, struct peri_context_params params, peri_context **out);
PERI_API void peri_context_free(peri_context *ctx);
PERI_API int32_t peri_context_n_ctx(const peri_context *ctx);

// A rectangular batch: n_seq rows of n_tokens tokens each, row r going to sequence seq_ids[r].
// tokens and (optional) pos and mask are [n_seq * n_tokens], row-major.
//   pos  == NULL: positions continue from each sequence's current length.
//   mask == NULL: every token is real; otherwise 0 marks a padding token (never attended to as a key).
struct peri_batch {
    int32_t n_seq;
    int32_t n_tokens;
    const int32_t *seq_ids;
    const peri_token *tokens;
    const int32_t *pos;
    const int8_t *mask;
    bool logits_all;      // logits for every token (true) or only each row's last one (false)
};

// Runs the tokens through the model, appending them to each sequence's caches. The logits are then in
// peri_get_logits(). A sequence whose cache is empty is a prefill (PLDR-LLM computes and caches G here).
PERI_API int peri_decode(peri_context *ctx, const struct peri_batch *batch);
// Logits of the last peri_decode: [n_seq x (n_tokens or 1) x peri_model_n_outputs()], row-major.
PERI_API const float *peri_get_logits(const peri_context *ctx);
PERI_API int64_t peri_get_logits_count(const peri_context *ctx);   // number of rows

// Forget a sequence's caches (seq < 0: all sequences).
PERI_API int peri_seq_clear(peri_context *ctx, int32_t seq);
PERI_API int32_t peri_seq_len(const peri_context *ctx, int32_t seq);
// Keep only the first n tokens of a sequence's cache (for chat edits, speculative decoding). PLDR-LLM
// keeps its G-cache.
PERI_API int peri_seq_truncate(peri_context *ctx, int32_t seq, int32_t n);

// Named per-sequence state of the last forward, as float32 into a caller buffer: returns the count written,
// or a negative status (PERI_E_ARG if the buffer is too small: size it with peri_get_state_shape).
// PLDR-LLM: "A.{l}", "A_LM.{l}", "G_LM.{l}" (the G-cache), "A_raw.{l}" (q^T q before LayerNorm),
// "A_P.{l}" (A_LM^pw); and the parameters "pw.{l}", "a.{l}", "ba.{l}". Shapes via peri_get_state_shape.
PERI_API int64_t peri_get_state(const peri_context *ctx, const char *name, int32_t seq, float *out, size_t n);
PERI_API int peri_get_state_shape(const peri_context *ctx, const char *name, int32_t *n_dims, int64_t shape[4]);
// PLDR-LLM DAG metric (spec section 5) of a sequence's G-cache: out[0] = L(A_LM), out[1] = L(A_P),
// out[2] = L(G_LM), each the mean over layers and heads of |log(tr(expm(M o M)) / d)|.
PERI_API int peri_pldr_dag(const peri_context *ctx, int32_t seq, double out[3]);
// PLDR-LLM with custom_G_type "external" (or "random"): replaces the fixed G (energy-curvature tensor) with
// one read from a safetensors file, as HF's past_G_values[:, 2]. Accepted layouts: "G_LM.{l}" [H, d, d] per
// layer (what `peri logits --deductive` writes), "G_LM" [L, H, d, d], or "decoder.past_G_values"
// [L, 3, 1, H, d, d]. Contexts created afterwards use it.
PERI_API int peri_pldr_load_external_G(peri_model *model, const char *path);

// ---------------------------------------------------------------------------------------------------------
// Sampling (Hugging Face semantics: temperature, then top-k, then top-p; top_k 0 and top_p 1 disable)

struct peri_sampler_params {
    float temperature;    // 0 = greedy (argmax, first index on ties)
    int32_t top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
    float presence_penalty;
    float frequency_penalty;
    uint64_t seed;
};
PERI_API struct peri_sampler_params peri_sampler_default_params(void);
typedef struct peri_sampler peri_sampler;
PERI_API int peri_sampler_init(struct peri_sampler_params params, int32_t n_vocab, peri_sampler **out);
PERI_API void peri_sampler_free(peri_sampler *s);
PERI_API peri_token peri_sampler_sample(peri_sampler *s, const float *logits);
PERI_API void peri_sampler_accept(peri_sampler *s, peri_token tok);
PERI_API void peri_sampler_reset(peri_sampler *s);

// ---------------------------------------------------------------------------------------------------------
// Tokenizers (SentencePiece and byte-level BPE)

// Loads a tokenizer from a file (tokenizer.model, tokenizer.json, a .gguf) or a model folder.
PERI_API int peri_tokenizer_load(const char *path, peri_tokenizer **out);
PERI_API void peri_tokenizer_free(peri_tokenizer *tok);
// Encodes text into ids (no BOS/EOS added). allow_special: special tokens written in the text are matched
// as tokens. Returns the count, or minus the size needed (peri_last_error() is then ""), or a negative
// status on failure (peri_last_error() says why).
PERI_API int64_t peri_tokenize(const peri_tokenizer *tok, const char *text, size_t len, peri_token *out,
                               size_t n_max, bool allow_special);
// Decodes ids into UTF-8 text. Returns the length, or minus the size needed (no NUL is written;
// peri_last_error() is then ""), or a negative status on failure (with a message).
PERI_API int64_t peri_detokenize(const peri_tokenizer *tok, const peri_token *ids, size_t n, char *out,
                                 size_t size, bool skip_special);
PERI_API int32_t peri_tokenizer_n_vocab(const peri_tokenizer *tok);

// ---------------------------------------------------------------------------------------------------------
// Models written from scratch (`peri init`): random weights for any config, saved in Hugging Face layout.

// config_json: a config.json text (PldrllmConfig or PLMConfig). Writes out_dir/config.json and
// out_dir/model.safetensors (float32).
PERI_API int peri_model_init_random(const char *config_json, uint64_t seed, const char *out_dir);

PERI_API const char *peri_version(void);
PERI_API const char *peri_system_info(void);  // which SIMD kernels were chosen

#ifdef __cplusplus
}
#endif
#endif
