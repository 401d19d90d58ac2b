// A model's files, opened as one set of named tensors: a Hugging Face folder (config.json plus
// model.safetensors, or shards listed in model.safetensors.index.json) or a single .gguf file.
#ifndef PERI_FORMATS_WEIGHTS_H
#define PERI_FORMATS_WEIGHTS_H

#include "formats/gguf.h"
#include "formats/json.h"
#include "formats/safetensors.h"

typedef struct peri_weights {
    char *path;               // as given
    char *dir;                // folder for HF layout (NULL for gguf)
    json_value *config;       // parsed config.json (HF layout), NULL for gguf
    peri_gguf *gguf;          // gguf file, NULL for HF layout
    int n_shards;
    peri_safetensors *shards;
    int n_tensors;            // all tensors over all shards / the gguf (pointers into shards/gguf)
    const peri_tensor **tensors;
    size_t total_bytes;       // sum of file sizes
    const peri_tensor **sorted;  // private: tensors by name, for find
} peri_weights;

// path: a folder (config.json required; model.safetensors or model.safetensors.index.json), a .gguf file
// (or any file starting with the GGUF magic), or a .safetensors file (config.json beside it is optional).
int peri_weights_open(peri_weights *w, const char *path, bool use_mmap);
void peri_weights_close(peri_weights *w);
const peri_tensor *peri_weights_find(const peri_weights *w, const char *name);
// Whether a tensor's bytes are in a memory-mapped file (not read into memory).
bool peri_weights_mapped(peri_weights *w, const peri_tensor *t);
// A load-time copy replaced the tensor: the process's resident pages of a mapped tensor (the whole pages inside
// its bytes) are dropped, so they stop counting in its memory; were they read again, the file would give them back.
void peri_weights_release(peri_weights *w, const peri_tensor *t);

#endif
