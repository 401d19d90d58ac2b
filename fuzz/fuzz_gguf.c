// libFuzzer target: peri_gguf_parse on arbitrary bytes; accepted tensors must lie in the buffer, and the
// getters must be safe on every key.
#include "formats/gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    peri_gguf g;
    if (peri_gguf_parse(&g, data, size, "fuzz") == 0) {
        for (int i = 0; i < g.n_tensors; i++) {
            const peri_tensor *t = &g.tensors[i];
            const uint8_t *p = t->data;
            if (p < data || p + t->nbytes > data + size) __builtin_trap();
            if (peri_gguf_find(&g, t->name) != t) __builtin_trap();
        }
        for (uint64_t i = 0; i < g.n_kv && i < 64; i++) {
            char key[256];
            uint64_t n = g.kv[i].key.len < 255 ? g.kv[i].key.len : 255;
            memcpy(key, g.kv[i].key.s, n);
            key[n] = 0;
            uint64_t u, cnt;
            int64_t s;
            double d;
            bool b;
            gguf_str str;
            int et;
            peri_gguf_get_u64(&g, key, &u);
            peri_gguf_get_i64(&g, key, &s);
            peri_gguf_get_f64(&g, key, &d);
            peri_gguf_get_bool(&g, key, &b);
            peri_gguf_get_str(&g, key, &str);
            if (peri_gguf_get_arr(&g, key, &et, &cnt) && cnt) {
                peri_gguf_arr_str(&g, key, cnt - 1, &str);
                peri_gguf_arr_f64(&g, key, cnt - 1, &d);
                peri_gguf_arr_i64(&g, key, cnt - 1, &s);
            }
        }
        peri_gguf_close(&g);
    }
    return 0;
}
