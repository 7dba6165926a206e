/* quant/spec.c: per-layer quantization specs, glob rules resolving them per tensor name, and the PTQ calibrator. */
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

#define SPEC_MAX_LEN 256
#define SPEC_EXPECTED                                                                                          \
    "expected one of sym|asym, tensor|channel[<axis>]|g<size>|token, minmax|movavg[=c]|pct[=p]|mse[=n], lsq"

/* --- specs ------------------------------------------------------------------------------------- */

lq_observer_config lq_qspec_observer_config(const lq_qspec *spec)
{
    lq_observer_config c = lq_observer_config_default();
    c.kind = spec->observer;
    c.bits = spec->bits;
    c.symmetric = spec->symmetric;
    c.granularity = spec->granularity;
    c.axis = spec->axis;
    c.group_size = spec->group_size;
    c.param = spec->observer_param;
    return c;
}

lq_status lq_qspec_validate(const lq_qspec *spec, lq_err *err)
{
    if (!spec) return LQ_ERR(err, LQ_ERR_ARG, "lq_qspec_validate: NULL spec");
    if (!spec->enabled) return LQ_OK;
    lq_observer_config c = lq_qspec_observer_config(spec);
    if (c.granularity == LQ_GRAN_TOKEN) c.granularity = LQ_GRAN_TENSOR; /* dynamic: the rest still has to hold */
    lq_observer tmp;
    lq_status st = lq_observer_init(&tmp, &c, err);
    lq_observer_free(&tmp);
    return st;
}

/* Parses a whole decimal integer (optional sign); false if s is empty or has anything else. */
static bool parse_int(const char *s, long long *out)
{
    if (!(*s == '-' || (*s >= '0' && *s <= '9'))) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

static bool parse_num(const char *s, double *out)
{
    if (!*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno) return false;
    *out = v;
    return true;
}

static lq_status bad_token(lq_err *err, const char *s, const char *tok, const char *why)
{
    return LQ_ERR(err, LQ_ERR_INPUT, "quant spec \"%s\": bad token \"%s\" (%s)", s, tok, why);
}

/* One token after the bit width; seen[] flags catch two tokens of one kind (0 sign, 1 granularity,
 * 2 observer, 3 lsq). */
static lq_status parse_token(const char *s, char *tok, lq_qspec *q, bool seen[4], lq_err *err)
{
    int cat;
    char *eq = strchr(tok, '=');
    const char *arg = NULL;
    if (eq) {
        *eq = '\0';
        arg = eq + 1;
    }
    long long iv;
    double dv = 0.0;
    if (!strcmp(tok, "sym") || !strcmp(tok, "asym")) {
        cat = 0;
        q->symmetric = tok[0] == 's';
    } else if (!strcmp(tok, "tensor") || !strcmp(tok, "token")) {
        cat = 1;
        q->granularity = tok[1] == 'e' ? LQ_GRAN_TENSOR : LQ_GRAN_TOKEN;
    } else if (!strncmp(tok, "channel", 7)) {
        cat = 1;
        q->granularity = LQ_GRAN_CHANNEL;
        q->axis = 0;
        if (tok[7]) {
            if (!parse_int(tok + 7, &iv) || iv < -4 || iv > 3) {
                if (eq) *eq = '=';
                return bad_token(err, s, tok, "channel axis must be an integer in -4..3");
            }
            q->axis = (int)iv;
        }
    } else if (tok[0] == 'g' && tok[1] >= '0' && tok[1] <= '9') {
        cat = 1;
        if (!parse_int(tok + 1, &iv) || iv < 1) {
            if (eq) *eq = '=';
            return bad_token(err, s, tok, "group size must be a positive integer, e.g. g32");
        }
        q->granularity = LQ_GRAN_GROUP;
        q->group_size = iv;
    } else if (!strcmp(tok, "minmax") || !strcmp(tok, "movavg") || !strcmp(tok, "pct") || !strcmp(tok, "mse")) {
        cat = 2;
        q->observer = !strcmp(tok, "minmax")   ? LQ_OBSERVER_MINMAX
                      : !strcmp(tok, "movavg") ? LQ_OBSERVER_MOVING_AVG
                      : !strcmp(tok, "pct")    ? LQ_OBSERVER_PERCENTILE
                                               : LQ_OBSERVER_MSE;
        if (arg && (q->observer == LQ_OBSERVER_MINMAX || !parse_num(arg, &dv) || dv <= 0.0)) {
            *eq = '=';
            return bad_token(err, s, tok,
                             q->observer == LQ_OBSERVER_MINMAX ? "minmax takes no parameter"
                                                               : "the observer parameter must be a positive number");
        }
        q->observer_param = dv;
        arg = NULL;
    } else if (!strcmp(tok, "lsq")) {
        cat = 3;
        q->learnable = true;
    } else {
        if (eq) *eq = '=';
        return bad_token(err, s, tok, SPEC_EXPECTED);
    }
    if (eq) *eq = '=';
    if (arg) return bad_token(err, s, tok, "only movavg, pct and mse take '=value'");
    if (seen[cat]) {
        static const char *const what[] = {"sym / asym given twice", "a second granularity", "a second observer",
                                           "lsq given twice"};
        return bad_token(err, s, tok, what[cat]);
    }
    seen[cat] = true;
    return LQ_OK;
}

lq_status lq_qspec_parse(const char *s, lq_qspec *out, lq_err *err)
{
    if (!s || !out) return LQ_ERR(err, LQ_ERR_ARG, "lq_qspec_parse: NULL argument");
    char buf[SPEC_MAX_LEN];
    if (strlen(s) >= sizeof buf)
        return LQ_ERR(err, LQ_ERR_INPUT, "quant spec \"%.40s...\" is longer than %d characters", s, SPEC_MAX_LEN - 1);
    memcpy(buf, s, strlen(s) + 1);
    lq_qspec q;
    memset(&q, 0, sizeof q);
    char *tok = buf, *next = strchr(tok, ':');
    if (next) *next++ = '\0';
    if (!strcmp(tok, "float")) {
        if (next) {
            char *end = strchr(next, ':');
            if (end) *end = '\0';
            return bad_token(err, s, next, "\"float\" takes no other token");
        }
        *out = q;
        return LQ_OK;
    }
    long long bits;
    if (strncmp(tok, "int", 3) || tok[3] == '-' || !parse_int(tok + 3, &bits))
        return bad_token(err, s, tok, "a spec starts with \"float\" or \"int<bits>\", e.g. int4");
    if (bits < 2 || bits > 8) return bad_token(err, s, tok, "bits must be 2..8");
    q.enabled = true;
    q.bits = (int)bits;
    q.symmetric = true;
    q.granularity = LQ_GRAN_TENSOR;
    q.observer = LQ_OBSERVER_MINMAX;
    bool seen[4] = {false, false, false, false};
    while (next) {
        tok = next;
        next = strchr(tok, ':');
        if (next) *next++ = '\0';
        LQ_TRY(parse_token(s, tok, &q, seen, err));
    }
    lq_err local;
    lq_err_clear(&local);
    lq_status st = lq_qspec_validate(&q, &local);
    if (st != LQ_OK) return LQ_ERR(err, LQ_ERR_INPUT, "quant spec \"%s\": %s", s, local.msg);
    *out = q;
    return LQ_OK;
}

int lq_qspec_format(const lq_qspec *q, char *buf, size_t n)
{
    if (!q->enabled) return snprintf(buf, n, "float");
    char gran[32], obs[48];
    switch (q->granularity) {
    case LQ_GRAN_CHANNEL: snprintf(gran, sizeof gran, "channel%d", q->axis); break;
    case LQ_GRAN_GROUP: snprintf(gran, sizeof gran, "g%lld", (long long)q->group_size); break;
    case LQ_GRAN_TOKEN: snprintf(gran, sizeof gran, "token"); break;
    default: snprintf(gran, sizeof gran, "tensor"); break;
    }
    static const char *const obs_names[] = {"minmax", "movavg", "pct", "mse"};
    const char *on = (unsigned)q->observer < LQ_OBSERVER_KIND_COUNT ? obs_names[q->observer] : "minmax";
    if (q->observer_param != 0.0 && q->observer != LQ_OBSERVER_MINMAX)
        snprintf(obs, sizeof obs, "%s=%.17g", on, q->observer_param);
    else
        snprintf(obs, sizeof obs, "%s", on);
    return snprintf(buf, n, "int%d:%s:%s:%s%s", q->bits, q->symmetric ? "sym" : "asym", gran, obs,
                    q->learnable ? ":lsq" : "");
}

/* --- rules ------------------------------------------------------------------------------------- */

typedef struct qrule {
    char *pattern;
    lq_qspec spec;
} qrule;

struct lq_qrules {
    int n, cap;
    qrule *r;
};

lq_status lq_qrules_init(lq_qrules **rules, lq_err *err)
{
    if (!rules) return LQ_ERR(err, LQ_ERR_ARG, "lq_qrules_init: NULL argument");
    *rules = calloc(1, sizeof **rules);
    if (!*rules) return LQ_ERR(err, LQ_ERR_OOM, "lq_qrules_init: out of memory");
    return LQ_OK;
}

void lq_qrules_free(lq_qrules *rules)
{
    if (!rules) return;
    for (int i = 0; i < rules->n; i++) free(rules->r[i].pattern);
    free(rules->r);
    free(rules);
}

lq_status lq_qrules_add(lq_qrules *rules, const char *pattern, const lq_qspec *spec, lq_err *err)
{
    if (!rules || !pattern || !spec) return LQ_ERR(err, LQ_ERR_ARG, "lq_qrules_add: NULL argument");
    if (!*pattern) return LQ_ERR(err, LQ_ERR_INPUT, "quant rule: empty pattern");
    lq_err local;
    lq_err_clear(&local);
    if (lq_qspec_validate(spec, &local) != LQ_OK)
        return LQ_ERR(err, local.status, "quant rule \"%s\": %s", pattern, local.msg);
    if (rules->n == rules->cap) {
        int cap = rules->cap ? 2 * rules->cap : 8;
        qrule *r = realloc(rules->r, (size_t)cap * sizeof *r);
        if (!r) return LQ_ERR(err, LQ_ERR_OOM, "lq_qrules_add: out of memory");
        rules->r = r;
        rules->cap = cap;
    }
    char *p = strdup(pattern);
    if (!p) return LQ_ERR(err, LQ_ERR_OOM, "lq_qrules_add: out of memory");
    rules->r[rules->n].pattern = p;
    rules->r[rules->n].spec = *spec;
    rules->n++;
    return LQ_OK;
}

lq_status lq_qrules_add_str(lq_qrules *rules, const char *pattern, const char *spec, lq_err *err)
{
    lq_qspec q;
    lq_err local;
    lq_err_clear(&local);
    lq_status st = lq_qspec_parse(spec, &q, &local);
    if (st != LQ_OK) return LQ_ERR(err, st, "quant rule \"%s\": %s", pattern ? pattern : "(null)", local.msg);
    return lq_qrules_add(rules, pattern, &q, err);
}

int lq_qrules_count(const lq_qrules *rules)
{
    return rules ? rules->n : 0;
}

int lq_qrules_resolve(const lq_qrules *rules, const char *name, lq_qspec *spec)
{
    if (spec) memset(spec, 0, sizeof *spec);
    if (!rules || !name) return -1;
    for (int i = rules->n - 1; i >= 0; i--) {
        if (fnmatch(rules->r[i].pattern, name, 0) == 0) {
            if (spec) *spec = rules->r[i].spec;
            return i;
        }
    }
    return -1;
}

/* --- calibrator -------------------------------------------------------------------------------- */

typedef enum cal_kind { CAL_OBSERVED, CAL_FLOAT, CAL_DYNAMIC } cal_kind;

typedef struct cal_entry {
    char *name;
    cal_kind kind;
    lq_observer obs;
} cal_entry;

struct lq_calibrator {
    const lq_qrules *rules;
    int n_threads;
    int n, cap;
    cal_entry *e;
};

lq_status lq_calibrator_init(lq_calibrator **cal, const lq_qrules *rules, int n_threads, lq_err *err)
{
    if (!cal || !rules) return LQ_ERR(err, LQ_ERR_ARG, "lq_calibrator_init: NULL argument");
    *cal = calloc(1, sizeof **cal);
    if (!*cal) return LQ_ERR(err, LQ_ERR_OOM, "lq_calibrator_init: out of memory");
    (*cal)->rules = rules;
    (*cal)->n_threads = n_threads;
    return LQ_OK;
}

void lq_calibrator_free(lq_calibrator *cal)
{
    if (!cal) return;
    for (int i = 0; i < cal->n; i++) {
        free(cal->e[i].name);
        lq_observer_free(&cal->e[i].obs);
    }
    free(cal->e);
    free(cal);
}

static cal_entry *cal_lookup(const lq_calibrator *cal, const char *name)
{
    for (int i = 0; i < cal->n; i++)
        if (!strcmp(cal->e[i].name, name)) return &cal->e[i];
    return NULL;
}

/* A new entry for name from the rules' spec. */
static lq_status cal_add(lq_calibrator *cal, const char *name, cal_entry **out, lq_err *err)
{
    if (cal->n == cal->cap) {
        int cap = cal->cap ? 2 * cal->cap : 16;
        cal_entry *e = realloc(cal->e, (size_t)cap * sizeof *e);
        if (!e) return LQ_ERR(err, LQ_ERR_OOM, "calibrator: out of memory");
        cal->e = e;
        cal->cap = cap;
    }
    cal_entry *e = &cal->e[cal->n];
    memset(e, 0, sizeof *e);
    lq_qspec spec;
    lq_qrules_resolve(cal->rules, name, &spec);
    e->kind = !spec.enabled ? CAL_FLOAT : spec.granularity == LQ_GRAN_TOKEN ? CAL_DYNAMIC : CAL_OBSERVED;
    if (e->kind == CAL_OBSERVED) {
        lq_observer_config c = lq_qspec_observer_config(&spec);
        c.n_threads = cal->n_threads;
        LQ_TRY(lq_observer_init(&e->obs, &c, err));
    }
    e->name = strdup(name);
    if (!e->name) {
        lq_observer_free(&e->obs);
        return LQ_ERR(err, LQ_ERR_OOM, "calibrator: out of memory");
    }
    cal->n++;
    *out = e;
    return LQ_OK;
}

lq_status lq_calibrator_observe(lq_calibrator *cal, const char *name, const float *x, int ndim, const int64_t *shape,
                                lq_err *err)
{
    if (!cal || !name) return LQ_ERR(err, LQ_ERR_ARG, "lq_calibrator_observe: NULL argument");
    cal_entry *e = cal_lookup(cal, name);
    if (!e) LQ_TRY(cal_add(cal, name, &e, err));
    if (e->kind != CAL_OBSERVED) return LQ_OK;
    lq_err local;
    lq_err_clear(&local);
    lq_status st = lq_observer_update(&e->obs, x, ndim, shape, &local);
    if (st != LQ_OK) return LQ_ERR(err, st, "tensor \"%s\": %s", name, local.msg);
    return LQ_OK;
}

void lq_calibrator_freeze(lq_calibrator *cal)
{
    if (!cal) return;
    for (int i = 0; i < cal->n; i++)
        if (cal->e[i].kind == CAL_OBSERVED) lq_observer_freeze(&cal->e[i].obs);
}

int lq_calibrator_count(const lq_calibrator *cal)
{
    int n = 0;
    for (int i = 0; cal && i < cal->n; i++) n += cal->e[i].kind == CAL_OBSERVED;
    return n;
}

const char *lq_calibrator_name(const lq_calibrator *cal, int i)
{
    for (int j = 0; cal && j < cal->n; j++)
        if (cal->e[j].kind == CAL_OBSERVED && i-- == 0) return cal->e[j].name;
    return NULL;
}

const lq_observer *lq_calibrator_find(const lq_calibrator *cal, const char *name)
{
    if (!cal || !name) return NULL;
    const cal_entry *e = cal_lookup(cal, name);
    return e && e->kind == CAL_OBSERVED ? &e->obs : NULL;
}

lq_status lq_calibrator_qparams(const lq_calibrator *cal, const char *name, float *scale, int32_t *zero_point,
                                int64_t cap, int64_t *n, lq_err *err)
{
    if (!cal || !name || !n) return LQ_ERR(err, LQ_ERR_ARG, "lq_calibrator_qparams: NULL argument");
    const cal_entry *e = cal_lookup(cal, name);
    if (!e) return LQ_ERR(err, LQ_ERR_ARG, "calibrator: tensor \"%s\" was never observed", name);
    if (e->kind == CAL_FLOAT) return LQ_ERR(err, LQ_ERR_ARG, "calibrator: tensor \"%s\" stays float", name);
    if (e->kind == CAL_DYNAMIC)
        return LQ_ERR(err, LQ_ERR_ARG, "calibrator: tensor \"%s\" is quantized per token (dynamic), no static qparams",
                      name);
    int64_t k = lq_observer_n_qparams(&e->obs);
    *n = k;
    if (k == 0) return LQ_ERR(err, LQ_ERR_STATE, "calibrator: tensor \"%s\" has no data observed yet", name);
    if (cap < k)
        return LQ_ERR(err, LQ_ERR_SHAPE, "calibrator: tensor \"%s\" has %lld qparams, room for %lld", name,
                      (long long)k, (long long)cap);
    lq_err local;
    lq_err_clear(&local);
    lq_status st = lq_observer_qparams(&e->obs, scale, zero_point, &local);
    if (st != LQ_OK) return LQ_ERR(err, st, "tensor \"%s\": %s", name, local.msg);
    return LQ_OK;
}
