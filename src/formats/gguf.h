// GGUF v2/v3 reader and writer (the layout of ggml's gguf.h): magic "GGUF", version, n_tensors, n_kv,
// typed key-values (arrays may nest), tensor infos (name, n_dims, ne[] innermost first, type, offset),
// then data aligned to general.alignment (default 32). Every count, length and offset is checked against
// the file size before use.
#ifndef PERI_FORMATS_GGUF_H
#define PERI_FORMATS_GGUF_H

#include "core/mapfile.h"
#include "tensor/types.h"

enum gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4, GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12, GGUF_VTYPE_COUNT
};

typedef struct gguf_str { const char *s; uint64_t len; } gguf_str;   // points into the file (not NUL-terminated)

typedef struct gguf_value gguf_value;
struct gguf_value {
    int type;                 // enum gguf_vtype
    union {
        uint64_t u64; int64_t i64; double f64; bool b; gguf_str str;
        struct { int type; uint64_t n; const void *data; gguf_value *items; } arr;
        // arr.data: the raw little-endian elements for scalar element types (in the file);
        // arr.items: parsed elements for STRING and nested ARRAY element types.
    } v;
};

typedef struct gguf_kv { gguf_str key; gguf_value value; } gguf_kv;

typedef struct peri_gguf {
    peri_mapfile file;
    uint32_t version;
    uint64_t n_kv;
    gguf_kv *kv;
    int n_tensors;
    peri_tensor *tensors;     // shape[] is row-major (ne reversed); names NUL-terminated copies
    uint64_t alignment;
    uint64_t data_offset;     // start of the tensor data section
    int *sorted;              // private: tensor indices sorted by name, for find
} peri_gguf;

// The buffer must outlive the result (strings and tensor data point into it).
int peri_gguf_parse(peri_gguf *g, const unsigned char *data, size_t size, const char *where);
int peri_gguf_open(peri_gguf *g, const char *path, bool use_mmap);
void peri_gguf_close(peri_gguf *g);

const gguf_value *peri_gguf_get(const peri_gguf *g, const char *key);
const peri_tensor *peri_gguf_find(const peri_gguf *g, const char *name);
// Typed getters: false if missing or of another type (integers of any width convert when in range).
bool peri_gguf_get_u64(const peri_gguf *g, const char *key, uint64_t *out);
bool peri_gguf_get_i64(const peri_gguf *g, const char *key, int64_t *out);
bool peri_gguf_get_f64(const peri_gguf *g, const char *key, double *out);
bool peri_gguf_get_bool(const peri_gguf *g, const char *key, bool *out);
bool peri_gguf_get_str(const peri_gguf *g, const char *key, gguf_str *out);
// Array element access for arrays of strings / numbers.
bool peri_gguf_get_arr(const peri_gguf *g, const char *key, int *elem_type, uint64_t *n);
bool peri_gguf_arr_str(const peri_gguf *g, const char *key, uint64_t i, gguf_str *out);
bool peri_gguf_arr_f64(const peri_gguf *g, const char *key, uint64_t i, double *out);   // numeric arrays
bool peri_gguf_arr_i64(const peri_gguf *g, const char *key, uint64_t i, int64_t *out);

// Writer: collect key-values and tensors, then write the file (v3, alignment 32 unless set).
typedef struct peri_gguf_writer peri_gguf_writer;
peri_gguf_writer *peri_gguf_writer_new(void);
void peri_gguf_writer_free(peri_gguf_writer *w);
int peri_gguf_set_u32(peri_gguf_writer *w, const char *key, uint32_t v);
int peri_gguf_set_i32(peri_gguf_writer *w, const char *key, int32_t v);
int peri_gguf_set_u64(peri_gguf_writer *w, const char *key, uint64_t v);
int peri_gguf_set_f32(peri_gguf_writer *w, const char *key, float v);
int peri_gguf_set_bool(peri_gguf_writer *w, const char *key, bool v);
int peri_gguf_set_str(peri_gguf_writer *w, const char *key, const char *v);
int peri_gguf_set_arr_str(peri_gguf_writer *w, const char *key, const char *const *v, uint64_t n);
int peri_gguf_set_arr_data(peri_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n);
// Copies the key-value (any type, arrays included) from a parsed file.
int peri_gguf_set_kv_from(peri_gguf_writer *w, const gguf_kv *kv);
// shape is row-major as in peri_tensor; data must stay valid until write; nbytes = row size x rows.
int peri_gguf_add_tensor(peri_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *shape,
                         const void *data, size_t nbytes);
int peri_gguf_write(peri_gguf_writer *w, const char *path);

#endif
