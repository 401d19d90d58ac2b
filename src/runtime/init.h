// Random weights for `peri init`: a list of named float32 tensors filled by a seeded generator, written as
// model.safetensors. Each architecture lists its parameters with an init rule (src/models/*_init.c).
#ifndef PERI_RUNTIME_INIT_H
#define PERI_RUNTIME_INIT_H

#include <stdint.h>

#include "tensor/types.h"

enum peri_init_rule {
    PERI_INIT_ZERO,
    PERI_INIT_ONE,
    PERI_INIT_NORMAL,          // a * N(0,1) + b
    PERI_INIT_XAVIER_UNIFORM,  // U(+-sqrt(6/(fan_in+fan_out))), fans from the last two dims
};

typedef struct peri_init_list {
    int n, cap;
    peri_tensor *t;
    uint64_t rng[4];
    int oom;
} peri_init_list;

void peri_init_list_begin(peri_init_list *L, uint64_t seed);
// Adds and fills a tensor (name copied). rule NORMAL uses a (scale) and b (offset).
void peri_init_add(peri_init_list *L, const char *name, int n_dims, const int64_t *shape, int rule, float a, float b);
// Writes out_dir/model.safetensors (F32) and frees the list. Returns PERI_OK or an error.
int peri_init_list_write(peri_init_list *L, const char *out_dir);
void peri_init_list_free(peri_init_list *L);

#endif
