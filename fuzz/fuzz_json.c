// libFuzzer target: json_parse on arbitrary bytes, then walks the tree and looks keys up.
#include "formats/json.h"

#include <stdint.h>
#include <string.h>

static size_t walk(const json_value *v, int depth) {
    size_t n = 1;
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++) {
            n += walk(&v->items[i], depth + 1);
            // Keys with an embedded NUL may look up another member, so only the call's safety is checked.
            if (v->type == JSON_OBJECT) (void)json_get(v, v->keys[i]);
        }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_value *v = json_parse((const char *)data, size, "fuzz");
    if (v) {
        walk(v, 0);
        int64_t i;
        double d;
        bool b;
        const char *s;
        json_get_int(v, "a", 0, &i);
        json_get_num(v, "a", 0, &d);
        json_get_bool(v, "a", false, &b);
        json_get_str(v, "a", NULL, &s);
        if (v->type == JSON_STRING) {
            char buf[64];
            size_t n = json_escape(buf, sizeof buf, v->str, v->len);
            (void)n;
        }
        json_free(v);
    }
    return 0;
}
