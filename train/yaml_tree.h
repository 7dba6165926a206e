/* train/yaml_tree.h: a small YAML document tree with source lines (built from libyaml's events),
 * dotted-path overrides (--set a.0.b=v), and a schema table that drives parsing, validation and
 * the YAML / JSON output of a config struct (the fine-tuning config, later the QAT config). */
#ifndef LQ_YAML_TREE_H
#define LQ_YAML_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "core/status.h"

#define LQ_YAML_MAX_BYTES ((int64_t)4 << 20) /* a config file */
#define LQ_YAML_MAX_DEPTH 32
#define LQ_YAML_MAX_NODES 65536
#define LQ_YAML_MAX_ENTRIES 4096 /* keys of one mapping (items of one list: twice that) */

typedef enum lq_ynode_kind { LQ_YNODE_SCALAR, LQ_YNODE_SEQ, LQ_YNODE_MAP } lq_ynode_kind;

typedef struct lq_ynode {
    lq_ynode_kind kind;
    char *src;              /* where it came from: a file name, or "--set k=v" for an override */
    int line;               /* 1-based; 0 = no line (an override) */
    char *str;              /* SCALAR: the text, NUL-terminated (a NUL inside is rejected) */
    bool plain;             /* SCALAR: unquoted; only a plain scalar can be YAML's null */
    struct lq_ynode **kids; /* SEQ: the items; MAP: key 0, value 0, key 1, value 1, ... */
    int n;                  /* SEQ: items; MAP: pairs */
    int cap;                /* slots in kids */
} lq_ynode;

/* Parses one YAML document (UTF-8 text of len bytes; src names it in messages). *root = NULL for
 * a stream without content (empty, only comments, or a lone "---"). Syntax errors read
 * "SRC:LINE: YAML syntax error: <libyaml's problem>" (with a hint for tabs); duplicate keys,
 * aliases, more than one document, non-scalar keys, and more than LQ_YAML_MAX_DEPTH levels,
 * LQ_YAML_MAX_NODES nodes or LQ_YAML_MAX_ENTRIES keys in a mapping are errors too (LQ_ERR_INPUT). */
lq_status lq_yaml_parse(const char *text, size_t len, const char *src, lq_ynode **root, lq_err *err);
void lq_ynode_free(lq_ynode *n);
/* "SRC:LINE", or "SRC" for a node without a line; buf of cap bytes is returned. */
const char *lq_ynode_where(const lq_ynode *n, char *buf, size_t cap);
/* NULL, or a plain scalar "", "~", "null", "Null", "NULL". */
bool lq_ynode_is_null(const lq_ynode *n);
/* The value of key in a mapping (and its key node), or NULL. */
const lq_ynode *lq_ynode_get(const lq_ynode *map, const char *key, const lq_ynode **key_node);

/* Applies an override "a.b.0.c=VALUE" to the tree whose root is a mapping: VALUE is parsed as a
 * YAML document (a scalar, [flow, list] or {flow: mapping}; empty = null); the dotted path walks
 * mappings by key and sequences by index (index == length appends); missing keys are added.
 * The new nodes' src is "--set a.b.0.c=VALUE" with line 0, so later errors name the override. */
lq_status lq_yaml_override(lq_ynode *root, const char *kv, lq_err *err);

/* Levenshtein distance of two strings (bytes). */
int lq_edit_distance(const char *a, const char *b);
/* The candidate closest to s if it is close enough to be a likely typo, else NULL. */
const char *lq_did_you_mean(const char *s, const char *const *cands, int n);

/* --- schema: one row per key of a config struct ------------------------------------------- */

typedef enum lq_ytype {
    LQ_YT_BOOL,   /* bool; true/false (YAML 1.1 yes/no/on/off too) */
    LQ_YT_INT,    /* signed integer, field of `size` 4 or 8 bytes, range [lo, hi] */
    LQ_YT_U64,    /* uint64_t, range [lo, hi] */
    LQ_YT_F64,    /* double, finite, range [lo, hi] */
    LQ_YT_STR,    /* char * (malloc'd); with choices: one of them, stored in its canonical spelling */
    LQ_YT_PATH,   /* char *, non-empty, leading ~ and ${VAR} / ${VAR:-default} expanded */
    LQ_YT_ENUM,   /* an int (size sizeof(int)) or bool (size 1) field holding a choice's value */
    LQ_YT_LIST,   /* an array of structs (elem_size bytes, at most max_n) at off, the count (int) at
                   * off2, each element a mapping read with the sub-schema `sub` */
    LQ_YT_MAP,    /* a nested struct at off read from a mapping with the sub-schema `sub` (absent or
                   * null: the sub-schema's defaults) */
    LQ_YT_CUSTOM, /* the callbacks in custom */
} lq_ytype;

typedef struct lq_ychoice {
    const char *name;
    int value; /* several names may share a value: the first is the canonical spelling */
} lq_ychoice;

#define LQ_YF_REQUIRED 1u /* must be given (LIST: with at least one entry) */
#define LQ_YF_LO_OPEN 2u  /* value > lo (else >= lo) */
#define LQ_YF_HI_OPEN 4u  /* value < hi (else <= hi) */
#define LQ_YF_POW2 8u     /* INT: a power of two */
#define LQ_YF_NOWRITE 16u /* an input-only alias: not written back, not in JSON */

typedef struct lq_ykey lq_ykey;

typedef struct lq_ycustom {
    /* v is a non-null node; name is the key's dotted name for messages. */
    lq_status (*parse)(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err);
    void (*set_default)(const lq_ykey *k, void *obj);
    void (*write)(FILE *f, const lq_ykey *k, const void *obj); /* the value only, one line */
    cJSON *(*to_json)(const lq_ykey *k, const void *obj);
} lq_ycustom;

struct lq_ykey {
    const char *key;
    lq_ytype type;
    size_t off;               /* offset of the field in the struct */
    size_t size;              /* INT / ENUM: the field's size in bytes */
    const char *def;          /* default as YAML text (NULL: null / 0 / false) */
    double lo, hi;            /* numeric range (use -HUGE_VAL / HUGE_VAL for none) */
    unsigned flags;           /* LQ_YF_* */
    const lq_ychoice *choices;/* ENUM / STR: {NULL, 0}-terminated */
    const char *help;         /* one line, for messages and the commented YAML */
    const lq_ycustom *custom; /* CUSTOM */
    const lq_ykey *sub;       /* LIST: element schema ({NULL}-terminated) */
    size_t elem_size, off2;   /* LIST */
    int max_n;                /* LIST */
};

/* A schema is an array of lq_ykey ending with one whose key is NULL. */

/* Sets every non-string field to its default (strings NULL, lists empty); allocates nothing. */
void lq_yschema_defaults(const lq_ykey *keys, void *obj);
/* Reads mapping `map` into obj (defaults first filled by lq_yschema_defaults): an unknown key is
 * an error with a did-you-mean hint; keys are then read in schema order; absent or null keys take
 * their default (strings strdup'd). prefix names the mapping in messages (NULL at the top level,
 * "datasets.0" for an element). Errors read "WHERE: key 'K': expected ..., got 'V'". On error obj
 * may hold some strings: lq_yschema_free releases them. */
lq_status lq_yschema_apply(const lq_ykey *keys, const lq_ynode *map, const char *prefix, void *obj, lq_err *err);
/* Frees the strings and lists of obj and zeroes those fields. */
void lq_yschema_free(const lq_ykey *keys, void *obj);
/* "key: value" per key, schema order, one per line (lists in flow style); with comments, each
 * line ends with "  # help". Every string is double-quoted, so lq_yschema_apply reads back the
 * same values. */
void lq_yschema_write(FILE *f, const lq_ykey *keys, const void *obj, bool comments);
/* One line: the value of key k in YAML (flow style). */
void lq_yschema_write_value(FILE *f, const lq_ykey *k, const void *obj);
/* A JSON object of every key (integers exact, null for absent strings). */
cJSON *lq_yschema_to_json(const lq_ykey *keys, const void *obj);
/* Writes s as a double-quoted YAML string (valid JSON string syntax too). */
void lq_yaml_write_quoted(FILE *f, const char *s);
/* Expands a leading "~" and ${VAR} / ${VAR:-default} in a path value; name (the key) and where
 * are used in messages. *out is malloc'd. */
lq_status lq_path_expand(const char *s, const char *name, const char *where, char **out, lq_err *err);

#endif
