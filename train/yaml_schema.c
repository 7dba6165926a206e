/* train/yaml_schema.c: a schema table (key, type, field offset, default, range / choices, help)
 * drives reading a YAML mapping into a struct with checked values, and writing it back as YAML
 * or JSON. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/yaml_tree.h"

#define WHERE_MAX 320

static void *field(void *obj, const lq_ykey *k) { return (char *)obj + k->off; }
static const void *cfield(const void *obj, const lq_ykey *k) { return (const char *)obj + k->off; }

static void set_int(void *p, size_t size, int64_t v) {
    if (size == sizeof(int32_t))
        *(int32_t *)p = (int32_t)v;
    else if (size == sizeof(int64_t))
        *(int64_t *)p = v;
    else if (size == sizeof(bool))
        *(bool *)p = v != 0;
}

static int64_t get_int(const void *p, size_t size) {
    if (size == sizeof(int32_t)) return *(const int32_t *)p;
    if (size == sizeof(int64_t)) return *(const int64_t *)p;
    if (size == sizeof(bool)) return *(const bool *)p;
    return 0;
}

/* --- scalar syntax --------------------------------------------------------------------------- */

static bool parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        if (!strcmp(s, yes[i])) return *out = true, true;
        if (!strcmp(s, no[i])) return *out = false, true;
    }
    return false;
}

/* Decimal integer, optional sign; nothing else (1.5, 1e3, 0x10 are not integers here). */
static bool parse_i64(const char *s, bool is_unsigned, int64_t *out, uint64_t *uout) {
    const char *d = s + (*s == '+' || *s == '-');
    if (!*d || strlen(d) > 20) return false;
    for (const char *c = d; *c; c++)
        if (*c < '0' || *c > '9') return false;
    char *end;
    errno = 0;
    if (is_unsigned) {
        if (*s == '-') return false;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end) return false;
        *uout = v;
    } else {
        long long v = strtoll(s, &end, 10);
        if (errno || *end) return false;
        *out = v;
    }
    return true;
}

/* A finite decimal number (integers, 0.5, .5, 2e-4, 1.0E+3). */
static bool parse_f64(const char *s, double *out) {
    bool digit = false;
    for (const char *c = s; *c; c++) {
        if (*c >= '0' && *c <= '9')
            digit = true;
        else if (!strchr("+-.eE", *c))
            return false;
    }
    if (!digit) return false;
    char *end;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* "an integer >= 1", "a number in [0, 1)", "a positive number", ... */
static void describe(const lq_ykey *k, char *buf, size_t cap) {
    const char *what = k->type == LQ_YT_F64 ? "number" : "integer";
    bool lo = k->lo > -HUGE_VAL, hi = k->hi < HUGE_VAL;
    bool lo_open = k->flags & LQ_YF_LO_OPEN, hi_open = k->flags & LQ_YF_HI_OPEN;
    if (lo && hi)
        snprintf(buf, cap, "a%s %s in %c%.10g, %.10g%c", k->type == LQ_YT_F64 ? "" : "n", what,
                 lo_open ? '(' : '[', k->lo, k->hi, hi_open ? ')' : ']');
    else if (lo && k->lo == 0 && lo_open)
        snprintf(buf, cap, "a positive %s", what);
    else if (lo)
        snprintf(buf, cap, "a%s %s %s %.10g", k->type == LQ_YT_F64 ? "" : "n", what, lo_open ? ">" : ">=", k->lo);
    else if (hi)
        snprintf(buf, cap, "a%s %s %s %.10g", k->type == LQ_YT_F64 ? "" : "n", what, hi_open ? "<" : "<=", k->hi);
    else
        snprintf(buf, cap, "a%s %s", k->type == LQ_YT_F64 ? "" : "n", what);
    if (k->flags & LQ_YF_POW2) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, ", a power of two");
    }
}

static bool in_range(const lq_ykey *k, double v) {
    if (k->flags & LQ_YF_LO_OPEN ? !(v > k->lo) : !(v >= k->lo)) return false;
    if (k->flags & LQ_YF_HI_OPEN ? !(v < k->hi) : !(v <= k->hi)) return false;
    return true;
}

/* The value's text for "got '...'" (cut short), or "a list" / "a mapping". */
static void got(const lq_ynode *v, char *buf, size_t cap) {
    if (v->kind != LQ_YNODE_SCALAR)
        snprintf(buf, cap, "%s", v->kind == LQ_YNODE_SEQ ? "a list" : "a mapping");
    else if (strlen(v->str) > 60)
        snprintf(buf, cap, "'%.57s...'", v->str);
    else
        snprintf(buf, cap, "'%s'", v->str);
}

static lq_status bad(const lq_ykey *k, const char *name, const lq_ynode *v, const char *expected, lq_err *err) {
    char where[WHERE_MAX], g[80];
    lq_ynode_where(v, where, sizeof where);
    got(v, g, sizeof g);
    (void)k;
    return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': expected %s, got %s", where, name, expected, g);
}

/* "one of a, b, c" into buf */
static void choice_list(const lq_ychoice *c, char *buf, size_t cap) {
    size_t l = snprintf(buf, cap, "one of ");
    for (int i = 0; c[i].name && l < cap; i++) l += snprintf(buf + l, cap - l, "%s%s", i ? ", " : "", c[i].name);
}

static const lq_ychoice *find_choice(const lq_ychoice *c, const char *s) {
    for (int i = 0; c[i].name; i++)
        if (!strcmp(c[i].name, s)) return &c[i];
    return NULL;
}

static const char *canonical(const lq_ychoice *c, int value) {
    for (int i = 0; c[i].name; i++)
        if (c[i].value == value) return c[i].name;
    return "?";
}

static lq_status bad_choice(const lq_ykey *k, const char *name, const lq_ynode *v, lq_err *err) {
    char list[256];
    choice_list(k->choices, list, sizeof list);
    lq_status st = bad(k, name, v, list, err);
    if (v->kind == LQ_YNODE_SCALAR && err) {
        const char *names[32];
        int n = 0;
        for (; k->choices[n].name && n < 32; n++) names[n] = k->choices[n].name;
        const char *hint = lq_did_you_mean(v->str, names, n);
        size_t l = strlen(err->msg);
        if (hint) snprintf(err->msg + l, sizeof err->msg - l, " (did you mean '%s'?)", hint);
    }
    return st;
}

/* --- reading --------------------------------------------------------------------------------- */

static lq_status read_list(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err);

/* v: a non-null node for key k. */
static lq_status read_value(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err) {
    void *p = field(obj, k);
    char expected[160], where[WHERE_MAX];
    if (k->type == LQ_YT_CUSTOM) return k->custom->parse(k, name, v, obj, err);
    if (k->type == LQ_YT_LIST) return read_list(k, name, v, obj, err);
    if (k->type == LQ_YT_MAP) {
        lq_yschema_free(k->sub, p);
        lq_yschema_defaults(k->sub, p);
        return lq_yschema_apply(k->sub, v, name, p, err);
    }
    bool scalar = v->kind == LQ_YNODE_SCALAR;
    switch (k->type) {
    case LQ_YT_BOOL: {
        bool b;
        if (!scalar || !parse_bool(v->str, &b)) return bad(k, name, v, "true or false", err);
        *(bool *)p = b;
        return LQ_OK;
    }
    case LQ_YT_INT:
    case LQ_YT_U64: {
        int64_t i = 0;
        uint64_t u = 0;
        describe(k, expected, sizeof expected);
        if (!scalar || !parse_i64(v->str, k->type == LQ_YT_U64, &i, &u)) return bad(k, name, v, expected, err);
        double d = k->type == LQ_YT_U64 ? (double)u : (double)i;
        if (!in_range(k, d)) return bad(k, name, v, expected, err);
        if ((k->flags & LQ_YF_POW2) && (i <= 0 || (i & (i - 1)))) return bad(k, name, v, expected, err);
        if (k->type == LQ_YT_U64)
            *(uint64_t *)p = u;
        else
            set_int(p, k->size, i);
        return LQ_OK;
    }
    case LQ_YT_F64: {
        double d;
        describe(k, expected, sizeof expected);
        if (!scalar || !parse_f64(v->str, &d) || !in_range(k, d)) return bad(k, name, v, expected, err);
        *(double *)p = d;
        return LQ_OK;
    }
    case LQ_YT_ENUM: {
        const lq_ychoice *c = scalar ? find_choice(k->choices, v->str) : NULL;
        if (!c) return bad_choice(k, name, v, err);
        set_int(p, k->size, c->value);
        return LQ_OK;
    }
    case LQ_YT_STR:
    case LQ_YT_PATH: {
        if (!scalar) return bad(k, name, v, k->type == LQ_YT_PATH ? "a path" : "a string", err);
        char *s;
        if (k->choices) {
            const lq_ychoice *c = find_choice(k->choices, v->str);
            if (!c) return bad_choice(k, name, v, err);
            s = strdup(canonical(k->choices, c->value));
        } else if (k->type == LQ_YT_PATH) {
            if (!v->str[0]) return bad(k, name, v, "a path", err);
            LQ_TRY(lq_path_expand(v->str, name, lq_ynode_where(v, where, sizeof where), &s, err));
            if (!s[0]) {
                free(s);
                return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': '%s' expands to an empty path", where, name, v->str);
            }
        } else {
            s = strdup(v->str);
        }
        if (!s) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
        free(*(char **)p);
        *(char **)p = s;
        return LQ_OK;
    }
    default: return LQ_ERR(err, LQ_ERR_INTERNAL, "key '%s': unknown schema type %d", name, (int)k->type);
    }
}

static void free_list(const lq_ykey *k, void *obj) {
    int *n = (int *)((char *)obj + k->off2);
    for (int i = 0; i < *n; i++) lq_yschema_free(k->sub, (char *)field(obj, k) + (size_t)i * k->elem_size);
    *n = 0;
}

static lq_status read_list(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err) {
    char where[WHERE_MAX], sub[160];
    free_list(k, obj);
    if (v->kind != LQ_YNODE_SEQ)
        return bad(k, name, v, "a list of entries (- path: ... / type: ...)", err);
    lq_ynode_where(v, where, sizeof where);
    if (v->n > k->max_n)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': %d entries, at most %d are allowed", where, name, v->n,
                      k->max_n);
    if (v->n == 0 && (k->flags & LQ_YF_REQUIRED))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': needs at least one entry", where, name);
    int *n = (int *)((char *)obj + k->off2);
    for (int i = 0; i < v->n; i++) {
        char *e = (char *)field(obj, k) + (size_t)i * k->elem_size;
        memset(e, 0, k->elem_size);
        lq_yschema_defaults(k->sub, e);
        *n = i + 1; /* counted before reading, so a failed entry's strings are freed too */
        snprintf(sub, sizeof sub, "%s.%d", name, i);
        LQ_TRY(lq_yschema_apply(k->sub, v->kids[i], sub, e, err));
    }
    return LQ_OK;
}

static lq_status set_default(const lq_ykey *k, const char *name, void *obj, lq_err *err) {
    void *p = field(obj, k);
    switch (k->type) {
    case LQ_YT_STR:
    case LQ_YT_PATH:
        free(*(char **)p);
        *(char **)p = NULL;
        if (k->def && !(*(char **)p = strdup(k->def))) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
        return LQ_OK;
    case LQ_YT_LIST: free_list(k, obj); return LQ_OK;
    case LQ_YT_MAP:
        lq_yschema_free(k->sub, p);
        lq_yschema_defaults(k->sub, p);
        return LQ_OK;
    default: break;
    }
    /* the others: the default text through the same reader (an error here is a schema bug) */
    if (k->type == LQ_YT_CUSTOM) {
        k->custom->set_default(k, obj);
        return LQ_OK;
    }
    if (!k->def) {
        if (k->type == LQ_YT_F64)
            *(double *)p = 0;
        else if (k->type == LQ_YT_U64)
            *(uint64_t *)p = 0;
        else
            set_int(p, k->size, 0);
        return LQ_OK;
    }
    lq_ynode d = {.kind = LQ_YNODE_SCALAR, .src = (char *)"(default)", .str = (char *)k->def, .plain = true};
    lq_status st = read_value(k, name, &d, obj, err);
    return st == LQ_OK ? LQ_OK : LQ_ERR(err, LQ_ERR_INTERNAL, "schema default of '%s' is invalid", name);
}

void lq_yschema_defaults(const lq_ykey *keys, void *obj) {
    for (const lq_ykey *k = keys; k->key; k++) {
        if (k->type == LQ_YT_STR || k->type == LQ_YT_PATH)
            *(char **)field(obj, k) = NULL;
        else if (k->type == LQ_YT_LIST)
            *(int *)((char *)obj + k->off2) = 0;
        else if (k->type == LQ_YT_MAP)
            lq_yschema_defaults(k->sub, field(obj, k));
        else
            set_default(k, k->key, obj, NULL);
    }
}

lq_status lq_yschema_apply(const lq_ykey *keys, const lq_ynode *map, const char *prefix, void *obj, lq_err *err) {
    char where[WHERE_MAX], name[160];
    if (!map || map->kind != LQ_YNODE_MAP) {
        if (!map)
            return LQ_ERR(err, LQ_ERR_INPUT, "key '%s': expected a mapping (key: value lines)", prefix ? prefix : "");
        char g[80];
        got(map, g, sizeof g);
        lq_ynode_where(map, where, sizeof where);
        if (prefix)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': expected a mapping (key: value lines), got %s", where,
                          prefix, g);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: the top level must be a mapping (key: value lines), got %s", where, g);
    }
    const char *names[128];
    int nk = 0;
    for (const lq_ykey *k = keys; k->key && nk < 128; k++) names[nk++] = k->key;
    for (int i = 0; i < map->n; i++) {
        const lq_ynode *kn = map->kids[2 * i];
        bool known = false;
        for (int j = 0; j < nk && !known; j++) known = !strcmp(names[j], kn->str);
        if (known) continue;
        lq_ynode_where(kn, where, sizeof where);
        const char *hint = lq_did_you_mean(kn->str, names, nk);
        char full[200];
        snprintf(full, sizeof full, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", kn->str);
        if (hint)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: unknown key '%s' (did you mean '%s'?)", where, full, hint);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: unknown key '%s'", where, full);
    }
    for (const lq_ykey *k = keys; k->key; k++) {
        const lq_ynode *kn;
        const lq_ynode *v = lq_ynode_get(map, k->key, &kn);
        snprintf(name, sizeof name, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", k->key);
        if (!lq_ynode_is_null(v)) {
            LQ_TRY(read_value(k, name, v, obj, err));
            continue;
        }
        if (k->flags & LQ_YF_REQUIRED) {
            const char *help = k->help ? k->help : "";
            if (v) /* given as null */
                return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s' is required (%s)",
                              lq_ynode_where(v, where, sizeof where), name, help);
            if (prefix) /* an entry without it: point at the entry */
                return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s' is required (%s)",
                              lq_ynode_where(map, where, sizeof where), name, help);
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: missing required key '%s' (%s)", map->src, name, help);
        }
        LQ_TRY(set_default(k, name, obj, err));
    }
    return LQ_OK;
}

void lq_yschema_free(const lq_ykey *keys, void *obj) {
    for (const lq_ykey *k = keys; k->key; k++) {
        if (k->type == LQ_YT_STR || k->type == LQ_YT_PATH) {
            free(*(char **)field(obj, k));
            *(char **)field(obj, k) = NULL;
        } else if (k->type == LQ_YT_LIST) {
            free_list(k, obj);
        } else if (k->type == LQ_YT_MAP) {
            lq_yschema_free(k->sub, field(obj, k));
        }
    }
}

/* --- writing --------------------------------------------------------------------------------- */

void lq_yaml_write_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c == '\n')
            fputs("\\n", f);
        else if (*c == '\t')
            fputs("\\t", f);
        else if (*c < 0x20 || *c == 0x7f)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

/* The shortest %g that reads back as the same double; an exponent gets a "." in its mantissa
 * (1.0e-08) so that YAML 1.1 readers (PyYAML) see a float too. */
static void fmt_double(char *buf, size_t cap, double v) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    char *e = strchr(buf, 'e');
    if (e && !strchr(buf, '.') && strlen(buf) + 3 <= cap) {
        memmove(e + 2, e, strlen(e) + 1);
        e[0] = '.';
        e[1] = '0';
    }
}

static void write_value(FILE *f, const lq_ykey *k, const void *obj);

static void write_flow_map(FILE *f, const lq_ykey *keys, const void *obj) {
    fputc('{', f);
    bool first = true;
    for (const lq_ykey *k = keys; k->key; k++) {
        if (k->flags & LQ_YF_NOWRITE) continue;
        fprintf(f, "%s%s: ", first ? "" : ", ", k->key);
        write_value(f, k, obj);
        first = false;
    }
    fputc('}', f);
}

static void write_value(FILE *f, const lq_ykey *k, const void *obj) {
    const void *p = cfield(obj, k);
    char buf[64];
    switch (k->type) {
    case LQ_YT_BOOL: fputs(*(const bool *)p ? "true" : "false", f); break;
    case LQ_YT_INT: fprintf(f, "%lld", (long long)get_int(p, k->size)); break;
    case LQ_YT_U64: fprintf(f, "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case LQ_YT_F64:
        fmt_double(buf, sizeof buf, *(const double *)p);
        fputs(buf, f);
        break;
    case LQ_YT_STR:
    case LQ_YT_PATH: {
        const char *s = *(char *const *)p;
        if (!s) s = k->def;
        if (s)
            lq_yaml_write_quoted(f, s);
        else
            fputs("null", f);
        break;
    }
    case LQ_YT_ENUM: fputs(canonical(k->choices, (int)get_int(p, k->size)), f); break;
    case LQ_YT_LIST: {
        int n = *(const int *)((const char *)obj + k->off2);
        fputc('[', f);
        for (int i = 0; i < n; i++) {
            if (i) fputs(", ", f);
            write_flow_map(f, k->sub, (const char *)p + (size_t)i * k->elem_size);
        }
        fputc(']', f);
        break;
    }
    case LQ_YT_MAP: write_flow_map(f, k->sub, p); break;
    case LQ_YT_CUSTOM: k->custom->write(f, k, obj); break;
    }
}

void lq_yschema_write_value(FILE *f, const lq_ykey *k, const void *obj) { write_value(f, k, obj); }

void lq_yschema_write(FILE *f, const lq_ykey *keys, const void *obj, bool comments) {
    for (const lq_ykey *k = keys; k->key; k++) {
        if (k->flags & LQ_YF_NOWRITE) continue;
        if (!comments || !k->help) {
            fprintf(f, "%s: ", k->key);
            write_value(f, k, obj);
            fputc('\n', f);
            continue;
        }
        /* the value into a buffer first, to align the comments */
        char *line = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&line, &len);
        if (!m) continue;
        fprintf(m, "%s: ", k->key);
        write_value(m, k, obj);
        fclose(m);
        fprintf(f, "%-44s  # %s\n", line, k->help);
        free(line);
    }
}

static cJSON *json_value(const lq_ykey *k, const void *obj) {
    const void *p = cfield(obj, k);
    char buf[32];
    switch (k->type) {
    case LQ_YT_BOOL: return cJSON_CreateBool(*(const bool *)p);
    case LQ_YT_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)get_int(p, k->size));
        return cJSON_CreateRaw(buf);
    case LQ_YT_U64:
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)*(const uint64_t *)p);
        return cJSON_CreateRaw(buf);
    case LQ_YT_F64: return cJSON_CreateNumber(*(const double *)p);
    case LQ_YT_STR:
    case LQ_YT_PATH: {
        const char *s = *(char *const *)p;
        if (!s) s = k->def;
        return s ? cJSON_CreateString(s) : cJSON_CreateNull();
    }
    case LQ_YT_ENUM: return cJSON_CreateString(canonical(k->choices, (int)get_int(p, k->size)));
    case LQ_YT_LIST: {
        cJSON *a = cJSON_CreateArray();
        int n = *(const int *)((const char *)obj + k->off2);
        for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, lq_yschema_to_json(k->sub, (const char *)p + (size_t)i * k->elem_size));
        return a;
    }
    case LQ_YT_MAP: return lq_yschema_to_json(k->sub, p);
    case LQ_YT_CUSTOM: return k->custom->to_json(k, obj);
    }
    return cJSON_CreateNull();
}

cJSON *lq_yschema_to_json(const lq_ykey *keys, const void *obj) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (const lq_ykey *k = keys; k->key; k++)
        if (!(k->flags & LQ_YF_NOWRITE)) cJSON_AddItemToObject(o, k->key, json_value(k, obj));
    return o;
}
