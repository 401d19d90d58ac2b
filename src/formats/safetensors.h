// safetensors reader: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the data. Checked: header length
// bounds, dtypes, offsets inside the file, no overlaps, shape x dtype size = byte size.
#ifndef PERI_FORMATS_SAFETENSORS_H
#define PERI_FORMATS_SAFETENSORS_H

#include "core/mapfile.h"
#include "tensor/types.h"

typedef struct peri_safetensors {
    peri_mapfile file;
    int n_tensors;
    peri_tensor *tensors;   // names owned by this struct; data points into the mapping
    int n_meta;
    char **meta_keys, **meta_values;  // __metadata__ (string -> string)
    int *sorted;            // private: tensor indices sorted by name, for find
} peri_safetensors;

// Parses an in-memory buffer (the fuzz target and tests use this directly). `where` names it in errors.
// The buffer must outlive the result.
int peri_safetensors_parse(peri_safetensors *st, const unsigned char *data, size_t size, const char *where);
int peri_safetensors_open(peri_safetensors *st, const char *path, bool use_mmap);
void peri_safetensors_close(peri_safetensors *st);
const peri_tensor *peri_safetensors_find(const peri_safetensors *st, const char *name);

// Writes tensors (F32, F16, BF16, I32, U8, BOOL) with optional string metadata, in the safetensors
// library's order (larger itemsize first, then by name), data aligned. Returns PERI_OK or an error.
int peri_safetensors_write(const char *path, const peri_tensor *tensors, int n,
                           const char *const *meta_kv, int n_meta_pairs);

#endif
