/* train/yaml_tree.c: YAML text -> a node tree with source lines (libyaml events), dotted-path
 * overrides, edit distance for did-you-mean hints, and path expansion (~, ${VAR:-default}). */
#include "train/yaml_tree.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

static lq_ynode *node_new(lq_ynode_kind kind, const char *src, int line) {
    lq_ynode *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->line = line;
    n->src = strdup(src ? src : "");
    if (!n->src) {
        free(n);
        return NULL;
    }
    return n;
}

static lq_ynode *scalar_new(const char *s, size_t len, bool plain, const char *src, int line) {
    lq_ynode *n = node_new(LQ_YNODE_SCALAR, src, line);
    if (!n) return NULL;
    n->str = malloc(len + 1);
    if (!n->str) {
        lq_ynode_free(n);
        return NULL;
    }
    memcpy(n->str, s, len);
    n->str[len] = 0;
    n->plain = plain;
    return n;
}

void lq_ynode_free(lq_ynode *n) {
    if (!n) return;
    int slots = n->kind == LQ_YNODE_MAP ? 2 * n->n : n->n;
    for (int i = 0; i < slots; i++) lq_ynode_free(n->kids[i]);
    free(n->kids);
    free(n->str);
    free(n->src);
    free(n);
}

/* kids of a MAP hold 2 * n slots plus possibly a pending key; track slots separately. */
typedef struct frame {
    lq_ynode *node;
    int slots; /* filled slots of kids */
} frame;

static bool add_slot(frame *f, lq_ynode *k) {
    lq_ynode *p = f->node;
    if (f->slots == p->cap) {
        int cap = p->cap ? 2 * p->cap : 8;
        lq_ynode **kids = realloc(p->kids, (size_t)cap * sizeof *kids);
        if (!kids) return false;
        p->kids = kids;
        p->cap = cap;
    }
    p->kids[f->slots++] = k;
    if (p->kind == LQ_YNODE_SEQ)
        p->n = f->slots;
    else
        p->n = f->slots / 2;
    return true;
}

const char *lq_ynode_where(const lq_ynode *n, char *buf, size_t cap) {
    if (!n)
        snprintf(buf, cap, "?");
    else if (n->line > 0)
        snprintf(buf, cap, "%s:%d", n->src, n->line);
    else
        snprintf(buf, cap, "%s", n->src);
    return buf;
}

bool lq_ynode_is_null(const lq_ynode *n) {
    if (!n) return true;
    if (n->kind != LQ_YNODE_SCALAR || !n->plain) return false;
    const char *s = n->str;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

const lq_ynode *lq_ynode_get(const lq_ynode *map, const char *key, const lq_ynode **key_node) {
    if (key_node) *key_node = NULL;
    if (!map || map->kind != LQ_YNODE_MAP) return NULL;
    for (int i = 0; i < map->n; i++) {
        const lq_ynode *k = map->kids[2 * i];
        if (k->kind == LQ_YNODE_SCALAR && !strcmp(k->str, key)) {
            if (key_node) *key_node = k;
            return map->kids[2 * i + 1];
        }
    }
    return NULL;
}

static const char *kind_name(lq_ynode_kind k) {
    return k == LQ_YNODE_SEQ ? "a list" : k == LQ_YNODE_MAP ? "a mapping" : "a value";
}

/* Parses; with_lines false gives every node line 0 (an override's value). */
static lq_status parse_impl(const char *text, size_t len, const char *src, bool with_lines, lq_ynode **root,
                            lq_err *err) {
    *root = NULL;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return LQ_ERR(err, LQ_ERR_OOM, "%s: cannot start the YAML parser", src);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    frame stack[LQ_YAML_MAX_DEPTH];
    int depth = 0, n_nodes = 0, n_docs = 0;
    lq_ynode *top = NULL;
    lq_status st = LQ_OK;
    bool done = false;
    while (!done && st == LQ_OK) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            int line = (int)p.problem_mark.line + 1;
            size_t off = p.problem_mark.index;
            bool tab = off < len && text[off] == '\t';
            char where[300];
            if (with_lines)
                snprintf(where, sizeof where, "%s:%d", src, line);
            else
                snprintf(where, sizeof where, "%s", src);
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: YAML syntax error: %s%s%s%s", where,
                        p.problem ? p.problem : "unknown problem", p.context ? " (" : "",
                        p.context ? p.context : "", p.context ? ")" : "");
            if (tab && err) {
                size_t l = strlen(err->msg);
                snprintf(err->msg + l, sizeof err->msg - l, "; tabs cannot indent YAML, use spaces");
            }
            break;
        }
        int line = with_lines ? (int)ev.start_mark.line + 1 : 0;
        char where[300];
        if (with_lines)
            snprintf(where, sizeof where, "%s:%d", src, line);
        else
            snprintf(where, sizeof where, "%s", src);
        lq_ynode *node = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = true; break;
        case YAML_DOCUMENT_START_EVENT:
            if (++n_docs > 1)
                st = LQ_ERR(err, LQ_ERR_INPUT, "%s: a second YAML document ('---'); a config is one document",
                            where);
            break;
        case YAML_ALIAS_EVENT:
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: YAML aliases (*%s) are not supported; write the value out",
                        where, ev.data.alias.anchor ? (const char *)ev.data.alias.anchor : "");
            break;
        case YAML_SCALAR_EVENT:
            if (memchr(ev.data.scalar.value, 0, ev.data.scalar.length)) {
                st = LQ_ERR(err, LQ_ERR_INPUT, "%s: a value holds a NUL character", where);
                break;
            }
            node = scalar_new((const char *)ev.data.scalar.value, ev.data.scalar.length,
                              ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE, src, line);
            break;
        case YAML_SEQUENCE_START_EVENT: node = node_new(LQ_YNODE_SEQ, src, line); break;
        case YAML_MAPPING_START_EVENT: node = node_new(LQ_YNODE_MAP, src, line); break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: depth--; break;
        default: break;
        }
        bool opens = ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT;
        bool makes = opens || ev.type == YAML_SCALAR_EVENT;
        yaml_event_delete(&ev);
        if (st != LQ_OK || !makes) continue;
        if (!node) {
            st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", where);
            break;
        }
        if (++n_nodes > LQ_YAML_MAX_NODES) {
            lq_ynode_free(node);
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: more than %d YAML nodes; not a config", where, LQ_YAML_MAX_NODES);
            break;
        }
        if (depth == 0) {
            top = node;
        } else {
            frame *f = &stack[depth - 1];
            if (f->node->kind == LQ_YNODE_MAP && f->slots % 2 == 0) {
                /* a key: a scalar, unique in its mapping */
                if (node->kind != LQ_YNODE_SCALAR) {
                    st = LQ_ERR(err, LQ_ERR_INPUT, "%s: a key must be a name, not %s", where, kind_name(node->kind));
                    lq_ynode_free(node);
                    break;
                }
                const lq_ynode *prev_key;
                if (lq_ynode_get(f->node, node->str, &prev_key)) {
                    if (prev_key->line > 0)
                        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: duplicate key '%s' (first given at line %d)", where,
                                    node->str, prev_key->line);
                    else
                        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: duplicate key '%s'", where, node->str);
                    lq_ynode_free(node);
                    break;
                }
            }
            if (f->slots >= 2 * LQ_YAML_MAX_ENTRIES) { /* keeps the duplicate-key scan small */
                st = LQ_ERR(err, LQ_ERR_INPUT, "%s: more than %d entries in one mapping or list", where,
                            LQ_YAML_MAX_ENTRIES);
                lq_ynode_free(node);
                break;
            }
            if (!add_slot(f, node)) {
                lq_ynode_free(node);
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", where);
                break;
            }
        }
        if (opens) {
            if (depth == LQ_YAML_MAX_DEPTH) {
                st = LQ_ERR(err, LQ_ERR_INPUT, "%s: nested more than %d levels deep", where, LQ_YAML_MAX_DEPTH);
                break;
            }
            stack[depth].node = node;
            stack[depth].slots = 0;
            depth++;
        }
    }
    yaml_parser_delete(&p);
    if (st != LQ_OK) {
        /* a mapping cut off after a key holds that key beyond its 2 * n counted slots */
        for (int d = 0; d < depth; d++)
            if (stack[d].node->kind == LQ_YNODE_MAP && stack[d].slots % 2) lq_ynode_free(stack[d].node->kids[stack[d].slots - 1]);
        lq_ynode_free(top);
        return st;
    }
    /* a stream of only comments, or a lone "---", has no content */
    if (top && top->kind == LQ_YNODE_SCALAR && top->plain && !top->str[0]) {
        lq_ynode_free(top);
        top = NULL;
    }
    *root = top;
    return LQ_OK;
}

lq_status lq_yaml_parse(const char *text, size_t len, const char *src, lq_ynode **root, lq_err *err) {
    return parse_impl(text, len, src, true, root, err);
}

static bool is_index(const char *s, long *out) {
    if (!*s || strlen(s) > 6) return false;
    for (const char *c = s; *c; c++)
        if (!isdigit((unsigned char)*c)) return false;
    *out = strtol(s, NULL, 10);
    return true;
}

/* Sets slot i of container p (already existing) to v, freeing the old node. */
static void replace_slot(lq_ynode *p, int i, lq_ynode *v) {
    lq_ynode_free(p->kids[i]);
    p->kids[i] = v;
}

/* Appends one item to a SEQ, or the pair (v, v2) to a MAP. */
static lq_status append(lq_ynode *p, lq_ynode *v, lq_ynode *v2, const char *src, lq_err *err) {
    frame f = {p, p->kind == LQ_YNODE_MAP ? 2 * p->n : p->n};
    if (!add_slot(&f, v)) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
    if (v2 && !add_slot(&f, v2)) {
        f.slots--; /* give the key back to the caller */
        p->n = f.slots / 2;
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
    }
    return LQ_OK;
}

lq_status lq_yaml_override(lq_ynode *root, const char *kv, lq_err *err) {
    char src[320];
    snprintf(src, sizeof src, "--set %s", kv);
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) return LQ_ERR(err, LQ_ERR_INPUT, "%s: expected key=value", src);
    if (!root || root->kind != LQ_YNODE_MAP) return LQ_ERR(err, LQ_ERR_INPUT, "%s: the config is not a mapping", src);
    size_t klen = (size_t)(eq - kv);
    bool empty_part = kv[0] == '.' || kv[klen - 1] == '.';
    for (size_t i = 1; i < klen; i++) empty_part |= kv[i] == '.' && kv[i - 1] == '.';
    if (empty_part)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: the key has an empty part (a.b.0.c is the form)", src);
    char *path = strndup(kv, klen);
    if (!path) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
    lq_ynode *val = NULL;
    lq_status st = parse_impl(eq + 1, strlen(eq + 1), src, false, &val, err);
    if (st == LQ_OK && !val && !(val = scalar_new("", 0, true, src, 0)))
        st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
    lq_ynode *cur = root;
    char *save = NULL, *seg = st == LQ_OK ? strtok_r(path, ".", &save) : NULL;
    if (st == LQ_OK && !seg) st = LQ_ERR(err, LQ_ERR_INPUT, "%s: empty key", src);
    while (st == LQ_OK && seg) {
        char *next = strtok_r(NULL, ".", &save);
        long idx;
        bool next_is_index = next && is_index(next, &idx);
        lq_ynode *child = NULL;
        int slot = -1;
        if (cur->kind == LQ_YNODE_MAP) {
            for (int i = 0; i < cur->n; i++)
                if (!strcmp(cur->kids[2 * i]->str, seg)) slot = 2 * i + 1;
            if (slot < 0) {
                lq_ynode *k = scalar_new(seg, strlen(seg), true, src, 0);
                lq_ynode *nul = scalar_new("", 0, true, src, 0);
                if (!k || !nul) {
                    lq_ynode_free(k);
                    lq_ynode_free(nul);
                    st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
                    break;
                }
                if ((st = append(cur, k, nul, src, err)) != LQ_OK) {
                    lq_ynode_free(k);
                    lq_ynode_free(nul);
                    break;
                }
                slot = 2 * cur->n - 1;
            }
        } else if (cur->kind == LQ_YNODE_SEQ) {
            long i;
            if (!is_index(seg, &i)) {
                st = LQ_ERR(err, LQ_ERR_INPUT, "%s: '%s' indexes a list: expected a number 0..%d", src, seg, cur->n);
                break;
            }
            if (i > cur->n) {
                st = LQ_ERR(err, LQ_ERR_INPUT, "%s: index %ld is out of range (the list has %d entries; %d appends)",
                            src, i, cur->n, cur->n);
                break;
            }
            if (i == cur->n) {
                lq_ynode *nul = scalar_new("", 0, true, src, 0);
                if (!nul || (st = append(cur, nul, NULL, src, err)) != LQ_OK) {
                    lq_ynode_free(nul);
                    if (st == LQ_OK) st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
                    break;
                }
            }
            slot = (int)i;
        } else {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: '%s' is inside a single value, not a mapping or list", src, seg);
            break;
        }
        if (!next) {
            replace_slot(cur, slot, val);
            val = NULL;
            break;
        }
        child = cur->kids[slot];
        if (lq_ynode_is_null(child)) { /* make the container the path needs */
            lq_ynode *c = node_new(next_is_index ? LQ_YNODE_SEQ : LQ_YNODE_MAP, src, 0);
            if (!c) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", src);
                break;
            }
            replace_slot(cur, slot, c);
            child = c;
        }
        cur = child;
        seg = next;
    }
    lq_ynode_free(val);
    free(path);
    return st;
}

int lq_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return (int)(la > lb ? la : lb);
    int row[65];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

const char *lq_did_you_mean(const char *s, const char *const *cands, int n) {
    const char *best = NULL;
    int bd = 1 << 30;
    for (int i = 0; i < n; i++) {
        int d = lq_edit_distance(s, cands[i]);
        if (d < bd) {
            bd = d;
            best = cands[i];
        }
    }
    /* a typo: a few edits, fewer for short names (so 'xy' does not suggest 'seed') */
    int len = (int)strlen(s);
    int limit = len <= 3 ? 1 : len <= 6 ? 2 : 3;
    return best && bd <= limit && bd > 0 ? best : NULL;
}

/* --- path expansion ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static bool sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

/* Expands s[0..n) into b; a leading ~ counts only where the output is still empty. */
static lq_status expand(const char *s, size_t n, const char *name, const char *where, int depth, sbuf *b,
                        lq_err *err) {
    if (depth > 8) return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': ${...} nested too deeply", where, name);
    size_t i = 0;
    if (b->n == 0 && n > 0 && s[0] == '~' && (n == 1 || s[1] == '/')) {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': '~' needs HOME, which is not set", where, name);
        if (!sb_add(b, home, strlen(home))) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
        i = 1;
    }
    while (i < n) {
        if (s[i] == '$' && i + 1 < n && s[i + 1] == '{') {
            size_t j = i + 2, lvl = 1;
            for (; j < n; j++) {
                if (s[j] == '{') lvl++;
                if (s[j] == '}' && --lvl == 0) break;
            }
            if (j >= n) return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': '${' without a closing '}'", where, name);
            const char *v = s + i + 2;
            size_t vl = 0;
            while (v + vl < s + j && (isalnum((unsigned char)v[vl]) || v[vl] == '_')) vl++;
            const char *rest = v + vl;
            bool has_def = rest + 1 < s + j && rest[0] == ':' && rest[1] == '-';
            if (vl == 0 || isdigit((unsigned char)v[0]) || (rest != s + j && !has_def))
                return LQ_ERR(err, LQ_ERR_INPUT,
                              "%s: key '%s': '%.*s' is not ${NAME} or ${NAME:-default}", where, name,
                              (int)(j + 1 - i), s + i);
            char var[128];
            if (vl >= sizeof var) return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': variable name too long", where, name);
            memcpy(var, v, vl);
            var[vl] = 0;
            const char *val = getenv(var);
            if (val && *val) {
                if (!sb_add(b, val, strlen(val))) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
            } else if (has_def) {
                LQ_TRY(expand(rest + 2, (size_t)(s + j - (rest + 2)), name, where, depth + 1, b, err));
            } else {
                return LQ_ERR(err, LQ_ERR_INPUT,
                              "%s: key '%s': environment variable '%s' is not set (write ${%s:-default} "
                              "to give a fallback)",
                              where, name, var, var);
            }
            i = j + 1;
        } else {
            size_t j = i + 1;
            while (j < n && !(s[j] == '$' && j + 1 < n && s[j + 1] == '{')) j++;
            if (!sb_add(b, s + i, j - i)) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
            i = j;
        }
    }
    return LQ_OK;
}

lq_status lq_path_expand(const char *s, const char *name, const char *where, char **out, lq_err *err) {
    *out = NULL;
    sbuf b = {0};
    lq_status st = expand(s, strlen(s), name, where, 0, &b, err);
    if (st == LQ_OK && !b.p && !sb_add(&b, "", 0)) st = LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    if (st != LQ_OK) {
        free(b.p);
        return st;
    }
    /* The resolved config (checkpoints, `loquat config`) holds expanded paths and is parsed again on
     * resume, so an expansion must be a fixed point: a result that holds "${" or gains a leading
     * "~/" (from "~${EMPTY:-}/x" or a variable's value) would expand a second time to another path. */
    sbuf again = {0};
    lq_err e2;
    lq_err_clear(&e2);
    bool fixed = expand(b.p, b.n, name, where, 0, &again, &e2) == LQ_OK && again.n == b.n &&
                 (b.n == 0 || memcmp(again.p, b.p, b.n) == 0);
    free(again.p);
    if (!fixed) {
        st = LQ_ERR(err, LQ_ERR_INPUT,
                    "%s: key '%s': '%s' expands to '%s', which holds '${' or a leading '~' and would expand again",
                    where, name, s, b.p);
        free(b.p);
        return st;
    }
    *out = b.p;
    return LQ_OK;
}
