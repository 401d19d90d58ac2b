// Internals shared by the chat template renderer's parser (jinja_parse.c) and evaluator (chat_template.c):
// tokens, syntax tree, and the render context with its capped arena.
#ifndef PERI_TOKENIZERS_JINJA_INTERNAL_H
#define PERI_TOKENIZERS_JINJA_INTERNAL_H

#include "tokenizers/chat_template.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    JT_TEXT, JT_NUM, JT_STR, JT_IDENT, JT_EQUALS, JT_LPAREN, JT_RPAREN, JT_OPEN_STMT, JT_CLOSE_STMT,
    JT_OPEN_EXPR, JT_CLOSE_EXPR, JT_LBRACKET, JT_RBRACKET, JT_LBRACE, JT_RBRACE, JT_COMMA, JT_DOT,
    JT_COLON, JT_PIPE, JT_ADD, JT_MUL, JT_POW, JT_CMP, JT_UNARY, JT_COMMENT,
};

typedef struct {
    int type;
    const char *s;     // text, identifier, number, or unescaped string (arena)
    size_t n;
    uint32_t pos;      // byte offset in the original template
} jn_token;

enum {
    JN_STR, JN_INT, JN_FLOAT, JN_ARRAY, JN_TUPLE, JN_DICT, JN_IDENT, JN_CALL, JN_MEMBER, JN_SLICE,
    JN_UNARY, JN_BINARY, JN_FILTER, JN_TEST, JN_SELECT, JN_TERNARY, JN_KWARG,
    JN_OUTPUT, JN_IF, JN_FOR, JN_SET, JN_MACRO, JN_BREAK, JN_CONTINUE,
};

enum {
    JOP_ADD, JOP_SUB, JOP_CONCAT, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW, JOP_EQ, JOP_NE,
    JOP_LT, JOP_GT, JOP_LE, JOP_GE, JOP_IN, JOP_NOTIN, JOP_AND, JOP_OR, JOP_NOT, JOP_NEG, JOP_POS,
};

// One node type for all: which fields mean what depends on kind (see the parser).
//   STR s,n | INT i (flag: the literal -0) | FLOAT f | ARRAY/TUPLE list | DICT list=keys list2=values | IDENT s,n
//   CALL a=callee list=args | MEMBER a=object b=property flag=computed | SLICE a:b:c3
//   UNARY op a | BINARY op a b | FILTER a=operand s,n=name flag=called list=args | TEST a s,n flag=negate
//   SELECT a=test b=value | TERNARY a=test b=then c3=else | KWARG s,n=name a=value | OUTPUT a
//   IF a=test list=body list2=else | FOR a=target b=iterable list=body list2=else
//   SET a=target b=value, or flag=block with list=body | MACRO s,n=name list=body list2=params
typedef struct jn_node jn_node;
struct jn_node {
    uint8_t kind, op;
    bool flag;
    uint32_t pos;
    const char *s;
    size_t n;
    int64_t i;
    double f;
    jn_node *a, *b, *c3;
    jn_node **list, **list2;
    size_t nlist, nlist2;
};

typedef struct jn_block {
    struct jn_block *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
} jn_block;

typedef struct jn_ctx {
    const char *tmpl;
    size_t tmpl_len;
    uint32_t eof_pos;
    uint32_t cur_pos;          // node being evaluated, for messages of deep helpers
    int status;                // first failure (0 while none)
    jn_block *blocks;
    size_t mem_used, mem_limit;
    uint64_t steps, iterations;
    uint64_t mutations;        // macro calls and in-place changes: arena marks may not release across them
    int depth, call_depth;
} jn_ctx;

void *jn_alloc(jn_ctx *c, size_t n);
char *jn_strdup(jn_ctx *c, const char *s, size_t n);
void jn_line_col(const jn_ctx *c, uint32_t pos, int *line, int *col);
int jn_fail(jn_ctx *c, int status, uint32_t pos, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
// Byte length of the JavaScript whitespace character at s[i] (0 if none) / ending at s[end].
size_t jn_ws_at(const char *s, size_t n, size_t i);
size_t jn_ws_before(const char *s, size_t end);
// JavaScript's per-character case mappings, sorted by code point (jinja_case.c, generated).
typedef struct {
    uint32_t cp;
    const char *to;   // UTF-8, one or more characters
} jn_case_map;
extern const jn_case_map jn_upper[], jn_lower[];
extern const size_t jn_upper_n, jn_lower_n;

int jn_parse(jn_ctx *c, const char *tmpl, size_t len, jn_node ***body, size_t *n_body);

#endif
