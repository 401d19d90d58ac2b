// A small strict JSON parser (RFC 8259) into a tree, and helpers to read config files.
// Limits keep hostile input bounded: nesting depth, total size (the caller's buffer), and every error
// names the line and column.
#ifndef PERI_FORMATS_JSON_H
#define PERI_FORMATS_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value json_value;
struct json_value {
    json_type type;
    bool boolean;
    double number;
    bool is_integer;      // the literal had no fraction or exponent and fits in int64
    int64_t integer;
    char *str;            // JSON_STRING: UTF-8, NUL-terminated (may contain NUL: use len)
    size_t len;           // string length in bytes; number of items/members for arrays/objects
    json_value *items;    // JSON_ARRAY: len items; JSON_OBJECT: len values (keys in `keys`)
    char **keys;          // JSON_OBJECT: len keys (NUL-terminated; duplicates: the last one wins in get)
    uint32_t *index;      // private: hash index of keys, built at parse time for objects over 32 members
};

// Parses text[0..len). On failure returns NULL and sets peri_last_error() to
// "<what> at line L, column C" prefixed with `where` (e.g. a file name).
// The whole tree lives in one arena owned by the root: nodes are read-only and only the root that
// json_parse returned may be passed to json_free.
json_value *json_parse(const char *text, size_t len, const char *where);
void json_free(json_value *v);

// Object member by key, or NULL (also when obj is NULL or not an object).
const json_value *json_get(const json_value *obj, const char *key);
// Typed getters with defaults: the default is returned when the member is missing or JSON null.
// They return false (and set an error naming the key) when the member exists with the wrong type.
bool json_get_int(const json_value *obj, const char *key, int64_t def, int64_t *out);
bool json_get_num(const json_value *obj, const char *key, double def, double *out);
bool json_get_bool(const json_value *obj, const char *key, bool def, bool *out);
// *out points into the tree (or is def); NULL allowed as def.
bool json_get_str(const json_value *obj, const char *key, const char *def, const char **out);

// Appends s as a JSON string literal (with quotes and escapes) to buf; returns bytes it would need.
// snprintf-style: writes at most size bytes at buf (NUL-terminated when size > 0) and returns the literal's
// length without the NUL, so `n >= size` means truncation. Invalid UTF-8 bytes are written as \ufffd.
size_t json_escape(char *buf, size_t size, const char *s, size_t len);

#endif
