// Internal tokenizer interface: the shared vocabulary object behind peri_tokenizer, its loaders
// (SentencePiece model protos, Hugging Face tokenizer.json / vocab.json + merges.txt, GGUF metadata) and a
// streaming detokenizer that never splits a UTF-8 character.
#ifndef PERI_TOKENIZERS_TOKENIZER_H
#define PERI_TOKENIZERS_TOKENIZER_H

#define PERI_TRIE_DENSE_MIN 12
#define PERI_TRIE_UD 0x40000000

#include "peri.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct peri_gguf peri_gguf;

// Piece types: the numbering of sentencepiece's ModelProto and of GGUF tokenizer.ggml.token_type.
enum peri_tok_type {
    PERI_TOK_NORMAL = 1,
    PERI_TOK_UNKNOWN = 2,
    PERI_TOK_CONTROL = 3,
    PERI_TOK_USER_DEFINED = 4,
    PERI_TOK_UNUSED = 5,
    PERI_TOK_BYTE = 6,
};

enum peri_tok_kind { PERI_TOKENIZER_SPM = 1, PERI_TOKENIZER_BPE = 2 };

// Limits that keep hostile files bounded.
#define PERI_TOK_MAX_VOCAB (1 << 22)
#define PERI_TOK_MAX_PIECE 65536

// Open-addressing hash map from 64-bit keys to 64-bit values (key UINT64_MAX is reserved).
typedef struct peri_u64map {
    uint64_t *keys, *vals;
    size_t cap, n;
} peri_u64map;
int peri_u64map_init(peri_u64map *m, size_t expected);
void peri_u64map_free(peri_u64map *m);
int peri_u64map_put(peri_u64map *m, uint64_t key, uint64_t val);   // overwrites; 0 or PERI_E_NOMEM
bool peri_u64map_get(const peri_u64map *m, uint64_t key, uint64_t *val);

uint64_t peri_hash_bytes(const void *p, size_t n);

typedef struct peri_tok_piece {
    uint32_t off, len;        // text in tok->text (SPM: the piece with U+2581; BPE: the vocab string)
    uint32_t boff, blen;      // decoded bytes in tok->text (BPE: GPT-2 chars mapped back to bytes)
    float score;
    uint8_t type;             // enum peri_tok_type
    uint8_t byte;             // SPM BYTE pieces: the byte value
    bool special;             // BPE added token with special=true (skip_special drops it)
} peri_tok_piece;

typedef struct peri_added_token {
    int32_t id;
    bool special;
} peri_added_token;

struct peri_tokenizer {
    int kind;                 // enum peri_tok_kind
    int32_t n_vocab;
    peri_tok_piece *pieces;
    char *text;               // all piece strings, NUL-separated
    size_t text_len, text_cap;
    // Piece string -> id: SPM normal/user-defined/unused pieces; BPE the whole vocab incl. added tokens.
    uint32_t *idx;            // open addressing over ids (UINT32_MAX = empty)
    size_t idx_cap;
    int32_t unk_id, bos_id, eos_id, pad_id;

    // SentencePiece
    int spm_model_type;       // 1 unigram, 2 bpe, 3 word, 4 char
    bool add_dummy_prefix, remove_extra_ws, escape_ws, byte_fallback, treat_ws_suffix;
    float min_score, max_score;
    unsigned char *charsmap;  // owned copy of the precompiled charsmap (NULL = identity)
    size_t charsmap_size;
    const uint32_t *cm_trie;  // darts-clone units inside charsmap
    size_t cm_units;
    const char *cm_norm;      // replacement strings blob inside charsmap
    size_t cm_norm_size;
    peri_u64map trie;         // piece trie: (node << 8 | byte) -> child node
    int32_t *trie_val;        // node -> piece id or -1
    size_t trie_nodes, trie_cap;
    // The same trie flattened for encoding: children of node n are trie_lab/trie_child[trie_off[n] ..
    // trie_off[n + 1]), sorted by label; the root's 256 children are in trie_root (-1 = none).
    uint32_t *trie_off, *trie_child;
    uint8_t *trie_lab;
    // nodes with >= PERI_TRIE_DENSE_MIN children: trie_dense[trie_dense_idx[n] * 256 + byte] (-1 = none)
    int32_t *trie_dense_idx, *trie_dense;
    // node -> what Viterbi needs in one load: the piece id (-1: none or unused; | PERI_TRIE_UD for
    // user-defined pieces, whose score depends on length) and its score
    struct peri_trie_pay { int32_t id; float score; } *trie_pay;
    int32_t trie_root[256];
    bool ud_first[256];       // first bytes of user-defined symbols
    peri_u64map ud_trie;      // user-defined symbols trie (same layout), for the normalizer
    int32_t *ud_val;
    size_t ud_nodes, ud_cap;
    bool has_user_defined;
    int32_t byte_id[256];     // <0xNN> piece ids (-1 when absent)

    // Byte-level BPE
    peri_u64map merges;       // (left id << 32 | right id) -> (rank << 32 | merged id)
    int32_t bpe_byte_id[256]; // id of the single-byte symbol for each byte
    peri_added_token *added;  // added tokens, matched on raw text
    int n_added;
    bool nfc;                 // normalizer NFC
};

// Constructors (each fills a zeroed tokenizer; on failure the caller frees it with peri_tokenizer_free).
int peri_tokenizer_from_gguf(const peri_gguf *g, peri_tokenizer **out);
int peri_spm_from_gguf(peri_tokenizer **out, const peri_gguf *g, int32_t n_vocab);
int peri_bpe_from_gguf(peri_tokenizer **out, const peri_gguf *g, int32_t n_vocab);
int peri_spm_load_model(peri_tokenizer *t, const unsigned char *data, size_t size, const char *where);
int peri_spm_finish(peri_tokenizer *t);   // builds tries and derived fields after pieces are set
int peri_bpe_load_json(peri_tokenizer *t, const char *text, size_t len, const char *where);
int peri_bpe_load_vocab_merges(peri_tokenizer *t, const char *vocab, size_t vlen, const char *merges,
                               size_t mlen, const char *config, size_t clen, const char *where);
int peri_bpe_finish(peri_tokenizer *t, const char *const *merge_lines, const uint32_t *merge_lens,
                    size_t n_merges, const char *where);
// Loads a tokenizer from a model folder. Returns PERI_OK, 1 when the folder has no tokenizer file (no
// error set), or a negative status.
int peri_tokenizer_load_dir(const char *dir, peri_tokenizer **out);

// Vocabulary building blocks.
peri_tokenizer *peri_tok_alloc(int kind, int32_t n_vocab);
int peri_tok_set_piece(peri_tokenizer *t, int32_t id, const char *s, size_t len, float score, int type);
int peri_tok_append_text(peri_tokenizer *t, const char *s, size_t len, uint32_t *off);
int peri_tok_build_index(peri_tokenizer *t, bool spm);
int32_t peri_tok_lookup(const peri_tokenizer *t, const char *s, size_t len);   // -1 if absent

static inline const char *peri_tok_text(const peri_tokenizer *t, int32_t id, size_t *len) {
    *len = t->pieces[id].len;
    return t->text + t->pieces[id].off;
}
bool peri_tok_is_control(const peri_tokenizer *t, int32_t id);
bool peri_tok_is_special(const peri_tokenizer *t, int32_t id);

// A growable byte / id buffer.
typedef struct peri_buf { char *p; size_t n, cap; } peri_buf;
int peri_buf_put(peri_buf *b, const void *s, size_t n);
typedef struct peri_ids { int32_t *p; size_t n, cap; } peri_ids;
int peri_ids_put(peri_ids *v, int32_t id);

// Encoders: append ids for text[0..len) to out.
int peri_spm_encode(const peri_tokenizer *t, const char *text, size_t len, peri_ids *out);
int peri_spm_normalize(const peri_tokenizer *t, const char *text, size_t len, peri_buf *out);
int peri_bpe_encode(const peri_tokenizer *t, const char *text, size_t len, bool allow_special, peri_ids *out);

// Streaming detokenizer: feed ids one at a time; the output only ever holds whole UTF-8 characters, and
// the concatenation of all pushes plus the final flush equals peri_detokenize of the whole sequence.
typedef struct peri_detok_stream {
    unsigned char pend[8];    // bytes of an incomplete character
    int n_pend;
    bool pend_spm_bytes;      // SPM: pend came from byte pieces
    bool started;             // SPM: some text was produced (no leading-space strip any more)
} peri_detok_stream;
int peri_detok_push(const peri_tokenizer *t, peri_detok_stream *st, int32_t id, bool skip_special,
                    peri_buf *out);
int peri_detok_flush(const peri_tokenizer *t, peri_detok_stream *st, peri_buf *out);

#endif
