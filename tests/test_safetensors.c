// Tests of the safetensors reader and writer: round trips, malformed headers built in memory, and
// byte-identical rewriting of files made by the safetensors library (from ../shared).
#include "core/error.h"
#include "formats/safetensors.h"
#include "test.h"

#include <stdint.h>
#include <unistd.h>

// A file image: 8-byte length, header text, then `data_len` bytes of data (a counting pattern).
static unsigned char *image(const char *header, size_t data_len, size_t *size) {
    size_t n = strlen(header);
    *size = 8 + n + data_len;
    unsigned char *b = malloc(*size + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    for (size_t i = 0; i < data_len; i++) b[8 + n + i] = (unsigned char)i;
    return b;
}

static int parse_header(const char *header, size_t data_len, peri_safetensors *st) {
    size_t size;
    unsigned char *b = image(header, data_len, &size);
    int rc = peri_safetensors_parse(st, b, size, "mem.safetensors");
    if (rc == PERI_OK) peri_safetensors_close(st);   // data points into b: check before freeing
    free(b);
    return rc;
}

static void expect_fail(const char *header, size_t data_len, const char *needle) {
    peri_safetensors st;
    int rc = parse_header(header, data_len, &st);
    CHECKF(rc != PERI_OK, "accepted: %s", header);
    if (rc != PERI_OK && needle)
        CHECKF(strstr(peri_last_error(), needle) != NULL, "header %s: error '%s' lacks '%s'", header, peri_last_error(), needle);
    if (rc != PERI_OK) CHECKF(strstr(peri_last_error(), "mem.safetensors") != NULL, "no file name in '%s'", peri_last_error());
}

static void test_parse_valid(void) {
    const char *h = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                    "\"a\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[24,26]},"
                    "\"z\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[26,26]},"
                    "\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"}}";
    size_t size;
    unsigned char *b = image(h, 26, &size);
    peri_safetensors st;
    int rc = peri_safetensors_parse(&st, b, size, "mem");
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc == PERI_OK) {
        CHECK(st.n_tensors == 3 && st.n_meta == 2);
        const peri_tensor *t = peri_safetensors_find(&st, "b");
        CHECK(t && t->type == PERI_TYPE_F32 && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->nbytes == 24);
        CHECK(t && t->data == b + 8 + strlen(h));
        t = peri_safetensors_find(&st, "a");
        CHECK(t && t->type == PERI_TYPE_BF16 && t->n_dims == 0 && peri_tensor_nelem(t) == 1 && t->nbytes == 2);
        t = peri_safetensors_find(&st, "z");
        CHECK(t && t->type == PERI_TYPE_U8 && t->nbytes == 0 && peri_tensor_nelem(t) == 0);
        CHECK(peri_safetensors_find(&st, "c") == NULL && peri_safetensors_find(&st, "__metadata__") == NULL);
        CHECK(strcmp(st.meta_keys[0], "format") == 0 && strcmp(st.meta_values[0], "pt") == 0);
        CHECK(strcmp(st.meta_keys[1], "k") == 0 && strcmp(st.meta_values[1], "v") == 0);
        peri_safetensors_close(&st);
    }
    free(b);

    // Every dtype the fixtures and HF checkpoints use maps to its peri type.
    static const struct { const char *name; int type; int size; } dt[] = {
        {"F32", PERI_TYPE_F32, 4}, {"F16", PERI_TYPE_F16, 2}, {"BF16", PERI_TYPE_BF16, 2}, {"I32", PERI_TYPE_I32, 4},
        {"U8", PERI_TYPE_U8, 1}, {"BOOL", PERI_TYPE_BOOL, 1}, {"F64", PERI_TYPE_F64, 8}, {"I64", PERI_TYPE_I64, 8},
        {"I8", PERI_TYPE_I8, 1}, {"I16", PERI_TYPE_I16, 2},
    };
    for (size_t i = 0; i < sizeof dt / sizeof dt[0]; i++) {
        char hdr[200];
        snprintf(hdr, sizeof hdr, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%d]}}", dt[i].name, 3 * dt[i].size);
        b = image(hdr, (size_t)(3 * dt[i].size), &size);
        rc = peri_safetensors_parse(&st, b, size, "mem");
        CHECKF(rc == PERI_OK && st.tensors[0].type == dt[i].type, "%s", dt[i].name);
        if (rc == PERI_OK) peri_safetensors_close(&st);
        free(b);
    }
    // An empty header object is a file with no tensors.
    CHECK(parse_header("{}", 0, &st) == PERI_OK);
}

static void test_parse_malformed(void) {
    peri_safetensors st;
    unsigned char tiny[7] = {0};
    CHECK(peri_safetensors_parse(&st, tiny, sizeof tiny, "mem.safetensors") != PERI_OK);
    CHECK(peri_safetensors_parse(&st, tiny, 0, "mem.safetensors") != PERI_OK);
    // Header length: 1, beyond the file, beyond 100 MB.
    unsigned char buf[64] = {1, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    CHECK(peri_safetensors_parse(&st, buf, 10, "mem.safetensors") != PERI_OK);
    buf[0] = 3;
    CHECK(peri_safetensors_parse(&st, buf, 10, "mem.safetensors") != PERI_OK);
    memset(buf, 0, 8);
    buf[3] = 0x10;   // 256 MB
    CHECK(peri_safetensors_parse(&st, buf, sizeof buf, "mem.safetensors") != PERI_OK);
    memset(buf, 0xFF, 8);
    CHECK(peri_safetensors_parse(&st, buf, sizeof buf, "mem.safetensors") != PERI_OK);

    expect_fail("{\"a\":", 0, "line 1");
    expect_fail("[1, 2]", 0, "not a JSON object");
    expect_fail("{\"a\":1}", 0, "'a'");
    expect_fail("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "shape");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, "shape");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "end before");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3, "past the data");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "size");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "size");
    // shape products that overflow 64 bits must not wrap around to the byte count.
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 0, "size");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 0, "size");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, "size");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "dimensions");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlap");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "twice");
    expect_fail("{\"__metadata__\":{\"a\":1}}", 0, "__metadata__");
    expect_fail("{\"__metadata__\":[\"a\"]}", 0, "__metadata__");
    expect_fail("{\"__metadata__\":{\"a\":null}}", 0, "__metadata__");

    // An unsupported dtype is named, with the tensor and the file.
    peri_safetensors s2;
    int rc = parse_header("{\"w.weight\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, &s2);
    CHECK(rc == PERI_E_UNSUPPORTED);
    CHECKF(strstr(peri_last_error(), "F8_E4M3") && strstr(peri_last_error(), "w.weight") &&
           strstr(peri_last_error(), "mem.safetensors"), "%s", peri_last_error());
}

static char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/peri_test_st_%d_%s", dir, (int)getpid(), name);
    return p;
}

static void test_write_roundtrip(void) {
    float f[6] = {1, -2, 3.5f, 0, 1e-30f, 7};
    int32_t ids[3] = {-1, 0, 2147483647};
    unsigned char bools[2] = {1, 0};
    uint16_t h[4] = {0x3c00, 0xc000, 0x7bff, 1};
    uint8_t u[5] = {0, 1, 2, 254, 255};
    float scalar = 42;
    peri_tensor ts[6] = {
        {.name = "z.ids", .type = PERI_TYPE_I32, .n_dims = 1, .shape = {3}, .data = ids, .nbytes = sizeof ids},
        {.name = "a.mask", .type = PERI_TYPE_BOOL, .n_dims = 2, .shape = {1, 2}, .data = bools, .nbytes = 2},
        {.name = "m.w", .type = PERI_TYPE_F32, .n_dims = 2, .shape = {2, 3}, .data = f, .nbytes = sizeof f},
        {.name = "b.half", .type = PERI_TYPE_BF16, .n_dims = 1, .shape = {4}, .data = h, .nbytes = sizeof h},
        {.name = "c.bytes \"q\"\n", .type = PERI_TYPE_U8, .n_dims = 1, .shape = {5}, .data = u, .nbytes = 5},
        {.name = "s", .type = PERI_TYPE_F32, .n_dims = 0, .data = &scalar, .nbytes = 4},
    };
    const char *meta[] = {"format", "pt", "note", "ünïcode \"quoted\""};
    const char *path = tmp_path("rt.safetensors");
    int rc = peri_safetensors_write(path, ts, 6, meta, 2);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    peri_safetensors st;
    rc = peri_safetensors_open(&st, path, true);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc == PERI_OK) {
        CHECK(st.n_tensors == 6 && st.n_meta == 2);
        for (int i = 0; i < 6; i++) {
            const peri_tensor *t = peri_safetensors_find(&st, ts[i].name);
            CHECKF(t && t->type == ts[i].type && t->n_dims == ts[i].n_dims && t->nbytes == ts[i].nbytes &&
                   memcmp(t->data, ts[i].data, ts[i].nbytes) == 0 &&
                   memcmp(t->shape, ts[i].shape, sizeof t->shape[0] * (size_t)ts[i].n_dims) == 0, "%s", ts[i].name);
        }
        // The crate's order: larger dtype rank first (F32 > I32 > BF16 > U8 > BOOL), then by name.
        const char *order[] = {"m.w", "s", "z.ids", "b.half", "c.bytes \"q\"\n", "a.mask"};
        for (int i = 0; i < 6; i++) CHECKF(strcmp(st.tensors[i].name, order[i]) == 0, "position %d: %s", i, st.tensors[i].name);
        // Data section 8-aligned, tensors back to back.
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | st.file.data[i];
        CHECK(hl % 8 == 0);
        CHECK((const unsigned char *)st.tensors[0].data == st.file.data + 8 + hl);
        CHECK(st.file.size == 8 + hl + 24 + 4 + 12 + 8 + 5 + 2);
        CHECK(strcmp(st.meta_keys[1], "note") == 0 && strcmp(st.meta_values[1], meta[3]) == 0);
        peri_safetensors_close(&st);
    }
    // Reading without mmap gives the same.
    rc = peri_safetensors_open(&st, path, false);
    CHECK(rc == PERI_OK && st.n_tensors == 6 && !st.file.mapped);
    if (rc == PERI_OK) peri_safetensors_close(&st);
    remove(path);

    // Writer refuses what it cannot represent.
    peri_tensor bad = {.name = "q", .type = PERI_TYPE_Q8_0, .n_dims = 1, .shape = {32}, .data = f, .nbytes = 34};
    CHECK(peri_safetensors_write(path, &bad, 1, NULL, 0) == PERI_E_UNSUPPORTED);
    bad = (peri_tensor){.name = "w", .type = PERI_TYPE_F32, .n_dims = 1, .shape = {3}, .data = f, .nbytes = 8};
    CHECK(peri_safetensors_write(path, &bad, 1, NULL, 0) == PERI_E_ARG);
    peri_tensor dup[2] = {ts[2], ts[2]};
    CHECK(peri_safetensors_write(path, dup, 2, NULL, 0) == PERI_E_ARG);
    CHECK(access(path, F_OK) != 0);
    CHECK(peri_safetensors_open(&st, tmp_path("missing.safetensors"), true) == PERI_E_IO);
}

// Byte vectors from the safetensors crate's own tests (safetensors/src/tensor.rs: test_serialization,
// test_empty, test_serialization_forced_alignement): our writer must produce exactly these.
static void check_file_bytes(const char *path, const unsigned char *want, size_t n, const char *what) {
    peri_mapfile f;
    int rc = peri_mapfile_open(&f, path, false);
    CHECK(rc == PERI_OK);
    if (rc) return;
    CHECKF(f.size == n && memcmp(f.data, want, n) == 0, "%s: %zu bytes, want %zu", what, f.size, n);
    peri_mapfile_close(&f);
}

static void test_crate_vectors(void) {
    const char *path = tmp_path("crate.safetensors");
    float data[6] = {0, 1, 2, 3, 4, 5};
    static const unsigned char ser[] = {
        64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
        34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116,
        97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
        0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    peri_tensor t = {.name = "attn.0", .type = PERI_TYPE_F32, .n_dims = 3, .shape = {1, 2, 3}, .data = data, .nbytes = 24};
    CHECK(peri_safetensors_write(path, &t, 1, NULL, 0) == PERI_OK);
    check_file_bytes(path, ser, sizeof ser, "test_serialization");

    static const unsigned char aligned[] = {
        72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34,
        70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97,
        116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
        32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    t = (peri_tensor){.name = "attn0", .type = PERI_TYPE_F32, .n_dims = 4, .shape = {1, 1, 2, 3}, .data = data, .nbytes = 24};
    CHECK(peri_safetensors_write(path, &t, 1, NULL, 0) == PERI_OK);
    check_file_bytes(path, aligned, sizeof aligned, "test_serialization_forced_alignement");

    static const unsigned char empty[] = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
    CHECK(peri_safetensors_write(path, NULL, 0, NULL, 0) == PERI_OK);
    check_file_bytes(path, empty, sizeof empty, "test_empty");
    static const unsigned char empty_meta[] = {
        40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95, 95, 34, 58, 123, 34, 102,
        114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112, 116, 34, 125, 125, 32, 32, 32, 32, 32};
    const char *meta[] = {"framework", "pt"};
    CHECK(peri_safetensors_write(path, NULL, 0, meta, 1) == PERI_OK);
    check_file_bytes(path, empty_meta, sizeof empty_meta, "test_empty with metadata");
    remove(path);
}

// Fixture files: rewriting their tensors and metadata gives the same tensors back; the file made by the
// safetensors crate itself (__metadata__ first, dtype-rank order) comes back byte for byte.
static void test_rewrite_fixture(const char *shared, const char *rel, bool same_bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/fixtures/%s", shared, rel);
    peri_safetensors st, back;
    if (access(path, R_OK) != 0) {
        printf("skip: %s absent\n", path);
        return;
    }
    int rc = peri_safetensors_open(&st, path, true);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc) return;
    const char **meta = malloc(sizeof(char *) * 2 * (size_t)(st.n_meta + 1));
    for (int i = 0; i < st.n_meta; i++) {
        meta[2 * i] = st.meta_keys[i];
        meta[2 * i + 1] = st.meta_values[i];
    }
    const char *out = tmp_path("rewrite.safetensors");
    rc = peri_safetensors_write(out, st.tensors, st.n_tensors, meta, st.n_meta);
    CHECKF(rc == PERI_OK, "%s", peri_last_error());
    if (rc == PERI_OK && peri_safetensors_open(&back, out, true) == PERI_OK) {
        CHECK(back.n_tensors == st.n_tensors && back.n_meta == st.n_meta);
        int bad = 0;
        for (int i = 0; i < st.n_tensors; i++) {
            const peri_tensor *a = &st.tensors[i], *b = peri_safetensors_find(&back, a->name);
            if (!b || b->type != a->type || b->n_dims != a->n_dims || b->nbytes != a->nbytes ||
                memcmp(a->shape, b->shape, sizeof a->shape) != 0 || memcmp(a->data, b->data, a->nbytes) != 0)
                bad++;
        }
        CHECKF(bad == 0, "%s: %d tensors differ after rewriting", rel, bad);
        if (same_bytes)
            CHECKF(back.file.size == st.file.size && memcmp(back.file.data, st.file.data, st.file.size) == 0,
                   "%s rewritten differs", rel);
        peri_safetensors_close(&back);
    }
    remove(out);
    free(meta);
    peri_safetensors_close(&st);
}

int main(void) {
    test_parse_valid();
    test_parse_malformed();
    test_write_roundtrip();
    test_crate_vectors();
    const char *shared = test_shared_dir();
    if (shared) {
        test_rewrite_fixture(shared, "pldr/pldr-tiny-identity/model.safetensors", true);   // F32 + BOOL
        test_rewrite_fixture(shared, "plm/plm-tiny/model.safetensors", false);
        test_rewrite_fixture(shared, "plm/plm-tiny/model-bf16.safetensors", false);
        test_rewrite_fixture(shared, "plm/plm-tiny/expected.safetensors", false);        // F32 + I32
        test_rewrite_fixture(shared, "plm/plm-qwen-vocab/expected.safetensors", false);  // F32 + I32 + U8
    }
    return TEST_END();
}
