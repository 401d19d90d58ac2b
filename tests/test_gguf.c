// Tests of the GGUF reader and writer: round trips of every value type (nested arrays included) and of
// quantized tensors, malformed files built in memory, and llama.cpp-made files from ../shared rewritten
// byte for byte.
#include "core/error.h"
#include "formats/gguf.h"
#include "test.h"

#include <dirent.h>
#include <stdint.h>
#include <unistd.h>

static char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/peri_test_gguf_%d_%s", dir, (int)getpid(), name);
    return p;
}

// ---- a little byte builder for hand-made files ----

typedef struct {
    unsigned char b[4096];
    size_t n;
} bytes;

static void put(bytes *b, const void *p, size_t n) {
    memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void u64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void str(bytes *b, const char *s) {
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void header(bytes *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b->n = 0;
    put(b, "GGUF", 4);
    u32(b, version);
    u64(b, n_tensors);
    u64(b, n_kv);
}
static void tensor_info(bytes *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    str(b, name);
    u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) u64(b, ne[i]);
    u32(b, type);
    u64(b, off);
}
static void pad_to(bytes *b, size_t align) {
    while (b->n % align) b->b[b->n++] = 0;
}

static int parse_bytes(const bytes *b, peri_gguf *g) { return peri_gguf_parse(g, b->b, b->n, "mem.gguf"); }

static void expect_fail(const bytes *b, const char *needle, int line) {
    peri_gguf g;
    int rc = parse_bytes(b, &g);
    if (rc == PERI_OK) peri_gguf_close(&g);
    CHECKF(rc != PERI_OK, "line %d: accepted", line);
    if (rc != PERI_OK && needle)
        CHECKF(strstr(peri_last_error(), needle) != NULL, "line %d: error '%s' lacks '%s'", line, peri_last_error(), needle);
    if (rc != PERI_OK) CHECKF(strstr(peri_last_error(), "mem.gguf") != NULL, "line %d: no file name", line);
}
#define EXPECT_FAIL(b, needle) expect_fail(b, needle, __LINE__)

static void test_malformed(void) {
    bytes b;
    peri_gguf g;
    uint64_t ne32[1] = {32}, ne64[1] = {64};

    // A minimal valid file: one key, one f32 tensor of 32 values.
    header(&b, 3, 1, 1);
    str(&b, "general.architecture");
    u32(&b, GGUF_STRING);
    str(&b, "plm");
    tensor_info(&b, "w", 1, ne32, PERI_TYPE_F32, 0);
    pad_to(&b, 32);
    size_t data_at = b.n;
    for (int i = 0; i < 32; i++) {
        float f = (float)i;
        put(&b, &f, 4);
    }
    int rc = parse_bytes(&b, &g);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc == PERI_OK) {
        gguf_str s;
        CHECK(g.version == 3 && g.n_kv == 1 && g.n_tensors == 1 && g.data_offset == data_at && g.alignment == 32);
        CHECK(peri_gguf_get_str(&g, "general.architecture", &s) && s.len == 3 && memcmp(s.s, "plm", 3) == 0);
        CHECK(g.tensors[0].data == b.b + data_at && g.tensors[0].nbytes == 128 && g.tensors[0].shape[0] == 32);
        peri_gguf_close(&g);
    }
    // Every truncation of it fails cleanly.
    bytes t = b;
    int accepted = 0;
    for (size_t n = 0; n < b.n; n++) {
        t.n = n;
        if (parse_bytes(&t, &g) == PERI_OK) {
            accepted++;
            peri_gguf_close(&g);
        }
    }
    CHECKF(accepted == 0, "%d truncations accepted", accepted);
    // Version 2 reads the same.
    t = b;
    t.b[4] = 2;
    rc = parse_bytes(&t, &g);
    CHECK(rc == PERI_OK && g.version == 2);
    if (rc == PERI_OK) peri_gguf_close(&g);

    t = b;
    t.b[0] = 'X';
    EXPECT_FAIL(&t, "not a GGUF");
    t = b;
    t.b[4] = 1;
    EXPECT_FAIL(&t, "version 1");
    t = b;
    memcpy(t.b + 4, "\0\0\0\3", 4);
    EXPECT_FAIL(&t, "big-endian");
    t = b;
    t.b[4] = 4;
    EXPECT_FAIL(&t, "version 4");

    // Counts that the file cannot hold are refused before allocating.
    header(&b, 3, 0, UINT64_MAX);
    EXPECT_FAIL(&b, "key-values");
    header(&b, 3, (uint64_t)1 << 40, 0);
    EXPECT_FAIL(&b, "tensors");
    header(&b, 3, 0, 1);
    u64(&b, UINT64_MAX);   // key length
    EXPECT_FAIL(&b, "key-value");
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, GGUF_STRING);
    u64(&b, (uint64_t)1 << 62);
    EXPECT_FAIL(&b, "truncated");
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, GGUF_ARRAY);
    u32(&b, GGUF_UINT64);
    u64(&b, (uint64_t)1 << 61);
    EXPECT_FAIL(&b, "cannot fit");
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, GGUF_ARRAY);
    u32(&b, GGUF_STRING);
    u64(&b, 1000);
    EXPECT_FAIL(&b, "cannot fit");
    // Arrays nested 20 deep (each level one element).
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, GGUF_ARRAY);
    for (int i = 0; i < 20; i++) {
        u32(&b, GGUF_ARRAY);
        u64(&b, 1);
    }
    u32(&b, GGUF_UINT8);
    u64(&b, 0);
    EXPECT_FAIL(&b, "nested");
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, 13);
    EXPECT_FAIL(&b, "unknown value type");
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, GGUF_ARRAY);
    u32(&b, 99);
    u64(&b, 0);
    EXPECT_FAIL(&b, "element type");
    header(&b, 3, 0, 1);
    str(&b, "k");
    u32(&b, GGUF_BOOL);
    b.b[b.n++] = 2;
    EXPECT_FAIL(&b, "bool");
    header(&b, 3, 0, 2);
    str(&b, "k");
    u32(&b, GGUF_UINT8);
    b.b[b.n++] = 2;
    str(&b, "k");
    u32(&b, GGUF_UINT8);
    b.b[b.n++] = 3;
    EXPECT_FAIL(&b, "twice");

    // general.alignment: zero, not a power of two, or not an integer.
    const uint32_t bad_align[] = {0, 3, 48};
    for (int i = 0; i < 3; i++) {
        header(&b, 3, 0, 1);
        str(&b, "general.alignment");
        u32(&b, GGUF_UINT32);
        u32(&b, bad_align[i]);
        EXPECT_FAIL(&b, "alignment");
    }
    header(&b, 3, 0, 1);
    str(&b, "general.alignment");
    u32(&b, GGUF_STRING);
    str(&b, "32");
    EXPECT_FAIL(&b, "alignment");

    // Tensor infos.
    struct { uint32_t n_dims; uint64_t ne[5]; uint32_t type; uint64_t off; const char *needle; } bad[] = {
        {0, {32}, PERI_TYPE_F32, 0, "dimensions"},
        {5, {32, 1, 1, 1, 1}, PERI_TYPE_F32, 0, "dimensions"},
        {1, {0}, PERI_TYPE_F32, 0, "ne[0]"},
        {2, {32, 0}, PERI_TYPE_F32, 0, "ne[1]"},
        {1, {32}, 4, 0, "type"},
        {1, {32}, PERI_TYPE_BOOL, 0, "type"},
        {1, {32}, 99, 0, "type"},
        {1, {16}, PERI_TYPE_Q4_0, 0, "block size"},
        {1, {32}, PERI_TYPE_F32, 8, "alignment"},
        {1, {32}, PERI_TYPE_F32, 32, "past the end"},
        {1, {64}, PERI_TYPE_F32, 0, "file"},
        {2, {32, (uint64_t)1 << 62}, PERI_TYPE_F32, 0, "larger"},
        {4, {(uint64_t)1 << 32, 1 << 16, 1 << 16, 1 << 16}, PERI_TYPE_F32, 0, "larger"},
        {1, {UINT64_MAX}, PERI_TYPE_F32, 0, "ne[0]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        header(&b, 3, 1, 0);
        tensor_info(&b, "w", bad[i].n_dims, bad[i].ne, bad[i].type, bad[i].off);
        pad_to(&b, 32);
        for (int k = 0; k < 128; k++) b.b[b.n++] = 0;
        expect_fail(&b, bad[i].needle, (int)i);
    }
    // Two tensors sharing bytes, and two with the same name.
    header(&b, 3, 2, 0);
    tensor_info(&b, "a", 1, ne64, PERI_TYPE_F32, 0);
    tensor_info(&b, "b", 1, ne32, PERI_TYPE_F32, 128);
    pad_to(&b, 32);
    for (int k = 0; k < 256; k++) b.b[b.n++] = 0;
    EXPECT_FAIL(&b, "overlap");
    header(&b, 3, 2, 0);
    tensor_info(&b, "a", 1, ne32, PERI_TYPE_F32, 0);
    tensor_info(&b, "a", 1, ne32, PERI_TYPE_F32, 128);
    pad_to(&b, 32);
    for (int k = 0; k < 256; k++) b.b[b.n++] = 0;
    EXPECT_FAIL(&b, "twice");
    // A file with no tensors may end right after its key-values (no padding).
    header(&b, 3, 0, 1);
    str(&b, "a");
    u32(&b, GGUF_INT8);
    b.b[b.n++] = 0xFF;
    rc = parse_bytes(&b, &g);
    int64_t i64;
    CHECK(rc == PERI_OK && peri_gguf_get_i64(&g, "a", &i64) && i64 == -1);
    if (rc == PERI_OK) peri_gguf_close(&g);
}

// ---- writer round trip ----

static void test_roundtrip(void) {
    peri_gguf_writer *w = peri_gguf_writer_new();
    CHECK(w != NULL);
    // Scalars of every type: the typed setters plus set_kv_from for the others.
    CHECK(peri_gguf_set_u32(w, "u32", 4000000000u) == PERI_OK);
    CHECK(peri_gguf_set_i32(w, "i32", -7) == PERI_OK);
    CHECK(peri_gguf_set_u64(w, "u64", UINT64_MAX) == PERI_OK);
    CHECK(peri_gguf_set_f32(w, "f32", 0.1f) == PERI_OK);
    CHECK(peri_gguf_set_bool(w, "bool", true) == PERI_OK);
    CHECK(peri_gguf_set_str(w, "str", "héllo") == PERI_OK);
    CHECK(peri_gguf_set_str(w, "replaced", "old") == PERI_OK);
    CHECK(peri_gguf_set_str(w, "replaced", "new") == PERI_OK);
    gguf_kv kv;
    kv.key = (gguf_str){"u8", 2};
    kv.value = (gguf_value){.type = GGUF_UINT8, .v.u64 = 255};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    kv.key = (gguf_str){"i8", 2};
    kv.value = (gguf_value){.type = GGUF_INT8, .v.i64 = -128};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    kv.key = (gguf_str){"u16", 3};
    kv.value = (gguf_value){.type = GGUF_UINT16, .v.u64 = 65535};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    kv.key = (gguf_str){"i16", 3};
    kv.value = (gguf_value){.type = GGUF_INT16, .v.i64 = -32768};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    kv.key = (gguf_str){"i64", 3};
    kv.value = (gguf_value){.type = GGUF_INT64, .v.i64 = INT64_MIN};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    kv.key = (gguf_str){"f64", 3};
    kv.value = (gguf_value){.type = GGUF_FLOAT64, .v.f64 = 1e-300};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    // Arrays: strings, every scalar type, and arrays nested two deep ([[1,2],[3]] and [["a"],[]]).
    const char *strs[] = {"a", "", "ü\xF0\x9F\x98\x80", "d e"};
    CHECK(peri_gguf_set_arr_str(w, "arr.str", strs, 4) == PERI_OK);
    float fl[3] = {1.5f, -2, 0};
    int32_t in[3] = {-1, 0, 2147483647};
    double db[2] = {1e300, -0.5};
    uint8_t bo[3] = {1, 0, 1};
    int8_t i8[2] = {-128, 127};
    uint64_t u64v[2] = {0, UINT64_MAX};
    CHECK(peri_gguf_set_arr_data(w, "arr.f32", GGUF_FLOAT32, fl, 3) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.i32", GGUF_INT32, in, 3) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.f64", GGUF_FLOAT64, db, 2) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.bool", GGUF_BOOL, bo, 3) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.i8", GGUF_INT8, i8, 2) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.u64", GGUF_UINT64, u64v, 2) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.empty", GGUF_UINT16, NULL, 0) == PERI_OK);
    CHECK(peri_gguf_set_arr_data(w, "arr.bad", GGUF_STRING, strs, 1) == PERI_E_ARG);
    int32_t n12[2] = {1, 2}, n3[1] = {3};
    gguf_value inner[2] = {
        {.type = GGUF_ARRAY, .v.arr = {.type = GGUF_INT32, .n = 2, .data = n12}},
        {.type = GGUF_ARRAY, .v.arr = {.type = GGUF_INT32, .n = 1, .data = n3}},
    };
    kv.key = (gguf_str){"arr.nested", 10};
    kv.value = (gguf_value){.type = GGUF_ARRAY, .v.arr = {.type = GGUF_ARRAY, .n = 2, .items = inner}};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);
    gguf_value sa = {.type = GGUF_STRING, .v.str = {"a", 1}};
    gguf_value inner2[2] = {
        {.type = GGUF_ARRAY, .v.arr = {.type = GGUF_STRING, .n = 1, .items = &sa}},
        {.type = GGUF_ARRAY, .v.arr = {.type = GGUF_STRING, .n = 0}},
    };
    kv.key = (gguf_str){"arr.nested_str", 14};
    kv.value = (gguf_value){.type = GGUF_ARRAY, .v.arr = {.type = GGUF_ARRAY, .n = 2, .items = inner2}};
    CHECK(peri_gguf_set_kv_from(w, &kv) == PERI_OK);

    // Tensors: float and quantized types (just bytes), 1 to 4 dimensions.
    unsigned char raw[4096];
    for (size_t i = 0; i < sizeof raw; i++) raw[i] = (unsigned char)(i * 131 + 7);
    struct { const char *name; int type; int n_dims; int64_t shape[4]; } ts[] = {
        {"tok.f32", PERI_TYPE_F32, 2, {3, 5}},
        {"a.f16", PERI_TYPE_F16, 1, {7}},
        {"b.bf16", PERI_TYPE_BF16, 3, {2, 1, 4}},
        {"c.q4_0", PERI_TYPE_Q4_0, 2, {2, 64}},
        {"d.q8_0", PERI_TYPE_Q8_0, 4, {1, 2, 1, 32}},
        {"e.q6_K", PERI_TYPE_Q6_K, 2, {3, 256}},
        {"f.q4_K", PERI_TYPE_Q4_K, 1, {512}},
        {"g.i32", PERI_TYPE_I32, 1, {3}},
    };
    const int nt = (int)(sizeof ts / sizeof ts[0]);
    size_t nb[8];
    for (int i = 0; i < nt; i++) {
        int64_t rows = 1;
        for (int d = 0; d < ts[i].n_dims - 1; d++) rows *= ts[i].shape[d];
        nb[i] = peri_row_size(ts[i].type, ts[i].shape[ts[i].n_dims - 1]) * (size_t)rows;
        CHECK(nb[i] > 0 && nb[i] <= sizeof raw);
        CHECKF(peri_gguf_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].shape, raw + i, nb[i]) == PERI_OK,
               "%s", peri_last_error());
    }
    int64_t bad_shape[2] = {2, 16};
    CHECK(peri_gguf_add_tensor(w, "bad", PERI_TYPE_Q4_0, 2, bad_shape, raw, 18 * 2) == PERI_E_ARG);
    CHECK(peri_gguf_add_tensor(w, "tok.f32", PERI_TYPE_F32, 1, bad_shape, raw, 8) == PERI_E_ARG);
    CHECK(peri_gguf_add_tensor(w, "nbytes", PERI_TYPE_F32, 1, bad_shape, raw, 7) == PERI_E_ARG);
    CHECK(peri_gguf_add_tensor(w, "a_name_that_is_far_too_long_for_ggml_which_allows_sixty_three_bytes", PERI_TYPE_F32,
                               1, bad_shape, raw, 8) == PERI_E_ARG);

    const char *path = tmp_path("rt.gguf");
    CHECKF(peri_gguf_write(w, path) == PERI_OK, "%s", peri_last_error());
    peri_gguf_writer_free(w);

    peri_gguf g;
    int rc = peri_gguf_open(&g, path, true);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc != PERI_OK) return;
    uint64_t u;
    int64_t i;
    double d;
    bool bv;
    gguf_str s;
    CHECK(g.version == 3 && g.n_tensors == nt && g.n_kv == 23);
    CHECK(peri_gguf_get_u64(&g, "u32", &u) && u == 4000000000u && peri_gguf_get(&g, "u32")->type == GGUF_UINT32);
    CHECK(peri_gguf_get_i64(&g, "i32", &i) && i == -7 && !peri_gguf_get_u64(&g, "i32", &u));
    CHECK(peri_gguf_get_u64(&g, "u64", &u) && u == UINT64_MAX && !peri_gguf_get_i64(&g, "u64", &i));
    CHECK(peri_gguf_get_f64(&g, "f32", &d) && d == (double)0.1f);
    CHECK(peri_gguf_get_bool(&g, "bool", &bv) && bv);
    CHECK(peri_gguf_get_str(&g, "str", &s) && s.len == strlen("héllo") && memcmp(s.s, "héllo", s.len) == 0);
    CHECK(peri_gguf_get_str(&g, "replaced", &s) && s.len == 3 && memcmp(s.s, "new", 3) == 0);
    CHECK(peri_gguf_get_u64(&g, "u8", &u) && u == 255 && peri_gguf_get(&g, "u8")->type == GGUF_UINT8);
    CHECK(peri_gguf_get_i64(&g, "i8", &i) && i == -128 && peri_gguf_get(&g, "i8")->type == GGUF_INT8);
    CHECK(peri_gguf_get_u64(&g, "u16", &u) && u == 65535 && peri_gguf_get(&g, "u16")->type == GGUF_UINT16);
    CHECK(peri_gguf_get_i64(&g, "i16", &i) && i == -32768 && peri_gguf_get(&g, "i16")->type == GGUF_INT16);
    CHECK(peri_gguf_get_i64(&g, "i64", &i) && i == INT64_MIN);
    CHECK(peri_gguf_get_f64(&g, "f64", &d) && d == 1e-300 && peri_gguf_get(&g, "f64")->type == GGUF_FLOAT64);
    CHECK(peri_gguf_get_f64(&g, "i8", &d) && d == -128);
    CHECK(!peri_gguf_get_str(&g, "u8", &s) && !peri_gguf_get_bool(&g, "u8", &bv) && !peri_gguf_get_u64(&g, "str", &u));
    CHECK(!peri_gguf_get_u64(&g, "missing", &u) && peri_gguf_get(&g, "missing") == NULL);

    int et;
    uint64_t n;
    CHECK(peri_gguf_get_arr(&g, "arr.str", &et, &n) && et == GGUF_STRING && n == 4);
    for (uint64_t k = 0; k < 4; k++)
        CHECK(peri_gguf_arr_str(&g, "arr.str", k, &s) && s.len == strlen(strs[k]) && memcmp(s.s, strs[k], s.len) == 0);
    CHECK(!peri_gguf_arr_str(&g, "arr.str", 4, &s) && !peri_gguf_arr_f64(&g, "arr.str", 0, &d));
    for (uint64_t k = 0; k < 3; k++) CHECK(peri_gguf_arr_f64(&g, "arr.f32", k, &d) && d == fl[k]);
    for (uint64_t k = 0; k < 3; k++) CHECK(peri_gguf_arr_i64(&g, "arr.i32", k, &i) && i == in[k]);
    CHECK(!peri_gguf_arr_i64(&g, "arr.f32", 0, &i));
    for (uint64_t k = 0; k < 2; k++) CHECK(peri_gguf_arr_f64(&g, "arr.f64", k, &d) && d == db[k]);
    for (uint64_t k = 0; k < 3; k++) CHECK(peri_gguf_arr_i64(&g, "arr.bool", k, &i) && i == bo[k]);
    for (uint64_t k = 0; k < 2; k++) CHECK(peri_gguf_arr_i64(&g, "arr.i8", k, &i) && i == i8[k]);
    CHECK(peri_gguf_arr_i64(&g, "arr.u64", 0, &i) && i == 0 && !peri_gguf_arr_i64(&g, "arr.u64", 1, &i));
    CHECK(peri_gguf_get_arr(&g, "arr.empty", &et, &n) && et == GGUF_UINT16 && n == 0);
    CHECK(!peri_gguf_arr_f64(&g, "arr.empty", 0, &d));
    const gguf_value *nv = peri_gguf_get(&g, "arr.nested");
    CHECK(nv && nv->type == GGUF_ARRAY && nv->v.arr.type == GGUF_ARRAY && nv->v.arr.n == 2);
    if (nv && nv->v.arr.n == 2) {
        const gguf_value *a0 = &nv->v.arr.items[0], *a1 = &nv->v.arr.items[1];
        CHECK(a0->v.arr.type == GGUF_INT32 && a0->v.arr.n == 2 && memcmp(a0->v.arr.data, n12, 8) == 0);
        CHECK(a1->v.arr.type == GGUF_INT32 && a1->v.arr.n == 1 && memcmp(a1->v.arr.data, n3, 4) == 0);
    }
    nv = peri_gguf_get(&g, "arr.nested_str");
    CHECK(nv && nv->v.arr.n == 2 && nv->v.arr.items[0].v.arr.n == 1 && nv->v.arr.items[1].v.arr.n == 0);
    if (nv && nv->v.arr.n == 2 && nv->v.arr.items[0].v.arr.n == 1)
        CHECK(nv->v.arr.items[0].v.arr.items[0].v.str.len == 1 && nv->v.arr.items[0].v.arr.items[0].v.str.s[0] == 'a');

    for (int k = 0; k < nt; k++) {
        const peri_tensor *t = peri_gguf_find(&g, ts[k].name);
        CHECKF(t && t->type == ts[k].type && t->n_dims == ts[k].n_dims && t->nbytes == nb[k] &&
               memcmp(t->shape, ts[k].shape, sizeof(int64_t) * (size_t)ts[k].n_dims) == 0 &&
               memcmp(t->data, raw + k, nb[k]) == 0, "%s", ts[k].name);
        CHECK(t && ((const unsigned char *)t->data - g.file.data - g.data_offset) % 32 == 0);
        CHECK(t == &g.tensors[k]);   // file order kept
    }
    CHECK(peri_gguf_find(&g, "nope") == NULL);

    // Copying everything through set_kv_from/add_tensor reproduces the file exactly.
    peri_gguf_writer *w2 = peri_gguf_writer_new();
    for (uint64_t k = 0; k < g.n_kv; k++) CHECK(peri_gguf_set_kv_from(w2, &g.kv[k]) == PERI_OK);
    for (int k = 0; k < g.n_tensors; k++) {
        const peri_tensor *t = &g.tensors[k];
        CHECK(peri_gguf_add_tensor(w2, t->name, t->type, t->n_dims, t->shape, t->data, t->nbytes) == PERI_OK);
    }
    const char *path2 = tmp_path("rt2.gguf");
    CHECK(peri_gguf_write(w2, path2) == PERI_OK);
    peri_gguf_writer_free(w2);
    peri_mapfile f;
    if (peri_mapfile_open(&f, path2, false) == PERI_OK) {
        CHECK(f.size == g.file.size && memcmp(f.data, g.file.data, f.size) == 0);
        peri_mapfile_close(&f);
    }
    peri_gguf_close(&g);
    remove(path2);

    // Custom alignment.
    w = peri_gguf_writer_new();
    CHECK(peri_gguf_set_u32(w, "general.alignment", 64) == PERI_OK);
    int64_t sh[1] = {3};
    CHECK(peri_gguf_add_tensor(w, "x", PERI_TYPE_F32, 1, sh, raw, 12) == PERI_OK);
    CHECK(peri_gguf_add_tensor(w, "y", PERI_TYPE_F32, 1, sh, raw + 12, 12) == PERI_OK);
    CHECK(peri_gguf_write(w, path) == PERI_OK);
    peri_gguf_writer_free(w);
    rc = peri_gguf_open(&g, path, false);
    CHECK(rc == PERI_OK && g.alignment == 64 && g.data_offset % 64 == 0);
    if (rc == PERI_OK) {
        CHECK((const unsigned char *)g.tensors[1].data - (const unsigned char *)g.tensors[0].data == 64);
        CHECK(memcmp(g.tensors[1].data, raw + 12, 12) == 0);
        peri_gguf_close(&g);
    }
    remove(path);

    // llama.cpp reads general.alignment as uint32 only, so the writer refuses other types and bad values.
    w = peri_gguf_writer_new();
    CHECK(peri_gguf_set_u64(w, "general.alignment", 64) == PERI_OK);
    CHECK(peri_gguf_write(w, path) == PERI_E_ARG);
    CHECK(peri_gguf_set_u32(w, "general.alignment", 24) == PERI_OK);
    CHECK(peri_gguf_write(w, path) == PERI_E_ARG);
    peri_gguf_writer_free(w);

    // Random byte edits of a valid file never crash the reader.
    w = peri_gguf_writer_new();
    peri_gguf_set_str(w, "general.architecture", "plm");
    peri_gguf_set_arr_str(w, "tokenizer.ggml.tokens", strs, 4);
    peri_gguf_set_arr_data(w, "arr.f32", GGUF_FLOAT32, fl, 3);
    kv.key = (gguf_str){"arr.nested", 10};
    kv.value = (gguf_value){.type = GGUF_ARRAY, .v.arr = {.type = GGUF_ARRAY, .n = 2, .items = inner2}};
    peri_gguf_set_kv_from(w, &kv);
    peri_gguf_add_tensor(w, ts[3].name, ts[3].type, ts[3].n_dims, ts[3].shape, raw, nb[3]);
    peri_gguf_add_tensor(w, ts[0].name, ts[0].type, ts[0].n_dims, ts[0].shape, raw, nb[0]);
    peri_gguf_write(w, path);
    peri_gguf_writer_free(w);
    if (peri_mapfile_open(&f, path, false) == PERI_OK) {
        unsigned char *buf = malloc(f.size);
        uint64_t seed = 99;
        int ok = 0;
        for (int it = 0; it < 20000; it++) {
            memcpy(buf, f.data, f.size);
            for (int e = 0; e < 1 + it % 3; e++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                // Edits mostly in the header part, where the structure is.
                size_t pos = (seed >> 33) % (it % 4 ? 200 : f.size);
                buf[pos] = (unsigned char)(seed >> 20);
            }
            if (peri_gguf_parse(&g, buf, f.size, "mut") == PERI_OK) {
                ok++;
                peri_gguf_close(&g);
            }
        }
        CHECK(ok > 0 && ok < 20000);
        free(buf);
        peri_mapfile_close(&f);
    }
    remove(path);
}

// Every .gguf fixture (written by llama.cpp's convert_hf_to_gguf.py / llama-quantize) opens, and
// rewriting it through the writer reproduces it byte for byte.
static int n_fixtures;
static void check_fixture(const char *path) {
    peri_gguf g;
    int rc = peri_gguf_open(&g, path, true);
    CHECKF(rc == PERI_OK, "%s: %s", path, peri_last_error());
    if (rc) return;
    n_fixtures++;
    gguf_str arch;
    CHECKF(peri_gguf_get_str(&g, "general.architecture", &arch) && g.n_tensors > 0, "%s", path);
    peri_gguf_writer *w = peri_gguf_writer_new();
    for (uint64_t k = 0; k < g.n_kv; k++) CHECK(peri_gguf_set_kv_from(w, &g.kv[k]) == PERI_OK);
    for (int k = 0; k < g.n_tensors; k++) {
        const peri_tensor *t = &g.tensors[k];
        CHECKF(peri_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->shape, t->data, t->nbytes) == PERI_OK, "%s",
               peri_last_error());
    }
    const char *out = tmp_path("fixture.gguf");
    CHECK(peri_gguf_write(w, out) == PERI_OK);
    peri_gguf_writer_free(w);
    peri_mapfile f;
    if (peri_mapfile_open(&f, out, true) == PERI_OK) {
        size_t diff = 0;
        while (diff < f.size && diff < g.file.size && f.data[diff] == g.file.data[diff]) diff++;
        CHECKF(f.size == g.file.size && diff == f.size, "%s: rewrite differs at byte %zu (sizes %zu, %zu)", path, diff,
               f.size, g.file.size);
        peri_mapfile_close(&f);
    }
    remove(out);
    peri_gguf_close(&g);
}

static void walk(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) walk(p);
        else if (strlen(e->d_name) > 5 && strcmp(e->d_name + strlen(e->d_name) - 5, ".gguf") == 0) check_fixture(p);
    }
    closedir(d);
}

int main(void) {
    test_malformed();
    test_roundtrip();
    const char *shared = test_shared_dir();
    if (shared) {
        char p[4096];
        snprintf(p, sizeof p, "%s/fixtures", shared);
        walk(p);
        printf("%d GGUF fixtures checked\n", n_fixtures);
    }
    return TEST_END();
}
