/* datasets/datasets_impl.h: private parts of datasets/: the tokenizer's tables and hash maps. */
#ifndef LQ_DATASETS_IMPL_H
#define LQ_DATASETS_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "datasets/datasets.h"

/* Open-addressed map from a byte string to an int32 (keys are not owned). */
typedef struct tok_strmap {
    uint32_t cap; /* power of two, or 0 */
    uint32_t n;
    const char **key;
    uint32_t *klen;
    int32_t *val;
} tok_strmap;

/* Open-addressed map from a pair of ids to (rank, merged id). */
typedef struct tok_pairmap {
    uint32_t cap, n;
    uint64_t *key; /* UINT64_MAX = empty */
    int32_t *rank, *merged;
} tok_pairmap;

typedef struct tok_added {
    char *content;
    uint32_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

typedef enum tok_behavior {
    TOK_REMOVED = 0,
    TOK_ISOLATED,
    TOK_MERGED_PREV,
    TOK_MERGED_NEXT,
    TOK_CONTIGUOUS,
} tok_behavior;

typedef enum tok_step_kind { TOK_STEP_SPLIT = 0, TOK_STEP_BYTELEVEL } tok_step_kind; /* Digits = a SPLIT */

typedef struct tok_step {
    tok_step_kind kind;
    pcre2_code *re;     /* SPLIT; BYTELEVEL with use_regex (the GPT-2 regex) */
    tok_behavior behavior;
    bool invert;
    bool add_prefix_space; /* BYTELEVEL */
} tok_step;

struct lq_tokenizer {
    char *name;
    int32_t n_ids;
    char **id_tok;       /* [n_ids] byte-level token string (owned) or NULL for a hole */
    char **id_raw;       /* [n_ids] the bytes the token decodes to (owned) */
    uint32_t *id_raw_len;
    uint8_t *id_special; /* [n_ids] 1 for special added tokens */
    tok_strmap vocab;    /* model vocab: byte-level token -> id (keys in id_tok) */
    tok_strmap added_map;/* added token content -> id */
    tok_pairmap merges;
    int32_t byte_id[256];   /* model id of each byte's byte-level character, -1 if none */
    char byte_chr[256][3];  /* each byte's byte-level character, UTF-8, NUL-terminated */
    int32_t unk_id;
    bool ignore_merges;
    bool byte_level;        /* a ByteLevel pre-tokenizer maps bytes to characters; else the model sees UTF-8 characters */
    int n_added;
    tok_added *added;
    uint8_t added_first[2][256]; /* [normalized][first byte]: some added token starts with it */
    int n_steps;
    tok_step *steps;
    int n_prefix, n_suffix;
    int32_t *prefix, *suffix; /* the post-processor's template around $A */
};

lq_status tok_strmap_put(tok_strmap *m, const char *key, uint32_t klen, int32_t val, int32_t *old);
int32_t tok_strmap_get(const tok_strmap *m, const char *key, uint32_t klen);
void tok_strmap_free(tok_strmap *m);
lq_status tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
bool tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
void tok_pairmap_free(tok_pairmap *m);
/* The byte-level (GPT-2) byte <-> character map: a byte's code point, and a code point's byte or -1. */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);
/* Compiles a pattern in UTF + UCP mode (no JIT); NULL with err set on failure. */
pcre2_code *tok_regex_compile(const char *pat, size_t len, bool literal, const char *name, const char *what,
                              lq_err *err);

/* Appends a pre-tokenizer step (takes s.re; frees it on failure). */
lq_status tok_add_step(lq_tokenizer *t, tok_step s, lq_err *err);
/* Fills id_raw / id_raw_len from id_tok and byte_chr / byte_id from the vocab (last step of loading). */
lq_status tok_build_decode(lq_tokenizer *t, lq_err *err);

#endif
