// libFuzzer target: peri_safetensors_parse on arbitrary bytes; every accepted tensor must lie in the buffer.
#include "formats/safetensors.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    peri_safetensors st;
    if (peri_safetensors_parse(&st, data, size, "fuzz") == 0) {
        for (int i = 0; i < st.n_tensors; i++) {
            const peri_tensor *t = &st.tensors[i];
            const uint8_t *p = t->data;
            if (p < data || p + t->nbytes > data + size) __builtin_trap();
            if (peri_safetensors_find(&st, t->name) != t) __builtin_trap();
            volatile uint8_t sink = 0;
            if (t->nbytes) sink ^= p[0] ^ p[t->nbytes - 1];
            (void)sink;
        }
        peri_safetensors_close(&st);
    }
    return 0;
}
