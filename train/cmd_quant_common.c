/* train/cmd_quant_common.c: output lists, JSON text, dtype names and error statistics shared by
 * the quantize and dequantize commands. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/half.h"
#include "train/cmd_quant_impl.h"

static bool grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return true;
    int64_t c = *cap ? *cap * 2 : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

bool qout_add(qout *o, const char *prefix, const char *suffix, lq_st_dtype dtype, int ndim, const int64_t *shape,
              const void *data, bool own) {
    size_t a = strlen(prefix), b = strlen(suffix);
    char *name = malloc(a + b + 1);
    bool ok = name && grow((void **)&o->t, &o->cap, o->n + 1, sizeof *o->t) &&
              grow((void **)&o->owned, &o->cap_owned, o->n_owned + 2, sizeof *o->owned);
    if (!ok || ndim > LQ_ST_MAX_DIMS) {
        free(name);
        if (own) free((void *)data);
        o->failed = true;
        return false;
    }
    memcpy(name, prefix, a);
    memcpy(name + a, suffix, b + 1);
    o->owned[o->n_owned++] = name;
    if (own) o->owned[o->n_owned++] = (void *)data;
    lq_st_wtensor *t = &o->t[o->n++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    return true;
}

void qout_free(qout *o) {
    for (int64_t i = 0; i < o->n_owned; i++) free(o->owned[i]);
    free(o->owned);
    free(o->t);
    memset(o, 0, sizeof *o);
}

/* --- JSON text -------------------------------------------------------------------------------- */

static void jb_put(jbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void jb_printf(jbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof tmp) {
        b->failed = true;
        return;
    }
    jb_put(b, tmp, (size_t)k);
}

void jb_str(jbuf *b, const char *s) {
    jb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            jb_put(b, e, 2);
        } else if (*p < 0x20) {
            jb_printf(b, "\\u%04x", *p);
        } else {
            jb_put(b, (const char *)p, 1);
        }
    }
    jb_put(b, "\"", 1);
}

/* Python's repr(float) (io/st_bnb4.c writes it; the quant-state JSON needs the same text). */
void jb_pyfloat(jbuf *b, double v) {
    char out[64];
    int k = lq_py_float_repr(out, sizeof out, v);
    jb_put(b, out, (size_t)k);
}

/* --- dtypes ----------------------------------------------------------------------------------- */

const char *qs_torch_dtype_name(lq_st_dtype t) {
    switch (t) {
    case LQ_ST_F16: return "float16";
    case LQ_ST_BF16: return "bfloat16";
    default: return "float32";
    }
}

lq_st_dtype qs_dtype_from_torch_name(const char *s) {
    if (!s) return LQ_ST_DTYPE_COUNT;
    if (strcmp(s, "float32") == 0) return LQ_ST_F32;
    if (strcmp(s, "float16") == 0) return LQ_ST_F16;
    if (strcmp(s, "bfloat16") == 0) return LQ_ST_BF16;
    return LQ_ST_DTYPE_COUNT;
}

void *qs_from_f32(const float *x, int64_t n, lq_st_dtype dtype) {
    size_t es = dtype == LQ_ST_F32 ? 4 : 2;
    void *buf = malloc((size_t)(n > 0 ? n : 1) * es);
    if (!buf) return NULL;
    if (dtype == LQ_ST_F32) {
        memcpy(buf, x, (size_t)n * 4);
    } else {
        uint16_t *h = buf;
        for (int64_t i = 0; i < n; i++) h[i] = dtype == LQ_ST_F16 ? lq_f32_to_f16(x[i]) : lq_f32_to_bf16(x[i]);
    }
    return buf;
}

/* --- statistics ------------------------------------------------------------------------------- */

void qstats_add(qstats *s, const float *ref, const float *got, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double e = (double)got[i] - (double)ref[i];
        s->sum_sq_err += e * e;
        s->sum_sq_ref += (double)ref[i] * ref[i];
        if (fabs(e) > s->max_abs) s->max_abs = fabs(e);
    }
    s->n += n;
}

double qstats_rmse(const qstats *s) { return s->n ? sqrt(s->sum_sq_err / (double)s->n) : 0.0; }

double qstats_sqnr_db(const qstats *s) {
    if (s->sum_sq_err == 0) return INFINITY;
    return 10.0 * log10(s->sum_sq_ref / s->sum_sq_err);
}
