/* io/st_bnb4.c: one weight in transformers' bitsandbytes 4-bit safetensors layout (what a
 * Linear4bit's state dict holds), shared by `loquat quantize` and the merged NF4 export; and
 * Python's repr(float), which the layout's quant-state JSON (json.dumps) uses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

int lq_py_float_repr(char *out, size_t cap, double v) {
    if (v != v || v - v != 0) return snprintf(out, cap, "null"); /* NaN / Inf: not JSON numbers */
    char sci[40];
    for (int prec = 0; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, v);
        if (strtod(sci, NULL) == v) break;
    }
    /* sci = [-]D[.DDD]e[+-]XX */
    const char *p = sci;
    bool neg = *p == '-';
    if (neg) p++;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < 23) digits[nd++] = *p;
    int x = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--; /* trailing zeros of the mantissa */
    char buf[64];
    int k = 0;
    if (neg) buf[k++] = '-';
    if (x < -4 || x >= 16) {
        buf[k++] = digits[0];
        if (nd > 1) {
            buf[k++] = '.';
            for (int i = 1; i < nd; i++) buf[k++] = digits[i];
        }
        k += snprintf(buf + k, sizeof buf - (size_t)k, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    } else if (x < 0) {
        buf[k++] = '0';
        buf[k++] = '.';
        for (int i = 0; i < -x - 1; i++) buf[k++] = '0';
        for (int i = 0; i < nd; i++) buf[k++] = digits[i];
    } else {
        for (int i = 0; i <= x; i++) buf[k++] = i < nd ? digits[i] : '0';
        buf[k++] = '.';
        if (nd > x + 1)
            for (int i = x + 1; i < nd; i++) buf[k++] = digits[i];
        else buf[k++] = '0';
    }
    buf[k] = '\0';
    return snprintf(out, cap, "%s", buf);
}

void lq_st_bnb4_free(lq_st_bnb4 *b) {
    if (!b) return;
    for (int i = 0; i < b->n; i++) {
        free((void *)b->t[i].name);
        if (b->own[i]) free((void *)b->t[i].data);
    }
    memset(b, 0, sizeof *b);
}

static void *dup_bytes(const void *p, size_t n) {
    void *q = malloc(n ? n : 1);
    if (q && p) memcpy(q, p, n);
    return q;
}

/* Appends name + suffix with data (owned when own; freed here if the entry cannot be made). */
static bool put(lq_st_bnb4 *b, const char *name, const char *suffix, lq_st_dtype dt, int ndim, const int64_t *shape,
                const void *data, bool own) {
    size_t a = strlen(name), s = strlen(suffix);
    char *nm = malloc(a + s + 1);
    if (!nm || !data || b->n == LQ_ST_BNB4_MAX) {
        free(nm);
        if (own) free((void *)data);
        return false;
    }
    memcpy(nm, name, a);
    memcpy(nm + a, suffix, s + 1);
    lq_st_wtensor *t = &b->t[b->n];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->dtype = dt;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    b->own[b->n++] = own;
    return true;
}

lq_status lq_st_bnb4_encode(lq_st_bnb4 *out, const char *name, lq_dtype type, const float *x, int64_t rows,
                            int64_t cols, int64_t block, bool double_quant, const char *torch_dtype, float *y,
                            lq_err *err) {
    memset(out, 0, sizeof *out);
    if (type != LQ_DTYPE_NF4 && type != LQ_DTYPE_FP4)
        return LQ_ERR(err, LQ_ERR_ARG, "bnb4 layout of '%s': type must be NF4 or FP4", name);
    int64_t n = rows * cols, nb = (n + block - 1) / block, nb2 = (nb + LQ_BNB_BLOCK2 - 1) / LQ_BNB_BLOCK2;
    uint8_t *codes = malloc((size_t)(n + 1) / 2 + 1);
    if (!codes) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", name);
    lq_qstate *qs = NULL;
    lq_status s = lq_bnb4_quantize(type, x, n, block, double_quant, codes, &qs, err);
    if (s != LQ_OK) {
        free(codes);
        return s;
    }
    if (y) lq_bnb4_dequantize(type, codes, n, qs, y);
    int64_t cshape[2] = {(n + 1) / 2, 1}, s16 = 16, s256 = 256;
    bool ok = put(out, name, "", LQ_ST_U8, 2, cshape, codes, true);
    if (double_quant) ok = ok && put(out, name, ".absmax", LQ_ST_U8, 1, &nb, dup_bytes(qs->absmax_q, (size_t)nb), true);
    else ok = ok && put(out, name, ".absmax", LQ_ST_F32, 1, &nb, dup_bytes(qs->absmax, (size_t)nb * 4), true);
    ok = ok && put(out, name, ".quant_map", LQ_ST_F32, 1, &s16, type == LQ_DTYPE_NF4 ? lq_nf4_code() : lq_fp4_code(),
                   false);
    if (double_quant) {
        ok = ok && put(out, name, ".nested_absmax", LQ_ST_F32, 1, &nb2, dup_bytes(qs->absmax2, (size_t)nb2 * 4), true);
        ok = ok && put(out, name, ".nested_quant_map", LQ_ST_F32, 1, &s256, lq_bnb_dynamic_map(), false);
    }
    /* json.dumps of QuantState.as_dict's non-tensor entries, in its key order */
    const char *qt = type == LQ_DTYPE_NF4 ? "nf4" : "fp4";
    char js[512], off[40];
    int k = snprintf(js, sizeof js, "{\"quant_type\": \"%s\", \"blocksize\": %lld, \"dtype\": \"%s\", \"shape\": [%lld, %lld]",
                     qt, (long long)block, torch_dtype, (long long)rows, (long long)cols);
    if (double_quant) {
        lq_py_float_repr(off, sizeof off, (double)qs->offset);
        k += snprintf(js + k, sizeof js - (size_t)k,
                      ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %s", LQ_BNB_BLOCK2,
                      off);
    }
    k += snprintf(js + k, sizeof js - (size_t)k, "}");
    int64_t jl = k;
    char suffix[64];
    snprintf(suffix, sizeof suffix, ".quant_state.bitsandbytes__%s", qt);
    ok = ok && put(out, name, suffix, LQ_ST_U8, 1, &jl, dup_bytes(js, (size_t)k), true);
    lq_qstate_free(qs);
    if (!ok) {
        lq_st_bnb4_free(out);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", name);
    }
    return LQ_OK;
}
